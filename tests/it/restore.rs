//! `restore`: image content back into a folder, byte for byte, every blob checked; the drill;
//! refusals that touch nothing.

use std::path::{Path, PathBuf};

use crate::common::*;

/// The files and folders under `dir`, relative, each with the sha256 of its bytes (folders
/// with none), so that a failed comparison prints names, not contents.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    snapshot(dir)
        .into_iter()
        .map(|(p, b)| {
            let hash = if p.is_dir() {
                String::new()
            } else {
                dtr_backup::archive::sha256_hex(&b)
            };
            (p.strip_prefix(dir).expect("inside").to_path_buf(), hash)
        })
        .collect()
}

fn restore(fx: &Fixture, args: &[&str]) -> std::process::Output {
    run(&mut restore_cmd(fx, args))
}

fn restore_cmd(fx: &Fixture, args: &[&str]) -> std::process::Command {
    let mut cmd = dtr_backup(fx.dir.path());
    cmd.env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["restore", "--output", "json"])
        .arg(&fx.plan)
        .args(args);
    cmd
}

fn backed_up(tag: &str) -> (Fixture, String) {
    let fx = Fixture::new(tag, 3, "");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = events(&out).last().expect("events")["backup_id"]
        .as_str()
        .expect("id")
        .to_owned();
    (fx, id)
}

/// The one images artifact of a backup.
fn artifact(fx: &Fixture, id: &str) -> PathBuf {
    fx.plan_root()
        .join(id)
        .join("dtr-images-0a1b2c3d4e5f.tar.gpg")
}

#[test]
fn image_content_comes_back_byte_for_byte() {
    let (fx, id) = backed_up("restore-folder");
    let target = fx.dir.path().join("restored");
    let out = restore(&fx, &["--images-to", target.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    assert_eq!(ev[0]["event"], "run_started");
    assert_eq!(ev[0]["backup_id"], id.as_str());
    // Image content alone: its checks happen while it is restored, no pass of their own.
    assert_eq!(steps_with(&ev, "step_finished"), ["images"]);
    // Its progress: the stored octets it read (lists, trees, every blob object), to the end.
    let progress = finished_progress(&ev, "images");
    assert!(progress["objects"].as_u64() > Some(3), "{progress}");
    let last = ev.last().expect("events");
    assert_eq!(last["status"], "ok");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(tree(&target), tree(&fx.dir.path().join("registry")));
    assert!(
        !tree(&target)
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains(".partial-"))
    );
    // Released: the next backup runs.
    assert!(!fx.plan_root().join(".state/lock.json").exists());
}

#[test]
fn the_plan_path_is_restored_and_an_older_backup_is_what_it_was() {
    let (fx, first) = backed_up("restore-own");
    let registry = fx.dir.path().join("registry");
    let before = tree(&registry);
    // More content, a second backup; then the storage is lost.
    let data = b"a layer pushed after the first backup";
    let digest = dtr_backup::archive::sha256_hex(data);
    let blob = registry.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{digest}",
        &digest[..2]
    ));
    std::fs::create_dir_all(&blob).expect("mkdir");
    std::fs::write(blob.join("data"), data).expect("write");
    // Backup ids have a resolution of one second: the second backup must be the later one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = tree(&registry);
    std::fs::remove_dir_all(&registry).expect("lose the storage");

    let out = restore(&fx, &["--backup", &first]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        tree(&registry),
        before,
        "exactly the first backup's content"
    );

    std::fs::remove_dir_all(&registry).expect("again");
    let out = restore(&fx, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        tree(&registry),
        after,
        "latest: the second backup's content"
    );
}

#[test]
fn a_folder_that_is_not_empty_is_refused_untouched() {
    let (fx, _) = backed_up("restore-busy");
    let target = fx.dir.path().join("busy");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(target.join("keep.txt"), b"mine").expect("write");
    let out = restore(&fx, &["--images-to", target.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("is not empty"),
        "{}",
        error_of(&out)
    );
    assert_eq!(
        tree(&target),
        [(
            PathBuf::from("keep.txt"),
            dtr_backup::archive::sha256_hex(b"mine")
        )]
    );
}

#[test]
fn a_damaged_backup_restores_nothing_and_exits_5() {
    let (fx, id) = backed_up("restore-damaged");
    let file = artifact(&fx, &id);
    let bytes = std::fs::read(&file).expect("read");
    // Damage at the start (the key packet), in the middle, at the end (the integrity check).
    for at in [40, bytes.len() / 2, bytes.len() - 10] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        std::fs::write(&file, &damaged).expect("damage");
        let target = fx.dir.path().join(format!("restored-{at}"));
        let out = restore(&fx, &["--images-to", target.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(5), "at {at}: {}", stdout(&out));
        assert!(
            error_of(&out).contains("nothing restored"),
            "{}",
            error_of(&out)
        );
        assert!(!target.exists(), "at {at}: nothing written");
    }
    std::fs::write(&file, &bytes).expect("repair");
    let out = restore(&fx, &["--drill"]);
    assert_eq!(out.status.code(), Some(0), "repaired: {}", stdout(&out));
}

#[test]
fn a_drill_restores_checks_and_leaves_nothing() {
    let (fx, id) = backed_up("restore-drill");
    let scratch = fx.dir.path().join("drill");
    let out = restore(
        &fx,
        &["--drill", "--images-to", scratch.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    assert_eq!(steps_with(&ev, "step_finished"), ["images", "drill"]);
    let checks: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "check").collect();
    assert!(!checks.is_empty());
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
    assert_eq!(ev.last().expect("events")["status"], "ok");
    assert!(!scratch.exists(), "the scratch folder is removed");
    assert!(
        fx.dir.path().join("registry").exists(),
        "nothing live touched"
    );

    // Without --images-to the scratch folder is the system's; a damaged backup fails the drill.
    let out = restore(&fx, &["--drill"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let file = artifact(&fx, &id);
    let mut bytes = std::fs::read(&file).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 1;
    std::fs::write(&file, &bytes).expect("damage");
    let out = restore(&fx, &["--drill"]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    let last = events(&out).pop().expect("events");
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["exit_code"], 5);
}

#[test]
fn a_dry_run_says_what_it_would_do_and_touches_nothing() {
    let (fx, id) = backed_up("restore-dry");
    let before = tree(fx.dir.path());
    let target = fx.dir.path().join("restored");
    let mut cmd = dtr_backup(fx.dir.path());
    cmd.env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["restore", "--dry-run"])
        .arg(&fx.plan)
        .args(["--images-to", target.to_str().expect("utf-8")]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("decrypt {id}/")), "{text}");
    assert!(
        text.contains("every blob checked against its digest"),
        "{text}"
    );
    assert!(!text.contains(PASSPHRASE));
    assert_eq!(
        tree(fx.dir.path()),
        before,
        "nothing written, no lock taken"
    );
}

#[test]
fn a_backup_holding_a_symbolic_link_restores_nothing() {
    let fx = Fixture::new("restore-symlink", 0, "");
    std::os::unix::fs::symlink(
        "/etc",
        fx.dir
            .path()
            .join("registry/docker/registry/v2/repositories/escape"),
    )
    .expect("symlink");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let target = fx.dir.path().join("restored");
    std::fs::create_dir_all(&target).expect("mkdir");
    let out = restore(&fx, &["--images-to", target.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    let err = error_of(&out);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(err.contains("nothing restored"), "{err}");
    assert!(tree(&target).is_empty(), "the target is as it was");
}

#[test]
fn leftovers_of_an_interrupted_restore_are_cleared_and_a_drill_keeps_a_given_folder() {
    let (fx, _) = backed_up("restore-leftover");
    let target = fx.dir.path().join("restored");
    let leftover = target.join(".dtr-backup-restore-0badcafe/docker");
    std::fs::create_dir_all(&leftover).expect("mkdir");
    std::fs::write(leftover.join("half"), b"x").expect("write");
    let out = restore(&fx, &["--images-to", target.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        warned(&events(&out), "interrupted restore"),
        "{}",
        stdout(&out)
    );
    assert_eq!(tree(&target), tree(&fx.dir.path().join("registry")));

    // A drill into a folder that exists (a mount point, say) empties it but keeps it.
    let given = fx.dir.path().join("given");
    std::fs::create_dir_all(&given).expect("mkdir");
    let out = restore(
        &fx,
        &["--drill", "--images-to", given.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(given.is_dir());
    assert!(tree(&given).is_empty());
}

/// Where a restore of image content can be killed, and the steps its resumption skips.
const RESTORE_KILL_POINTS: &[(&str, &[&str])] = &[
    ("restore.locked", &[]),
    ("restore.journal-created", &[]),
    // Half-way through the extraction: the staging folder holds part of the content.
    ("restore.file", &[]),
    // Staged whole, nothing moved into place yet.
    ("restore.staged", &[]),
    // Moved into place, the staging folder not yet removed.
    ("restore.moved", &[]),
    ("restore.step.images.done-not-journaled", &[]),
    ("restore.step.images.journaled", &["images"]),
];

#[test]
fn killed_at_any_point_the_next_restore_finishes_the_job() {
    assert!(RESTORE_KILL_POINTS.len() >= 5);
    let (fx, id) = backed_up("restore-kill");
    let registry = tree(&fx.dir.path().join("registry"));
    for (n, (point, skipped)) in RESTORE_KILL_POINTS.iter().enumerate() {
        let target = fx.dir.path().join(format!("restored-{n}"));
        let to = target.to_str().expect("utf-8");
        let mut child = spawn_until(
            restore_cmd(&fx, &["--images-to", to]).env("DTR_BACKUP_FAILPOINT", point),
            &format!("failpoint {point}"),
        );
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
        // Never a blob with wrong content under its final name, whatever was killed.
        for (path, hash) in tree(&target) {
            let p = path.to_string_lossy();
            if let Some(d) = p.strip_suffix("/data").and_then(|p| p.rsplit('/').next())
                && d.len() == 64
            {
                assert_eq!(&hash, d, "{point}: {p}");
            }
        }

        let staged = tree(&target)
            .iter()
            .any(|(p, h)| p.to_string_lossy().contains(".dtr-backup-restore-") && !h.is_empty());
        assert_eq!(
            staged,
            ["restore.file", "restore.staged"].contains(point),
            "{point}: files in the staging folder"
        );

        let out = run(&mut restore_cmd(&fx, &["--images-to", to]));
        assert_eq!(out.status.code(), Some(0), "{point}: {}", stdout(&out));
        let ev = events(&out);
        let started = ev
            .iter()
            .find(|e| e["event"] == "run_started")
            .expect("run_started");
        let resumed = started["resumed"].as_bool().expect("resumed");
        assert_eq!(
            resumed,
            *point != "restore.locked",
            "{point}: resumed from the journal"
        );
        assert_eq!(started["backup_id"], id.as_str());
        assert_eq!(steps_with(&ev, "step_skipped"), *skipped, "{point}");
        for s in *skipped {
            assert!(
                !steps_with(&ev, "step_started").contains(&s.to_string()),
                "{point}: {s} was redone"
            );
        }
        assert!(warned(&ev, "stale lock"), "{point}: no stale-lock warning");
        // The content whole and only it: no staging folder, no temporary, no journal left.
        assert_eq!(tree(&target), registry, "{point}");
        assert!(
            !fx.plan_root().join(".state/restore.json").exists(),
            "{point}: the journal is cleared"
        );
        // A third restore has nothing to finish: the target is not empty.
        let out = run(&mut restore_cmd(&fx, &["--images-to", to]));
        assert_eq!(out.status.code(), Some(1), "{point}: {}", stdout(&out));
    }
}

#[test]
fn a_killed_drill_is_cleaned_up_by_the_next_run_and_a_live_restore_is_not_abandoned() {
    let (fx, _) = backed_up("restore-kill-drill");
    let mut child = spawn_until(
        restore_cmd(&fx, &["--drill"]).env("DTR_BACKUP_FAILPOINT", "restore.file"),
        "failpoint restore.file",
    );
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let journal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.plan_root().join(".state/restore.json")).expect("journal"),
    )
    .expect("json");
    let scratch = PathBuf::from(journal["target"].as_str().expect("target"));
    assert!(scratch.is_dir(), "the killed drill left its scratch folder");

    // Another kind of run (a restore into a folder) abandons the drill: nothing of it was live.
    let target = fx.dir.path().join("restored");
    let to = target.to_str().expect("utf-8");
    let mut child = spawn_until(
        restore_cmd(&fx, &["--images-to", to]).env("DTR_BACKUP_FAILPOINT", "restore.moved"),
        "failpoint restore.moved",
    );
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert!(!scratch.exists(), "the drill's scratch folder is removed");

    // This restore has put content in place: a drill does not abandon it unasked...
    let out = run(&mut restore_cmd(&fx, &["--drill"]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(error_of(&out).contains("--fresh"), "{}", error_of(&out));
    // ...the same command finishes it...
    let out = run(&mut restore_cmd(&fx, &["--images-to", to]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(tree(&target), tree(&fx.dir.path().join("registry")));
    // ...and the drill runs after it.
    let out = run(&mut restore_cmd(&fx, &["--drill"]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn sigterm_stops_a_restore_with_130_and_the_next_one_finishes() {
    let (fx, _) = backed_up("restore-term");
    let target = fx.dir.path().join("restored");
    let to = target.to_str().expect("utf-8");
    let child = spawn_until(
        restore_cmd(&fx, &["--images-to", to]).env("DTR_BACKUP_FAILPOINT", "restore.file"),
        "failpoint restore.file",
    );
    let out = terminate(child);
    // Interrupted, not a damaged backup: the stopped reading is the interruption's.
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(!fx.plan_root().join(".state/lock.json").exists());
    // Nothing was in place: the target is as it was (absent), and the next restore runs.
    assert!(
        !target.exists() || tree(&target).is_empty(),
        "{:?}",
        tree(&target)
    );
    let out = run(&mut restore_cmd(&fx, &["--images-to", to]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(tree(&target), tree(&fx.dir.path().join("registry")));
}

#[test]
fn a_restore_begun_on_another_host_is_not_finished_here() {
    let (fx, _) = backed_up("restore-host");
    let target = fx.dir.path().join("restored");
    let to = target.to_str().expect("utf-8");
    let mut child = spawn_until(
        restore_cmd(&fx, &["--images-to", to]).env("DTR_BACKUP_FAILPOINT", "restore.staged"),
        "failpoint restore.staged",
    );
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    // The journal, as if another machine had written it (state kept with the backups).
    let journal = fx.plan_root().join(".state/restore.json");
    let mut j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).expect("journal")).expect("json");
    assert!(!j["host"].as_str().unwrap_or("").is_empty(), "{j}");
    j["host"] = "elsewhere".into();
    std::fs::write(&journal, serde_json::to_vec(&j).expect("json")).expect("write");
    let out = run(&mut restore_cmd(&fx, &["--images-to", to]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("begun on host elsewhere"),
        "{}",
        error_of(&out)
    );
    // --fresh abandons it without touching its paths; here, the staging folder it left is
    // an interrupted restore's leftover, removed by the new restore.
    let out = run(&mut restore_cmd(&fx, &["--images-to", to, "--fresh"]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(tree(&target), tree(&fx.dir.path().join("registry")));
}

/// Adds a blob of `content` to the fixture's registry tree; returns its digest.
fn add_blob(fx: &Fixture, content: &[u8]) -> String {
    let digest = dtr_backup::archive::sha256_hex(content);
    let dir = fx.dir.path().join(format!(
        "registry/docker/registry/v2/blobs/sha256/{}/{digest}",
        &digest[..2]
    ));
    std::fs::create_dir_all(&dir).expect("blob folder");
    std::fs::write(dir.join("data"), content).expect("blob");
    digest
}

/// The first two counts of the log line of `out` starting with `prefix`: (copied, already
/// in the store) for `blobs: `, (stored, unchanged) for `repositories: `.
fn two_counts(out: &std::process::Output, prefix: &str) -> (u64, u64) {
    let n = logged_counts(&events(out), prefix);
    (n[0], n[1])
}

/// Incremental backups: each run copies only the blobs the store lacks; retention deletes a
/// blob only once no kept backup lists it, and keeps one a kept and a deleted backup share;
/// a backup whose blobs three runs wrote restores whole, byte for byte.
#[test]
fn repeat_backups_copy_the_change_and_share_blobs_that_retention_keeps() {
    let fx = Fixture::new("incremental", 0, "retention: {keep_last: 2}\n");
    let only_first = add_blob(&fx, b"a blob only the first backup has");
    let store = || -> Vec<String> {
        let mut found: Vec<String> = snapshot(&fx.plan_root().join("blobs"))
            .into_iter()
            .filter(|(p, _)| {
                p.is_file() && !p.ends_with("key-check") && !p.to_string_lossy().contains("/lists/")
            })
            .map(|(p, _)| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        found.sort();
        found
    };
    let apply = || {
        let out = run(&mut fx.apply());
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        out
    };
    let first = apply();
    let (copied, reused) = two_counts(&first, "blobs: ");
    assert_eq!(reused, 0);
    assert!(copied >= 9, "{copied}");
    let (repos, unchanged) = two_counts(&first, "repositories: ");
    assert_eq!(unchanged, 0);
    assert!(repos >= 2, "{repos}");
    let shared = store();
    assert!(shared.contains(&only_first));

    // Second run: one new blob, one gone from the registry; only the new one is copied.
    // (Its `<ab>` folder goes too: empty folders under blobs/ are not part of a backup.)
    std::fs::remove_dir_all(fx.dir.path().join(format!(
        "registry/docker/registry/v2/blobs/sha256/{}",
        &only_first[..2]
    )))
    .expect("rm");
    let second_blob = add_blob(&fx, b"written by the second run");
    // The repositories' files are seconds old when the second run lists them: it records
    // them (a change more recent than 2 s is not recorded), and the third run trusts them.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let second = apply();
    assert_eq!(two_counts(&second, "blobs: "), (1, copied - 1));
    // No repository changed: no repository tree is written again.
    assert_eq!(two_counts(&second, "repositories: "), (0, repos));
    let third_blob = add_blob(&fx, b"written by the third run");
    // A new tag in one repository: that repository's tree alone is stored.
    let tag = fx.dir.path().join(
        "registry/docker/registry/v2/repositories/library/alpine/_manifests/tags/edge/current",
    );
    std::fs::create_dir_all(&tag).expect("tag folder");
    std::fs::write(tag.join("link"), format!("sha256:{third_blob}")).expect("tag");
    let third = apply();
    assert_eq!(two_counts(&third, "blobs: "), (1, copied));
    assert_eq!(two_counts(&third, "repositories: "), (1, repos - 1));
    // Those that did not change were not read: listed as the second run saw them.
    assert_eq!(
        logged_counts(&events(&third), "repositories: ")[3],
        repos - 1
    );

    // keep_last 2: the first backup went, and with it the blob only it listed; the blobs
    // it shared with the kept ones stay.
    let now = store();
    assert!(!now.contains(&only_first), "{now:?}");
    assert!(now.contains(&second_blob) && now.contains(&third_blob));
    for b in shared.iter().filter(|b| **b != only_first) {
        assert!(now.contains(b), "the shared blob {b} was deleted");
    }
    assert_eq!(fx.backup_dirs().len(), 2);

    // The third backup restores whole: blobs of all three runs.
    let target = fx.dir.path().join("restored");
    let out = restore(&fx, &["--images-to", target.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(tree(&target), tree(&fx.dir.path().join("registry")));
    let id = third_id(&third);
    let out = restore(&fx, &["--backup", &id, "--drill"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // The lists of the kept backups name bases in the blob store; retention removed the ones
    // no kept backup names. The third list holds its differences only.
    let lists = fx.plan_root().join("blobs");
    let mut bases: Vec<String> = snapshot(&lists)
        .into_iter()
        .filter(|(p, _)| p.is_file() && p.to_string_lossy().contains("/lists/"))
        .map(|(p, _)| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    bases.sort();
    let mut named: Vec<String> = fx
        .backup_dirs()
        .iter()
        .flat_map(|d| ["blobs.list", "trees.list"].map(|l| d.join(l)))
        .map(|l| {
            let text = std::fs::read_to_string(&l).expect("list");
            let line = text.lines().nth(1).expect("a base line");
            line.strip_prefix("base ")
                .and_then(|b| b.split(' ').next())
                .expect("base")
                .to_owned()
        })
        .collect();
    named.sort();
    named.dedup();
    assert_eq!(bases, named);
    let third_dir = fx.plan_root().join(&id);
    let third_list = std::fs::read_to_string(third_dir.join("blobs.list")).expect("list");
    let lines: Vec<&str> = third_list.lines().collect();
    assert_eq!(lines.len(), 3, "{third_list}");
    assert!(
        lines[2].starts_with(&format!("{third_blob} ")),
        "{third_list}"
    );

    // The README's hand procedure (gpg, tar, sh) brings the same backup back.
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let start = readme
        .find("  ```sh\n  B=backups/quickstart/<backup-id>")
        .expect("the hand procedure");
    let block = &readme[start + "  ```sh\n".len()..];
    let block = &block[..block.find("  ```").expect("its end")];
    let by_hand = fx.dir.path().join("by-hand");
    std::fs::create_dir_all(&by_hand).expect("folder");
    let script: String = block
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| {
            if l.starts_with("B=") {
                format!("B={}; V={}", third_dir.display(), by_hand.display())
            } else {
                l.replace("<volume>", VOLUME)
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bin = fx.dir.path().join("bin");
    let home = fx.dir.path().join("gnupg");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&home).expect("gnupg home");
    let gpg = bin.join("gpg");
    std::fs::write(
        &gpg,
        format!(
            "#!/bin/sh\nexec /usr/bin/gpg --homedir {} --batch --quiet --pinentry-mode loopback --passphrase '{PASSPHRASE}' \"$@\"\n",
            home.display()
        ),
    )
    .expect("gpg wrapper");
    std::process::Command::new("chmod")
        .args(["+x", gpg.to_str().expect("utf-8")])
        .status()
        .expect("chmod");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("bash");
    assert!(out.status.success(), "{script}\n{}", stderr(&out));
    let mut by_hand_tree = tree(&by_hand.join(format!("{VOLUME}/_data")));
    let mut source = tree(&fx.dir.path().join("registry"));
    by_hand_tree.sort();
    source.sort();
    assert_eq!(by_hand_tree, source);

    // `--read-all`: every repository read again, none trusted; nothing new to store.
    let out = run(fx.apply().arg("--read-all"));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        logged_counts(&events(&out), "repositories: "),
        [0, repos, 0, 0]
    );
}

fn third_id(out: &std::process::Output) -> String {
    events(out).last().expect("events")["backup_id"]
        .as_str()
        .expect("id")
        .to_owned()
}
