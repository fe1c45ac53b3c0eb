//! UCP in the same plan, against the real engine of the test bed: UCP's backup beside DTR's
//! under one backup id, and its restore. The UCP image is a stand-in (`tests/standin/ucp`,
//! busybox): the real one cannot be had here. A `ucp-controller` container from it is what
//! discovery finds, as on a UCP manager.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::docker::{
    Bed, IMAGE, R1, Setup, apply, bed, complete_backups, registry_tree, restore_cmd, write_plan,
};

const UCP_VERSION: &str = "3.2.6";
const UCP_IMAGE: &str = "ucp-standin/ucp:3.2.6";
const CONTROLLER: &str = "ucp-standin/ucp-controller:3.2.6";

impl Bed {
    /// The stand-in UCP image `tag` of `version`; `mode` as `tests/standin/ucp` reads it.
    fn ucp_image(&self, tag: &str, version: &str, mode: &str) {
        self.import(
            tag,
            "/bin/ucp",
            &[
                ("bin/ucp", include_bytes!("../standin/ucp"), 0o755),
                ("etc/standin/ucp-version", version.as_bytes(), 0o644),
                ("etc/standin/ucp-mode", mode.as_bytes(), 0o644),
            ],
        );
    }

    /// UCP runs on this engine: a `ucp-controller` container of `image`, as on a manager.
    fn controller(&self, image: &str) {
        self.docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "ucp-controller",
            "--entrypoint",
            "/bin/sleep",
            image,
            "3600",
        ]);
    }

    /// The stand-in images and a running UCP (and a DTR replica, for the DTR parts).
    fn ucp_cluster(&self, mode: &str) {
        self.standin_image(IMAGE, crate::docker::VERSION, &[R1], 0);
        self.replica(R1, crate::docker::VERSION);
        self.ucp_image(UCP_IMAGE, UCP_VERSION, mode);
        self.docker(&["tag", UCP_IMAGE, CONTROLLER]);
        self.controller(CONTROLLER);
    }
}

/// The test bed's plan with `parts` and `ucp.image` set, in a file of its own (named by the
/// image).
fn ucp_plan(bed: &Bed, dir: &TempDir, parts: &str, image: &str) -> PathBuf {
    let text = std::fs::read_to_string(write_plan(bed, dir, &Setup::default())).expect("plan");
    let ca = format!("  ca_file: {}\n", bed.certs.join("ca.pem").display());
    // The test bed's engine listens on a socket of its own, not /var/run/docker.sock.
    let mut with = text
        .replace(
            &ca,
            &format!(
                "{ca}  image: \"{image}\"\n  docker_socket: \"{}\"\n",
                bed.sock
            ),
        )
        .replace("name: dtr\n", &format!("name: dtr\nparts: {parts}\n"));
    if !parts.contains("images") {
        with = with.replace("images: {type: volume}\n", "");
    }
    assert!(
        with.contains("image: \"ucp-") && with.contains("parts:"),
        "{with}"
    );
    let name: String = image
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    dir.write(&format!("{name}.yaml"), &with)
}

/// The names of the members of the UCP artifact, decrypted by real gpg, listed by real tar.
fn ucp_members(backup: &Path) -> Vec<String> {
    let plain = gpg_decrypt(
        &backup.join(format!("ucp-backup-v{UCP_VERSION}.tar.gpg")),
        PASSPHRASE,
    );
    let dir = TempDir::new("ucp-members");
    let tar = dir.write("ucp.tar", "");
    std::fs::write(&tar, plain).expect("write tar");
    let out = run(std::process::Command::new("tar").arg("-tf").arg(&tar));
    assert!(out.status.success(), "tar -t: {}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

fn logs(ev: &[serde_json::Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["event"] == "log")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn ucp_metadata_and_images_in_one_backup_then_ucp_restored_first() {
    let Some(bed) = bed() else { return };
    bed.ucp_cluster("");
    let dir = TempDir::new("ucp-full");
    let plan = ucp_plan(&bed, &dir, "[ucp, metadata, images]", UCP_IMAGE);

    // The graph draws UCP before DTR.
    let out = run(dtr_backup(dir.path()).args(["plan", "show"]).arg(&plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    let at = |s: &str| shown.find(s).unwrap_or_else(|| panic!("{s} in {shown}"));
    assert!(
        at("ucp") < at("metadata") && at("metadata") < at("images"),
        "{shown}"
    );

    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    let ev = events(&out);
    let started = steps_with(&ev, "step_started");
    let pos = |s: &str| started.iter().position(|x| x == s).expect(s);
    assert!(
        pos("discover") < pos("ucp") && pos("ucp") < pos("metadata"),
        "{started:?}"
    );
    assert!(
        bed.our_containers().is_empty(),
        "{:?}",
        bed.our_containers()
    );

    // One backup id for all three; the manifest records which UCP made it.
    let backups = complete_backups(&dir);
    assert_eq!(backups.len(), 1);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backups[0].join("manifest.json")).expect("m"))
            .expect("json");
    assert_eq!(m["format_version"], 4);
    assert_eq!(m["ucp"]["version"], UCP_VERSION);
    assert_eq!(m["ucp"]["image"], UCP_IMAGE);
    assert!(
        m["ucp"]["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{m}"
    );
    let kinds: Vec<&str> = m["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(
        kinds.starts_with(&["ucp", "metadata", "images"]),
        "{kinds:?}"
    );

    // Real gpg decrypts it; real tar lists UCP's layout, over 100 entries, the key among them.
    let members = ucp_members(&backups[0]);
    assert!(members.len() > 100, "{} members", members.len());
    assert!(
        members.iter().any(|m| m == "./ucp-node-certs/key.pem"),
        "{members:?}"
    );
    assert!(
        members
            .iter()
            .any(|m| m.starts_with("./ucp-auth-store-data/"))
    );

    // verify checks it and lists it; `backups list` names the part.
    let out = run(dtr_backup(dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--read-data", "full", "--output", "json"])
        .arg(&plan));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("verify's JSON");
    let checks = doc["checks"].as_array().expect("checks").clone();
    assert!(
        checks.iter().any(|c| c["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("ucp-backup-v3.2.6.tar.gpg: layout"))
            && c["ok"] == true
            && c["detail"]
                .as_str()
                .is_some_and(|d| d.contains("ucp-node-certs/key.pem"))),
        "{checks:?}"
    );
    let out = run(dtr_backup(dir.path()).args(["backups", "list"]).arg(&plan));
    assert!(
        stdout(&out).contains("ucp,metadata,images"),
        "{}",
        stdout(&out)
    );

    // Restore: refused while UCP runs, with what to do (UCP alone, or everything), before
    // anything is written.
    let before = registry_tree(Path::new(
        &bed.lines(&[
            "volume",
            "inspect",
            "-f",
            "{{.Mountpoint}}",
            &format!("dtr-registry-{R1}"),
        ])
        .remove(0),
    ));
    for only in [&["--only", "ucp"][..], &[]] {
        let out = run(&mut restore_cmd(&bed, &dir, &plan, only));
        assert_eq!(out.status.code(), Some(1), "{only:?}: {}", stdout(&out));
        let e = error_of(&out);
        assert!(
            e.contains("UCP still runs")
                && e.contains("uninstall-ucp")
                && e.contains("--only images,metadata"),
            "{only:?}: {e}"
        );
        assert!(!dir.path().join("backups/dtr/.state/restore.json").exists());
    }
    assert_eq!(
        registry_tree(Path::new(
            &bed.lines(&[
                "volume",
                "inspect",
                "-f",
                "{{.Mountpoint}}",
                &format!("dtr-registry-{R1}")
            ])
            .remove(0)
        )),
        before
    );
    // The dry run says what it would do: UCP after the image content, before DTR's restore.
    let out = run(&mut restore_cmd(&bed, &dir, &plan, &["--dry-run"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains(&format!("restore (bind {}:/var/run/docker.sock", bed.sock)),
        "{said}"
    );
    let doc: serde_json::Value = serde_json::from_str(&said).expect("dry run JSON");
    let ids: Vec<&str> = doc["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, ["preflight", "verify", "images", "ucp", "metadata"]);
    assert!(!said.contains(&bed.ucp_password) && !said.contains(PASSPHRASE));

    // The whole cluster lost: UCP uninstalled, the replica destroyed, its storage gone. The
    // full restore brings back the image content (every check of dtr-backup's own passed
    // before UCP is touched), then UCP, then DTR's metadata.
    bed.docker(&["rm", "-f", "ucp-controller"]);
    bed.remove_replica(R1);
    let volume = format!("dtr-registry-{R1}");
    bed.docker(&["volume", "rm", &volume]);
    bed.docker(&["volume", "create", &volume]);
    let mount = bed
        .lines(&["volume", "inspect", "-f", "{{.Mountpoint}}", &volume])
        .remove(0);
    let out = run(&mut restore_cmd(
        &bed,
        &dir,
        &plan,
        &["--images-to", &mount],
    ));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let ev = events(&out);
    assert_eq!(
        steps_with(&ev, "step_finished"),
        ["preflight", "verify", "images", "ucp", "metadata"]
    );
    let said = logs(&ev);
    assert!(
        said.iter()
            .any(|l| l.contains(&format!("Restoring UCP {UCP_VERSION} from"))),
        "UCP's restore read the whole archive on stdin: {said:?}"
    );
    assert!(
        said.iter().any(|l| l.contains("Restore completed")),
        "{said:?}"
    );
    assert_eq!(
        registry_tree(Path::new(&mount)),
        registry_tree(&root().join("plans/quickstart/registry"))
    );
    assert!(
        bed.our_containers().is_empty(),
        "{:?}",
        bed.our_containers()
    );
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains(&bed.ucp_password) && !all.contains(PASSPHRASE));

    // A plan of another UCP version is refused: UCP restores only into its own version.
    bed.ucp_image("ucp-standin/ucp:3.2.7", "3.2.7", "");
    let other = ucp_plan(
        &bed,
        &dir,
        "[ucp, metadata, images]",
        "ucp-standin/ucp:3.2.7",
    );
    let out = run(&mut restore_cmd(&bed, &dir, &other, &["--only", "ucp"]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("UCP restores only into its own version")
            && error_of(&out).contains("ucp-standin/ucp:3.2.6"),
        "{}",
        error_of(&out)
    );
}

#[test]
fn ucp_alone_runs_without_dtr_and_its_failures_say_what_to_check() {
    let Some(bed) = bed() else { return };
    bed.ucp_image(UCP_IMAGE, UCP_VERSION, "");
    bed.ucp_image("ucp-standin/ucp:3.2.5", "3.2.5", "");
    bed.ucp_image("ucp-standin/nokey:3.2.6", UCP_VERSION, "nokey");
    bed.ucp_image("ucp-standin/empty:3.2.6", UCP_VERSION, "empty");
    let dir = TempDir::new("ucp-alone");

    // No manager on the engine: said before any container runs.
    let plan = ucp_plan(&bed, &dir, "[ucp]", UCP_IMAGE);
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("no UCP manager found") && error_of(&out).contains("bundle"),
        "{}",
        error_of(&out)
    );

    // The plan's image is another version than the running UCP.
    bed.docker(&["tag", UCP_IMAGE, CONTROLLER]);
    bed.controller(CONTROLLER);
    let wrong = ucp_plan(&bed, &dir, "[ucp]", "ucp-standin/ucp:3.2.5");
    let out = run(&mut apply(&bed, &dir, &wrong));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("version 3.2.5") && error_of(&out).contains("runs 3.2.6"),
        "{}",
        error_of(&out)
    );

    // UCP alone: no DTR replica on the engine, and none needed.
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    let backups = complete_backups(&dir);
    assert_eq!(backups.len(), 1);
    assert!(ucp_members(&backups[0]).contains(&"./ucp-node-certs/key.pem".to_owned()));
    assert!(bed.our_containers().is_empty());

    // A tar without the node key is no UCP backup: not kept.
    for (image, said) in [
        (
            "ucp-standin/nokey:3.2.6",
            "without ucp-node-certs/key.pem: that is no UCP backup",
        ),
        ("ucp-standin/empty:3.2.6", "it wrote nothing on stdout"),
    ] {
        // --fresh: the run before failed after discovery, with another plan file.
        let bad = ucp_plan(&bed, &dir, "[ucp]", image);
        let out = run(apply(&bed, &dir, &bad).arg("--fresh"));
        assert_eq!(out.status.code(), Some(1), "{image}: {}", stdout(&out));
        assert!(error_of(&out).contains(said), "{image}: {}", error_of(&out));
        assert_eq!(complete_backups(&dir).len(), 1, "{image}");
        assert!(bed.our_containers().is_empty(), "{image}");
    }
    // No artifact of the failed runs under its final name.
    let stray: Vec<PathBuf> = std::fs::read_dir(dir.path().join("backups/dtr"))
        .expect("plan folder")
        .map(|e| e.expect("e").path())
        .filter(|p| p.is_dir() && *p != backups[0])
        .flat_map(|p| {
            std::fs::read_dir(p)
                .expect("backup dir")
                .map(|e| e.expect("e").path())
        })
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ucp-backup"))
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // The container fails (UCP's backup on a node that is no manager): its FATA line and
    // what to check are in the error.
    bed.ucp_image("ucp-standin/worker:3.2.6", UCP_VERSION, "notmanager");
    let worker = ucp_plan(&bed, &dir, "[ucp]", "ucp-standin/worker:3.2.6");
    let out = run(apply(&bed, &dir, &worker).arg("--fresh"));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("This node is not a swarm manager")
            && error_of(&out).contains("must run on a manager node"),
        "{}",
        error_of(&out)
    );
    assert!(bed.our_containers().is_empty());
}

#[test]
fn killed_during_the_ucp_stream_then_resumed_and_no_secret_in_sight() {
    let Some(bed) = bed() else { return };
    // 12 MiB of incompressible padding: the container is still running (blocked on stdout)
    // when the run is killed.
    bed.ucp_image(UCP_IMAGE, UCP_VERSION, "padding");
    bed.docker(&["tag", UCP_IMAGE, CONTROLLER]);
    bed.controller(CONTROLLER);
    let dir = TempDir::new("ucp-kill");
    let plan = ucp_plan(&bed, &dir, "[ucp]", UCP_IMAGE);
    let mut child = spawn_until(
        apply(&bed, &dir, &plan).env("DTR_BACKUP_FAILPOINT", "stream.middle"),
        "failpoint stream.middle",
    );
    // While it runs: as UCP's documentation prescribes, and no passphrase anywhere.
    let ours = bed.our_containers();
    assert_eq!(ours.len(), 1);
    let inspect: serde_json::Value =
        serde_json::from_slice(&bed.docker(&["inspect", &ours[0]]).stdout).expect("inspect");
    let c = &inspect[0];
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(
        c["Config"]["Cmd"],
        serde_json::json!(["backup", "--no-passphrase"])
    );
    assert_eq!(c["Config"]["Tty"], false);
    assert_eq!(c["Config"]["OpenStdin"], false);
    assert_eq!(c["HostConfig"]["LogConfig"]["Type"], "none");
    assert_eq!(
        c["HostConfig"]["Binds"],
        serde_json::json!([format!("{}:/var/run/docker.sock", bed.sock)])
    );
    assert_eq!(c["Config"]["Labels"]["io.dtr-backup.role"], "ucp");
    let whole = c.to_string();
    assert!(
        !whole.contains(PASSPHRASE),
        "the passphrase reached the container"
    );

    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert_eq!(
        bed.our_containers().len(),
        1,
        "the killed run left its container"
    );

    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    assert!(warned(&events(&out), "left by an interrupted run"));
    assert!(bed.our_containers().is_empty());
    let backups = complete_backups(&dir);
    assert_eq!(backups.len(), 1);
    let members = ucp_members(&backups[0]);
    assert!(
        members.contains(&"./ucp-kv/padding".to_owned()),
        "{members:?}"
    );
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains(PASSPHRASE) && !all.contains(&bed.ucp_password));
    for (f, bytes) in snapshot(dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(PASSPHRASE),
            "the passphrase in {}",
            f.display()
        );
    }
}

#[test]
fn a_ucp_restore_killed_is_judged_by_the_next_one() {
    let Some(bed) = bed() else { return };
    bed.ucp_image(UCP_IMAGE, UCP_VERSION, "");
    bed.docker(&["tag", UCP_IMAGE, CONTROLLER]);
    bed.controller(CONTROLLER);
    let dir = TempDir::new("ucp-restore-kill");
    let plan = ucp_plan(&bed, &dir, "[ucp]", UCP_IMAGE);
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    bed.docker(&["rm", "-f", "ucp-controller"]);
    let journal = dir.path().join("backups/dtr/.state/restore.json");
    // Killed while UCP's restore waits for the archive on its standard input: the container
    // sees the input end early and fails; the next restore runs it again. Killed once UCP's
    // restore has completed, before the journal says so: the next restore finds the
    // container's status 0 with the whole archive given, and does not restore UCP twice.
    for (point, warning, runs_again) in [
        ("restore.ucp.feed", "it runs again", true),
        (
            "restore.step.ucp.done-not-journaled",
            "had completed (status 0) with the whole UCP archive",
            false,
        ),
    ] {
        let mut child = spawn_until(
            restore_cmd(&bed, &dir, &plan, &["--only", "ucp"]).env("DTR_BACKUP_FAILPOINT", point),
            &format!("failpoint {point}"),
        );
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
        assert_eq!(
            bed.our_containers().len(),
            1,
            "{point}: its container is left"
        );
        let kept = std::fs::read_to_string(&journal).expect("journal");
        assert!(
            kept.contains("\"container_of\": \"ucp\""),
            "{point}: {kept}"
        );

        let out = run(&mut restore_cmd(&bed, &dir, &plan, &["--only", "ucp"]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{point}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let ev = events(&out);
        assert!(warned(&ev, warning), "{point}: {}", stdout(&out));
        let again = logs(&ev).iter().any(|l| l.contains("Restore completed"));
        assert_eq!(again, runs_again, "{point}: UCP's restore ran again");
        let skipped = if runs_again {
            vec![]
        } else {
            vec!["verify", "ucp"]
        };
        assert_eq!(steps_with(&ev, "step_skipped"), skipped, "{point}");
        assert!(bed.our_containers().is_empty(), "{point}");
        assert!(!journal.exists(), "{point}: the journal is cleared");
    }

    // Through a client bundle, UCP's restore cannot run (the bundle reaches the engine through
    // the UCP that must be uninstalled first): refused, saying what to set instead.
    let bundle = bed.bundle(dir.path(), "client");
    let host = format!("docker: {{host: \"unix://{}\"}}", bed.sock);
    let text = std::fs::read_to_string(&plan).expect("plan");
    assert!(text.contains(&host), "{text}");
    let via = dir.write(
        "via-bundle.yaml",
        &text.replace(&host, &format!("docker: {{bundle: {}}}", bundle.display())),
    );
    let out = run(&mut restore_cmd(&bed, &dir, &via, &["--only", "ucp"]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("cannot run through a UCP client bundle")
            && error_of(&out).contains("docker.host"),
        "{}",
        error_of(&out)
    );
}
