//! `plan apply` end to end on the local path: artifacts, gpg interop, resume after kill -9 at
//! every step boundary and mid-stream, locks, dry-run, secrets, interruption.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn manifest(backup: &Path) -> serde_json::Value {
    let bytes = std::fs::read(backup.join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&bytes).expect("manifest is JSON")
}

/// The blobs of the source tree: digest → content.
fn source_blobs(fx: &Fixture) -> std::collections::BTreeMap<String, Vec<u8>> {
    let found = Command::new("find")
        .arg(fx.dir.path().join("registry"))
        .args(["-name", "data", "-path", "*/blobs/*"])
        .output()
        .expect("find");
    stdout(&found)
        .lines()
        .map(|p| {
            let digest = Path::new(p)
                .parent()
                .and_then(Path::file_name)
                .expect("digest folder")
                .to_string_lossy()
                .into_owned();
            (digest, std::fs::read(p).expect("blob"))
        })
        .collect()
}

/// The artifact files of a complete backup match the manifest, decrypt with gpg, and list the
/// canonical layout with tar; every blob of the source is in the backup, intact: in the
/// archive (`images.mode: archive`), or listed in `blobs.list` and kept in the blob store,
/// where each decrypts with gpg to its content (incremental).
fn assert_backup_sound(fx: &Fixture, backup: &Path) {
    let m = manifest(backup);
    assert_eq!(m["dtr"]["volume"], VOLUME);
    let artifacts = m["artifacts"].as_array().expect("artifacts");
    if artifacts.len() == 3 {
        assert_incremental_sound(fx, backup, &m);
        return;
    }
    assert_eq!(m["format_version"], 1);
    assert_eq!(artifacts.len(), 1);
    let a = &artifacts[0];
    assert_eq!(a["path"], "dtr-images-0a1b2c3d4e5f.tar.gpg");
    let file = backup.join(a["path"].as_str().expect("path"));
    let bytes = std::fs::read(&file).expect("artifact");
    assert_eq!(a["size"], bytes.len() as u64);
    assert_eq!(a["sha256"], dtr_backup::archive::sha256_hex(&bytes));

    let plain = gpg_decrypt(&file, PASSPHRASE);
    let names = tar_list(&plain);
    let prefix = format!("{VOLUME}/_data/docker/registry/v2/");
    assert!(names.iter().all(|n| n.starts_with(VOLUME)), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with(&prefix)), "{names:?}");

    // Every blob of the source is in the archive with content matching its digest.
    let mut archive = tar::Archive::new(&plain[..]);
    let mut blobs = 0;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        if name.ends_with("/data") && name.contains("/blobs/sha256/") {
            let digest = name.rsplit('/').nth(1).expect("digest").to_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("blob");
            assert_eq!(dtr_backup::archive::sha256_hex(&data), digest, "{name}");
            let rel = name
                .strip_prefix(&format!("{VOLUME}/_data/"))
                .expect("prefixed");
            assert_eq!(
                std::fs::read(fx.dir.path().join("registry").join(rel)).expect("source"),
                data
            );
            blobs += 1;
        }
    }
    assert_eq!(blobs, source_blobs(fx).len());
}

fn assert_incremental_sound(fx: &Fixture, backup: &Path, m: &serde_json::Value) {
    assert_eq!(m["format_version"], 3);
    let artifacts = m["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts[0]["kind"], "images");
    assert_eq!(artifacts[1]["kind"], "trees");
    assert_eq!(artifacts[2]["kind"], "blobs");
    for a in artifacts {
        let bytes =
            std::fs::read(backup.join(a["path"].as_str().expect("path"))).expect("artifact");
        assert_eq!(a["size"], bytes.len() as u64);
        assert_eq!(a["sha256"], dtr_backup::archive::sha256_hex(&bytes));
    }
    // The archive and the repository trees: the tree but its blobs, folders named as GNU tar
    // names them. Each tree is a whole tar archive of one repository, a message of its own.
    let plain = gpg_decrypt(&backup.join("dtr-images-0a1b2c3d4e5f.tar.gpg"), PASSPHRASE);
    let mut names = tar_list(&plain);
    let (tree_store, trees) = object_list(backup, "trees");
    for line in &trees {
        let digest = &line[0];
        let object = fx.plan_root().join(format!(
            "blobs/{tree_store}/trees/{}/{digest}",
            &digest[..2]
        ));
        // Compressed (gzip) inside its message; named by the sha256 of the tar.
        let zipped = gpg_decrypt(&object, PASSPHRASE);
        assert!(zipped.starts_with(&[0x1f, 0x8b]), "{}", object.display());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut dtr_backup::archive::unzipped(&zipped[..]).expect("gzip"),
            &mut tar,
        )
        .expect("gunzip");
        assert_eq!(&dtr_backup::archive::sha256_hex(&tar), digest);
        names.extend(tar_list(&tar));
    }
    assert!(names.iter().all(|n| n.starts_with(VOLUME)), "{names:?}");
    assert!(
        names.contains(&format!("{VOLUME}/_data/docker/registry/v2/repositories/")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("/_manifests/tags/3.18/current/link")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("/v2/blobs")),
        "no blob in the archive: {names:?}"
    );
    // The list names every blob of the source; each stored object decrypts with gpg to it.
    let (store, lines) = object_list(backup, "blobs");
    let source = source_blobs(fx);
    let mut listed = 0;
    for f in &lines {
        let (digest, size, stored) = (f[0].as_str(), f[1].as_str(), f[2].as_str());
        let want = source
            .get(digest)
            .unwrap_or_else(|| panic!("{digest} not in the source"));
        assert_eq!(size, want.len().to_string());
        let object = fx
            .plan_root()
            .join(format!("blobs/{store}/sha256/{}/{digest}", &digest[..2]));
        assert_eq!(
            std::fs::metadata(&object)
                .expect("stored blob")
                .len()
                .to_string(),
            stored
        );
        assert_eq!(&gpg_decrypt(&object, PASSPHRASE), want, "{digest}");
        listed += 1;
    }
    assert_eq!(listed, source.len());
}

#[test]
fn quickstart_backup_end_to_end() {
    let fx = Fixture::new("e2e", 0, "retention: {keep_last: 3}\n");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    assert_eq!(ev[0]["event"], "run_started");
    assert_eq!(ev[0]["resumed"], false);
    let last = ev.last().expect("events");
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["status"], "ok");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(
        steps_with(&ev, "step_finished"),
        ["preflight", "images", "manifest", "verify", "retention"]
    );
    let dirs = fx.backup_dirs();
    assert_eq!(dirs.len(), 1);
    assert_eq!(
        last["backup_id"],
        dirs[0]
            .file_name()
            .expect("name")
            .to_string_lossy()
            .as_ref()
    );
    assert_backup_sound(&fx, &dirs[0]);
    // The read-back reports what it read to its end: every artifact, and the lists once more.
    let read_back = finished_progress(&ev, "verify");
    let artifacts: u64 = manifest(&dirs[0])["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["size"].as_u64().expect("size"))
        .sum();
    assert!(
        read_back["total_bytes"].as_u64() > Some(artifacts),
        "{read_back} for {artifacts} bytes of artifacts"
    );
    // The journal is gone once the run is complete; no temporary is left.
    assert!(!fx.plan_root().join(".state/run.json").exists());
    assert!(!fx.plan_root().join(".state/lock.json").exists());
    let leftovers: Vec<_> = snapshot(&fx.plan_root())
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Archives are private.
    use std::os::unix::fs::PermissionsExt;
    for f in std::fs::read_dir(&dirs[0]).expect("dir") {
        let mode = f.expect("f").metadata().expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "group/other bits set");
    }

    // `backups list` shows it.
    let out = run(dtr_backup(fx.dir.path())
        .args(["backups", "list", "--output", "json"])
        .arg(&fx.plan));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["backups"].as_array().expect("list").len(), 1);
}

#[test]
fn shipped_quickstart_plan_runs_from_the_readme_command() {
    // The README's first command, on the shipped plan (destination ./backups of the repo is
    // redirected by copying the plan next to the shipped sample tree).
    let dir = TempDir::new("readme");
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    std::fs::copy(
        root().join("plans/quickstart.yaml"),
        plans.join("quickstart.yaml"),
    )
    .expect("copy");
    copy_tree(&root().join("plans/quickstart"), &plans.join("quickstart"));
    let out = run(dtr_backup(dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["plan", "apply", "plans/quickstart.yaml"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("complete: 3 artifacts"),
        "{}",
        stdout(&out)
    );
    assert!(dir.path().join("backups/quickstart").is_dir());
}

/// Where a run can be killed, and which steps the next run must skip.
const KILL_POINTS: &[(&str, &[&str])] = &[
    ("apply.locked", &[]),
    ("apply.journal-created", &[]),
    ("step.preflight.before", &[]),
    ("step.images.before", &[]),
    ("stream.middle", &[]),
    ("step.images.done-not-journaled", &[]),
    ("step.images.journaled", &["images"]),
    ("step.manifest.before", &["images"]),
    ("step.manifest.done-not-journaled", &["images"]),
    ("step.manifest.journaled", &["images", "manifest"]),
    ("verify.before-publish", &["images", "manifest"]),
    ("step.verify.done-not-journaled", &["images", "manifest"]),
    ("step.verify.journaled", &["images", "manifest", "verify"]),
    ("step.retention.before", &["images", "manifest", "verify"]),
    (
        "step.retention.journaled",
        &["images", "manifest", "verify", "retention"],
    ),
];

/// Files under final names in the destination: each must be complete.
fn assert_no_partial_final_files(fx: &Fixture) {
    for (path, bytes) in snapshot(&fx.plan_root()) {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() || name.starts_with('.') {
            continue;
        }
        if name.ends_with(".tar.gpg") {
            // A complete OpenPGP message of a complete tar archive.
            let names = tar_list(&gpg_decrypt(&path, PASSPHRASE));
            assert!(!names.is_empty(), "{}", path.display());
        } else if name.ends_with(".json") {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("{} is partial: {e}", path.display()));
        } else if name == "blobs.list" || name == "trees.list" {
            let text = String::from_utf8(bytes).expect("text");
            assert!(text.starts_with("dtr-backup ") && text.ends_with('\n'));
        } else if path.to_string_lossy().contains("/lists/") && name.len() == 64 {
            // A list base under its sha256: complete, exactly that content.
            assert!(bytes.starts_with(b"dtr-backup ") && bytes.ends_with(b"\n"));
            assert_eq!(
                dtr_backup::archive::sha256_hex(&bytes),
                name,
                "{}",
                path.display()
            );
        } else if name == "trees.cache" {
            // What the run saw of each repository: whole records (signature, digest, size).
            let body = bytes
                .strip_prefix(b"dtr-backup trees cache 1\n")
                .unwrap_or_else(|| panic!("{} has no header", path.display()));
            assert_eq!(
                body.len() % (16 + 32 + 8),
                0,
                "{} is partial",
                path.display()
            );
        } else if name == "key-check" {
            assert!(!gpg_decrypt(&path, PASSPHRASE).is_empty());
        } else if path.to_string_lossy().contains("/blobs/") && name.len() == 64 {
            // A blob under its digest: a whole message of exactly that content (a repository
            // tree: of that tar, compressed).
            let mut plain = gpg_decrypt(&path, PASSPHRASE);
            if path.to_string_lossy().contains("/trees/") {
                let mut tar = Vec::new();
                std::io::Read::read_to_end(
                    &mut dtr_backup::archive::unzipped(&plain[..]).expect("gzip"),
                    &mut tar,
                )
                .expect("a whole gzip stream");
                plain = tar;
            }
            assert_eq!(
                dtr_backup::archive::sha256_hex(&plain),
                name,
                "{}",
                path.display()
            );
        } else {
            panic!("unexpected file {}", path.display());
        }
    }
}

#[test]
fn killed_at_any_point_the_next_apply_resumes() {
    assert!(KILL_POINTS.len() >= 10);
    // Archive mode: every point, the archive's stream among them. Incremental (the default):
    // the same step boundaries, and inside the blob copy instead of the stream.
    let incremental = KILL_POINTS
        .iter()
        .filter(|(p, _)| *p != "stream.middle")
        .chain(&[
            ("blob.middle", &[] as &[&str]),
            ("blob.committed", &[]),
            ("tree.committed", &[]),
        ]);
    let runs = KILL_POINTS
        .iter()
        .map(|k| (k, true))
        .chain(incremental.map(|k| (k, false)));
    for ((point, skipped), archive) in runs {
        let extra = "retention: {keep_last: 2}\n";
        let fx = if archive {
            Fixture::archive("kill", 5, extra)
        } else {
            Fixture::new("kill", 5, extra)
        };
        let mut child = spawn_until(
            fx.apply().env("DTR_BACKUP_FAILPOINT", point),
            &format!("failpoint {point}"),
        );
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
        assert_no_partial_final_files(&fx);

        let out = run(&mut fx.apply());
        assert_eq!(out.status.code(), Some(0), "{point}: {}", stderr(&out));
        let ev = events(&out);
        assert_eq!(
            steps_with(&ev, "step_skipped"),
            *skipped,
            "{point}: skipped steps"
        );
        for s in *skipped {
            assert!(
                !steps_with(&ev, "step_started").contains(&s.to_string()),
                "{point}: {s} was redone"
            );
        }
        // The lock of the killed process was taken over, not waited for.
        assert!(warned(&ev, "stale lock"), "{point}: no stale-lock warning");
        // What the killed run put in the blob store is not copied again.
        if *point == "blob.committed" {
            assert!(logged_counts(&ev, "blobs: ")[1] >= 1, "{point}");
        }
        if *point == "tree.committed" {
            assert!(logged_counts(&ev, "repositories: ")[1] >= 1, "{point}");
        }
        let dirs: Vec<PathBuf> = fx
            .backup_dirs()
            .into_iter()
            .filter(|d| d.join("manifest.json").exists())
            .collect();
        assert_eq!(dirs.len(), 1, "{point}: one complete backup");
        assert_backup_sound(&fx, &dirs[0]);
        assert_no_partial_final_files(&fx);
        assert!(!fx.plan_root().join(".state/run.json").exists(), "{point}");
    }
}

#[test]
fn sigterm_stops_promptly_and_leaves_a_resumable_run() {
    let fx = Fixture::archive("term", 5, "");
    let child = spawn_until(
        fx.apply().env("DTR_BACKUP_FAILPOINT", "stream.middle"),
        "failpoint stream.middle",
    );
    let started = std::time::Instant::now();
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(130));
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        fx.plan_root().join(".state/run.json").exists(),
        "journal kept"
    );
    assert!(
        !fx.plan_root().join(".state/lock.json").exists(),
        "lock released"
    );
    assert_no_partial_final_files(&fx);
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    assert_eq!(ev[0]["resumed"], true);
}

/// SIGTERM before each step and inside each streaming loop (the tar producer, the encrypted
/// stream, apply's read-back) ends the run within seconds: exit 130, lock released, journal
/// kept, nothing partial under a final name.
#[test]
fn sigterm_at_every_step_and_streaming_loop_exits_promptly() {
    let fx = Fixture::archive("term-all", 5, "retention:\n  keep_last: 2\n");
    for point in [
        "step.preflight.before",
        "step.images.before",
        "tar.member",
        "stream.middle",
        "step.manifest.before",
        "step.verify.before",
        "verify.read",
        "verify.before-publish",
        "step.retention.before",
    ] {
        let child = spawn_until(
            fx.apply().env("DTR_BACKUP_FAILPOINT", point),
            &format!("failpoint {point}"),
        );
        let started = std::time::Instant::now();
        let out = terminate(child);
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(130), "{point}");
        assert!(took.as_secs_f64() < 5.0, "{point}: took {took:?}");
        assert!(
            !fx.plan_root().join(".state/lock.json").exists(),
            "{point}: lock released"
        );
        assert!(
            fx.plan_root().join(".state/run.json").exists(),
            "{point}: journal kept"
        );
        assert_no_partial_final_files(&fx);
    }
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(events(&out)[0]["resumed"], true);

    // Incremental: inside the copy of a blob, and inside its read-back.
    for point in ["blob.middle", "blob.read-back"] {
        let fx = Fixture::new("term-blob", 5, "");
        let child = spawn_until(
            fx.apply().env("DTR_BACKUP_FAILPOINT", point),
            &format!("failpoint {point}"),
        );
        let started = std::time::Instant::now();
        let out = terminate(child);
        assert_eq!(out.status.code(), Some(130), "{point}");
        assert!(started.elapsed().as_secs_f64() < 5.0, "{point}");
        assert_no_partial_final_files(&fx);
        let out = run(&mut fx.apply());
        assert_eq!(out.status.code(), Some(0), "{point}: {}", stderr(&out));
        assert_eq!(events(&out)[0]["resumed"], true, "{point}");
    }
}

/// A second SIGTERM ends a run that is stuck where cancellation cannot reach (here a point
/// that sleeps a minute), at once, with exit 130; the next apply resumes it.
#[test]
fn a_second_sigterm_ends_the_process_at_once() {
    let fx = Fixture::new("term-twice", 0, "");
    let mut cmd = fx.apply();
    cmd.env("DTR_BACKUP_FAILPOINT", "step.images.before")
        .env("DTR_BACKUP_FAILPOINT_PAUSE_MS", "60000");
    let child = spawn_until(&mut cmd, "failpoint step.images.before");
    let kill = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs")
    };
    assert!(kill(child.id()).success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(130));
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    let started = ev.iter().find(|e| e["event"] == "run_started");
    assert_eq!(started.expect("run_started")["resumed"], true);
    assert!(
        warned(&ev, "stale lock"),
        "the lock left behind was taken over"
    );
}

#[test]
fn second_apply_exits_4_and_waits_with_lock_timeout() {
    let fx = Fixture::new("lock", 0, "");
    let mut holder = spawn_until(
        fx.apply().env("DTR_BACKUP_FAILPOINT", "apply.locked"),
        "failpoint apply.locked",
    );
    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["plan", "apply"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("pid {}", holder.id())), "{err}");
    assert!(err.contains("plan unlock"), "{err}");

    let began = std::time::Instant::now();
    let out = run(fx.apply().args(["--lock-timeout", "2s"]));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        began.elapsed().as_millis() >= 1900,
        "waited {:?}",
        began.elapsed()
    );
    let ev = events(&out);
    assert_eq!(ev.last().expect("event")["status"], "locked");

    // `plan unlock` with a wrong id refuses; with the right one it removes the lock.
    let lock: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.plan_root().join(".state/lock.json")).expect("lock"),
    )
    .expect("json");
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "unlock"])
        .arg(&fx.plan)
        .arg("nope"));
    assert_eq!(out.status.code(), Some(1));
    let id = lock["id"].as_str().expect("id");
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "unlock"])
        .arg(&fx.plan)
        .arg(id));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!fx.plan_root().join(".state/lock.json").exists());
    holder.kill().expect("kill");
    holder.wait().expect("wait");
}

#[test]
fn concurrent_applies_exactly_one_runs() {
    let fx = Fixture::new("race", 2, "");
    let children: Vec<_> = (0..2)
        .map(|_| {
            fx.apply()
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|c| {
            c.wait_with_output()
                .expect("wait")
                .status
                .code()
                .expect("code")
        })
        .collect();
    // Either both ran one after the other (the first finished before the second started), or
    // exactly one ran and the other was refused with 4. Never two at once.
    let ok = codes.iter().filter(|c| **c == 0).count();
    let locked = codes.iter().filter(|c| **c == 4).count();
    assert_eq!(ok + locked, 2, "{codes:?}");
    assert!(ok >= 1, "{codes:?}");
    let complete = fx
        .backup_dirs()
        .iter()
        .filter(|d| d.join("manifest.json").exists())
        .count();
    assert_eq!(complete, ok);
}

#[test]
fn stale_lock_of_a_dead_process_is_taken_over() {
    let fx = Fixture::new("stale", 0, "");
    let mut dead = Command::new("true").spawn().expect("spawn");
    let pid = dead.id();
    dead.wait().expect("wait");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    std::fs::create_dir_all(fx.plan_root().join(".state")).expect("mkdir");
    std::fs::write(
        fx.plan_root().join(".state/lock.json"),
        format!(
            r#"{{"id":"deadbeef","host":"{}","pid":{pid},"operation":"plan apply","started_at":"2026-01-01T00:00:00Z"}}"#,
            host.trim()
        ),
    )
    .expect("write lock");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(warned(&events(&out), "deadbeef"));

    // A lock of another host is never taken over.
    std::fs::write(
        fx.plan_root().join(".state/lock.json"),
        format!(r#"{{"id":"0ther","host":"elsewhere","pid":{pid},"operation":"plan apply","started_at":"2026-01-01T00:00:00Z"}}"#),
    )
    .expect("write lock");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn dry_run_changes_nothing_and_redacts_secrets() {
    let fx = Fixture::new("dry", 0, "retention: {keep_last: 1}\n");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Leave an unfinished run too, so that state exists.
    let mut child = spawn_until(
        fx.apply()
            .env("DTR_BACKUP_FAILPOINT", "step.images.journaled"),
        "failpoint",
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
    let before = snapshot(fx.dir.path());

    // No passphrase in the environment: a dry run reads no secret.
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "apply", "--dry-run"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("<redacted from env:DTR_BACKUP_PASSPHRASE>"),
        "{text}"
    );
    for step in ["preflight", "images", "manifest", "verify", "retention"] {
        assert!(
            text.contains(&format!(". {step} (")),
            "{step} missing: {text}"
        );
    }
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "apply", "--dry-run", "--output", "json"])
        .arg(&fx.plan));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["dry_run"], true);
    assert_eq!(snapshot(fx.dir.path()), before, "the dry run changed files");

    // An invalid plan: exit 3, still no change.
    let bad = fx.dir.write("bad.yaml", "version: 1\nname: qs\n");
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "apply", "--dry-run"])
        .arg(&bad));
    assert_eq!(out.status.code(), Some(3));
    std::fs::remove_file(bad).expect("rm");
    assert_eq!(snapshot(fx.dir.path()), before);
}

#[test]
fn the_passphrase_never_leaks() {
    const CANARY: &str = "canary-pass-7f3e9a1c";
    let fx = Fixture::new("canary", 3, "retention: {keep_last: 5}\n");
    let with_canary = |cmd: &mut Command| -> std::process::Output {
        run(cmd.env("DTR_BACKUP_PASSPHRASE", CANARY))
    };
    // A killed run leaves the journal; a resumed run, a text run and a failing run print.
    let mut child = spawn_until(
        fx.apply()
            .env("DTR_BACKUP_PASSPHRASE", CANARY)
            .env("DTR_BACKUP_FAILPOINT", "step.manifest.journaled"),
        "failpoint",
    );
    let journal_during_run = loop {
        if let Ok(b) = std::fs::read(fx.plan_root().join(".state/run.json")) {
            break b;
        }
    };
    child.kill().expect("kill");
    child.wait().expect("wait");
    let mut outputs = vec![with_canary(&mut fx.apply())];
    outputs.push(with_canary(
        dtr_backup(fx.dir.path())
            .args(["plan", "apply"])
            .arg(&fx.plan),
    ));
    outputs.push(with_canary(
        dtr_backup(fx.dir.path())
            .args(["plan", "apply", "--dry-run"])
            .arg(&fx.plan),
    ));
    let bad_dest = fx.dir.write(
        "bad-dest.yaml",
        &std::fs::read_to_string(&fx.plan)
            .expect("plan")
            .replace("path: backups", "path: /proc/forbidden"),
    );
    outputs.push(with_canary(
        dtr_backup(fx.dir.path())
            .args(["plan", "apply"])
            .arg(&bad_dest),
    ));
    assert_ne!(outputs.last().expect("out").status.code(), Some(0));
    for o in &outputs {
        assert!(
            !stdout(o).contains(CANARY) && !stderr(o).contains(CANARY),
            "leaked in output"
        );
    }
    assert!(!String::from_utf8_lossy(&journal_during_run).contains(CANARY));
    for (path, bytes) in snapshot(fx.dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(CANARY), "leaked into {}", path.display());
    }
    // It is the real passphrase of the artifacts all the same.
    let backup = fx
        .backup_dirs()
        .into_iter()
        .find(|d| d.join("manifest.json").exists())
        .expect("backup");
    let artifact = std::fs::read_dir(&backup)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .find(|p| p.extension().is_some_and(|e| e == "gpg"))
        .expect("artifact");
    assert!(!gpg_decrypt(&artifact, CANARY).is_empty());
}

#[test]
fn changed_plan_is_not_resumed_without_fresh() {
    let fx = Fixture::new("changed", 0, "");
    let mut child = spawn_until(
        fx.apply()
            .env("DTR_BACKUP_FAILPOINT", "step.images.journaled"),
        "failpoint",
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
    let old_dirs = fx.backup_dirs();
    assert_eq!(old_dirs.len(), 1);
    let text = std::fs::read_to_string(&fx.plan).expect("plan");
    std::fs::write(&fx.plan, format!("{text}retention: {{keep_last: 4}}\n")).expect("edit");

    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let ev = events(&out);
    let error = ev.last().expect("event")["error"]
        .as_str()
        .expect("error")
        .to_owned();
    assert!(error.contains("+ retention: {keep_last: 4}"), "{error}");
    assert!(error.contains("--fresh"), "{error}");

    let out = run(fx.apply().arg("--fresh"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(warned(&events(&out), "--fresh: discarded"));
    let dirs = fx.backup_dirs();
    assert_eq!(dirs.len(), 1, "the old unfinished run was removed");
    assert_ne!(dirs[0], old_dirs[0]);
}

#[test]
fn retention_keeps_the_newest_and_removes_incomplete_runs() {
    let fx = Fixture::new("retention", 0, "retention: {keep_last: 2}\n");
    for _ in 0..3 {
        let out = run(&mut fx.apply());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let complete: Vec<PathBuf> = fx
        .backup_dirs()
        .into_iter()
        .filter(|d| d.join("manifest.json").exists())
        .collect();
    assert_eq!(complete.len(), 2);
    // An old incomplete folder (no manifest) is removed by the next run.
    let stale = fx.plan_root().join("20200101T000000Z-abcd");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("dtr-images-x.tar.gpg"), b"partial").expect("write");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0));
    assert!(!stale.exists());
    let newest = fx.backup_dirs();
    assert_eq!(newest.len(), 2);
    assert!(!newest.contains(&complete[0]), "the oldest was deleted");
}

/// A manifest that cannot be read (corrupt, half-copied, from a newer release) does not block
/// listing, verification or retention: its folder is skipped with a warning that names it,
/// never listed, never picked as latest, never counted, never deleted.
#[test]
fn an_unreadable_manifest_is_skipped_never_picked_counted_or_deleted() {
    let fx = Fixture::new("unreadable", 0, "retention: {keep_last: 2}\n");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = run(&mut fx.apply());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        ids.push(
            events(&out)[0]["backup_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let (old, newer) = (&ids[0], &ids[1]);
    let old_manifest = fx.plan_root().join(old).join("manifest.json");
    std::fs::write(&old_manifest, "{\"format_version\":5}\n").expect("write");

    // The next apply keeps the two readable newest (keep_last: 2) and leaves the other alone.
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let warned = |out: &std::process::Output, id: &str| {
        events(out).iter().any(|e| {
            e["event"] == "warning"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(id) && m.contains("format_version 5"))
        })
    };
    assert!(
        warned(&out, old),
        "no warning naming {old}: {}",
        stdout(&out)
    );
    let newest = events(&out)[0]["backup_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(old_manifest.exists(), "the unreadable backup was deleted");
    assert!(fx.plan_root().join(newer).join("manifest.json").exists());

    // The newest one unreadable too: `latest` is the newest readable one.
    std::fs::write(
        fx.plan_root().join(&newest).join("manifest.json"),
        "{\"format_version\": 1, \"plan\": \"qs\"",
    )
    .expect("write");
    let out = run(dtr_backup(fx.dir.path())
        .args(["backups", "list", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed: Vec<&str> = doc["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["backup_id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, [newer.as_str()]);
    let skipped: Vec<&str> = doc["unreadable"]
        .as_array()
        .expect("unreadable")
        .iter()
        .map(|b| b["backup_id"].as_str().expect("id"))
        .collect();
    assert_eq!(skipped, [old.as_str(), newest.as_str()]);
    let err = stderr(&out);
    assert!(err.contains(old) && err.contains(&newest), "{err}");

    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["backup_id"], newer.as_str());

    // Asked for by id, an unreadable backup fails verification.
    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--backup", old])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

/// Temporaries that killed runs left beside the journal and at the destination's root are
/// removed by the next run.
#[test]
fn temporaries_of_killed_runs_are_cleaned_up() {
    let fx = Fixture::new("temps", 0, "");
    let state = fx.plan_root().join(".state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let left = state.join(".run.json.partial-4000000000-abcd");
    std::fs::write(&left, b"{half a journal").expect("write");
    std::fs::write(fx.plan_root().join(".probe"), b"").expect("write");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!left.exists(), "the journal's temporary was left");
    assert!(!fx.plan_root().join(".probe").exists());
    let names: Vec<String> = std::fs::read_dir(&state)
        .expect("state")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    // Only the lock's mutex, the record of how the run ended and what it saw of the
    // repositories stay: no temporary.
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".mutex") || n == "last-run.json" || n == "trees.cache"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "last-run.json"), "{names:?}");
}

#[test]
fn nfs_images_on_a_folder_that_is_not_the_mount_are_refused() {
    let fx = Fixture::new("nfs", 0, "");
    let text = std::fs::read_to_string(&fx.plan).expect("plan").replace(
        "images: {type: path, path: registry,",
        "images: {type: nfs, path: registry, server: \"nfs.example.com:/exports/dtr\",",
    );
    std::fs::write(&fx.plan, text).expect("plan");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(1));
    let err = events(&out).last().expect("event")["error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        err.contains("is not a mount point") && err.contains("nfs.example.com:/exports/dtr"),
        "{err}"
    );
    assert_eq!(steps_with(&events(&out), "step_failed"), ["preflight"]);
    assert!(fx.backup_dirs().is_empty(), "nothing was backed up");
}

#[test]
fn damage_between_writing_and_reading_back_is_caught_and_nothing_is_published() {
    // apply's read-back does not hash what it decrypts again: the integrity protection must
    // catch a changed octet anywhere (key packets, data, MDC).
    for at in ["start", "middle", "end"] {
        let fx = Fixture::archive("damage", 5, "");
        let point = "step.manifest.journaled";
        let mut child = spawn_until(
            fx.apply().env("DTR_BACKUP_FAILPOINT", point),
            &format!("failpoint {point}"),
        );
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
        let dirs = fx.backup_dirs();
        assert_eq!(dirs.len(), 1);
        let file = dirs[0].join("dtr-images-0a1b2c3d4e5f.tar.gpg");
        let mut bytes = std::fs::read(&file).expect("artifact");
        assert!(bytes.len() > 5 << 20, "read back through direct I/O");
        let i = match at {
            "start" => 40,
            "middle" => bytes.len() / 2,
            _ => bytes.len() - 5,
        };
        bytes[i] ^= 0x01;
        std::fs::write(&file, &bytes).expect("damaged");

        let out = run(&mut fx.apply());
        assert_eq!(out.status.code(), Some(5), "{at}: {}", stderr(&out));
        let err = error_of(&out);
        assert!(
            err.contains("failed verification") && err.contains("decrypts"),
            "{at}: {err}"
        );
        assert!(
            !dirs[0].join("manifest.json").exists(),
            "{at}: a damaged backup was published"
        );
    }

    // Incremental: each object the run writes into the blob store is read back as soon as it
    // is written. Storage that changes it in between fails the run; the object is removed,
    // so the next run writes it again instead of trusting it.
    let fx = Fixture::new("damage-blob", 5, "");
    let point = "blob.committed";
    let events_file = fx.dir.path().join("events.ndjson");
    let mut cmd = fx.apply();
    cmd.env("DTR_BACKUP_FAILPOINT", point)
        .env("DTR_BACKUP_FAILPOINT_PAUSE_MS", "1000")
        .stdout(std::fs::File::create(&events_file).expect("events file"));
    let mut child = spawn_marked(&mut cmd, &format!("failpoint {point}"));
    // Every blob under its final name now is committed and paused before its read-back (the
    // repository trees were written and read back before the blobs).
    let damaged: Vec<PathBuf> = snapshot(&fx.plan_root().join("blobs"))
        .into_iter()
        .filter(|(p, b)| {
            p.is_file()
                && !b.is_empty()
                && p.to_string_lossy().contains("/sha256/")
                && !p.to_string_lossy().contains(".partial-")
        })
        .map(|(p, mut b)| {
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
            std::fs::write(&p, &b).expect("damaged");
            p
        })
        .collect();
    assert!(!damaged.is_empty(), "a committed blob");
    let status = child.wait().expect("reaped");
    let out = Output {
        status,
        stdout: std::fs::read(&events_file).expect("events"),
        stderr: Vec::new(),
    };
    assert_eq!(out.status.code(), Some(5), "{}", error_of(&out));
    let err = error_of(&out);
    assert!(err.contains("read back differently"), "{err}");
    for p in &damaged {
        assert!(!p.exists(), "{} was kept", p.display());
    }
    assert!(
        fx.backup_dirs()
            .iter()
            .all(|d| !d.join("manifest.json").exists()),
        "a damaged backup was published"
    );
    // The next run writes them again, and the backup reads back whole.
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--read-data", "full"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn many_plans_in_one_apply_validate_first_then_run_each_under_its_own_lock() {
    let a = Fixture::new("many-a", 0, "");
    let b = Fixture::new("many-b", 0, "");
    // Another name, and a source that preflight finds missing.
    let text = std::fs::read_to_string(&b.plan)
        .expect("plan")
        .replace("name: qs", "name: qs-b");
    std::fs::write(&b.plan, text).expect("plan");
    std::fs::remove_dir_all(b.dir.path().join("registry")).expect("rm");
    let bad = a
        .dir
        .write("bad.yaml", "version: 1\nname: x\nparts: [images]\n");

    // One invalid plan: exit 3, none runs.
    let out = run(dtr_backup(a.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["plan", "apply", "--output", "json"])
        .arg(&a.plan)
        .arg(&b.plan)
        .arg(&bad));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        a.backup_dirs().is_empty(),
        "a plan ran although one was invalid"
    );

    // Two valid plans at once: one fails at preflight, the other completes; the exit code is
    // the worse; every event names its plan.
    let out = run(dtr_backup(a.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["plan", "apply", "--jobs", "2", "--output", "json"])
        .arg(&a.plan)
        .arg(&b.plan));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let ev = events(&out);
    assert!(
        ev.iter().all(|e| e["plan"] == "qs" || e["plan"] == "qs-b"),
        "{ev:?}"
    );
    let finished = |plan: &str| {
        ev.iter()
            .find(|e| e["event"] == "run_finished" && e["plan"] == plan)
            .unwrap_or_else(|| panic!("no run_finished of {plan}"))
            .clone()
    };
    assert_eq!(finished("qs")["status"], "ok");
    assert_eq!(finished("qs-b")["status"], "failed");
    assert_eq!(finished("qs-b")["exit_code"], 1);
    assert!(
        ev.iter().any(|e| e["event"] == "step_failed"
            && e["plan"] == "qs-b"
            && e["step"] == "preflight")
    );
    assert_eq!(a.backup_dirs().len(), 1);

    // Text: a summary line per plan.
    let out = run(dtr_backup(a.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["plan", "apply"])
        .arg(&a.plan)
        .arg(&b.plan));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("plan qs: ok, backup ") && text.contains("plan qs-b: failed, exit 1: "),
        "{text}"
    );
    assert!(stderr(&out).contains("[qs-b] "), "{}", stderr(&out));

    // verify and backups list take many plans too: a JSON document per plan, the worst exit.
    let lines = |out: &std::process::Output| -> Vec<serde_json::Value> {
        stdout(out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    let out = run(dtr_backup(a.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--output", "json"])
        .arg(&a.plan)
        .arg(&b.plan));
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    let docs = lines(&out);
    assert_eq!(docs.len(), 2);
    assert_eq!(
        (&docs[0]["plan"], &docs[0]["ok"]),
        (&"qs".into(), &true.into())
    );
    assert_eq!(
        (&docs[1]["plan"], &docs[1]["ok"]),
        (&"qs-b".into(), &false.into())
    );
    let out = run(dtr_backup(a.dir.path())
        .args(["backups", "list", "--output", "json"])
        .arg(&a.plan)
        .arg(&b.plan));
    assert_eq!(out.status.code(), Some(0));
    let docs = lines(&out);
    assert_eq!(docs[0]["backups"].as_array().map(Vec::len), Some(2));
    assert_eq!(docs[1]["backups"], serde_json::json!([]));
    let out = run(dtr_backup(a.dir.path())
        .args(["verify", "--backup", "latest/.."])
        .arg(&a.plan)
        .arg(&b.plan));
    assert_eq!(out.status.code(), Some(2));
}
