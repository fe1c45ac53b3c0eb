//! The S3 destination against a real S3-compatible server (s3s-fs, started by the test bed):
//! artifacts, manifest, list and verify; locks between runners; the server going away in the
//! middle of an upload.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

struct S3Bed {
    _serial: std::sync::MutexGuard<'static, ()>,
    endpoint: String,
    data: PathBuf,
    cmd_file: PathBuf,
    pidfile: PathBuf,
}

fn s3_bed() -> Option<S3Bed> {
    let Ok(endpoint) = std::env::var("DTR_BACKUP_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI is set but there is no S3 test server: run the tests through scripts/test"
        );
        eprintln!("skipped: no S3 test server (run the tests through scripts/test)");
        return None;
    };
    let var = |n: &str| PathBuf::from(std::env::var(n).unwrap_or_else(|_| panic!("{n}")));
    // One test stops and restarts the shared server: the S3 tests run one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    Some(S3Bed {
        _serial: SERIAL.lock().unwrap_or_else(|e| e.into_inner()),
        endpoint,
        data: var("DTR_BACKUP_TEST_S3_DATA"),
        cmd_file: var("DTR_BACKUP_TEST_S3_CMD"),
        pidfile: var("DTR_BACKUP_TEST_S3_PIDFILE"),
    })
}

/// A fixture whose destination is the test server's `backups` bucket under a unique prefix.
fn s3_fixture(bed: &S3Bed, tag: &str, big_blob_mib: usize) -> (Fixture, String) {
    to_s3(bed, Fixture::new(tag, big_blob_mib, ""))
}

/// The plan of `fx` with its destination in the test bed's bucket.
fn to_s3(bed: &S3Bed, fx: Fixture) -> (Fixture, String) {
    // Short: s3s-fs names a file after each multipart upload's key in base64, which must fit
    // in 255 bytes (keys of about 128 characters at most; S3 itself takes 1024).
    let prefix = fx
        .dir
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .trim_start_matches("dtr-backup-test-")
        .to_owned();
    let text = std::fs::read_to_string(&fx.plan).expect("plan").replace(
        "destination: {type: local, path: backups}",
        &format!(
            "destination:\n  type: s3\n  bucket: backups\n  prefix: {prefix}\n  endpoint: {}\n  allow_http: true\n  \
             access_key_id: {{env: TEST_S3_KEY}}\n  secret_access_key: {{env: TEST_S3_SECRET}}",
            bed.endpoint
        ),
    );
    std::fs::write(&fx.plan, text).expect("plan");
    (fx, prefix)
}

fn with_keys(cmd: &mut Command) -> &mut Command {
    cmd.env("TEST_S3_KEY", "dtr-backup-test")
        .env("TEST_S3_SECRET", "dtr-backup-test-secret")
}

/// Objects of the plan under the bucket, as s3s-fs keeps them: plain files.
fn plan_dir(bed: &S3Bed, prefix: &str) -> PathBuf {
    bed.data.join("backups").join(prefix).join("qs")
}

fn complete(bed: &S3Bed, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(plan_dir(bed, prefix))
        .map(|rd| {
            rd.map(|e| e.expect("e").path())
                .filter(|p| p.join("manifest.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every artifact under a final key belongs to a complete backup and matches its manifest.
fn assert_final_keys_complete(bed: &S3Bed, prefix: &str) {
    for (path, bytes) in snapshot(&plan_dir(bed, prefix)) {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() || !name.ends_with(".tar.gpg") {
            continue;
        }
        let manifest = path.parent().expect("parent").join("manifest.json");
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&manifest)
                .unwrap_or_else(|_| panic!("{} has no manifest", path.display())),
        )
        .expect("json");
        let a = m["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .find(|a| a["path"] == name.as_str())
            .expect("listed");
        assert_eq!(a["size"], bytes.len() as u64, "{}", path.display());
        assert_eq!(
            a["sha256"],
            dtr_backup::archive::sha256_hex(&bytes),
            "{}",
            path.display()
        );
    }
}

#[test]
fn s3_destination_end_to_end() {
    let Some(bed) = s3_bed() else { return };
    let (fx, prefix) = s3_fixture(&bed, "s3-e2e", 20);
    let out = run(with_keys(&mut fx.apply()));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let backups = complete(&bed, &prefix);
    assert_eq!(backups.len(), 1);
    let artifact = backups[0].join("dtr-images-0a1b2c3d4e5f.tar.gpg");
    let names = tar_list(&gpg_decrypt(&artifact, PASSPHRASE));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("{VOLUME}/_data/docker/registry/v2/repositories/")))
    );
    // The blobs are objects of the blob store in the bucket, each a whole message of its
    // digest's content; the backup's list names each.
    let (_, list) = object_list(&backups[0], "blobs");
    let store = plan_dir(&bed, &prefix).join("blobs");
    let mut stored = 0;
    for line in &list {
        let digest = &line[0];
        let object = std::fs::read_dir(&store)
            .expect("blob store")
            .map(|s| {
                s.expect("s")
                    .path()
                    .join(format!("sha256/{}/{digest}", &digest[..2]))
            })
            .find(|p| p.exists())
            .expect("stored blob");
        let plain = gpg_decrypt(&object, PASSPHRASE);
        assert_eq!(&dtr_backup::archive::sha256_hex(&plain), digest);
        stored += 1;
    }
    assert!(stored >= 9, "{list:?}");
    assert_final_keys_complete(&bed, &prefix);
    // The journal and the lock lived in the bucket, and are gone after a complete run.
    assert!(!plan_dir(&bed, &prefix).join(".state/run.json").exists());
    assert!(!plan_dir(&bed, &prefix).join(".state/lock.json").exists());

    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .args(["backups", "list", "--output", "json"])
            .arg(&fx.plan),
    ));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["backups"].as_array().expect("list").len(), 1);
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(["verify", "--read-data", "full"])
            .arg(&fx.plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn two_runners_on_one_s3_destination_one_gets_exit_4() {
    let Some(bed) = s3_bed() else { return };
    let (fx, prefix) = s3_fixture(&bed, "s3-lock", 0);
    let mut holder = spawn_until(
        with_keys(fx.apply().env("DTR_BACKUP_FAILPOINT", "apply.locked")),
        "failpoint apply.locked",
    );
    assert!(
        plan_dir(&bed, &prefix).join(".state/lock.json").is_file(),
        "the lock is an object in the bucket"
    );
    let out = run(with_keys(&mut fx.apply()));
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert_eq!(events(&out).last().expect("event")["status"], "locked");
    holder.kill().expect("kill");
    holder.wait().expect("wait");
}

fn restart_server(bed: &S3Bed) {
    let cmd = std::fs::read_to_string(&bed.cmd_file).expect("s3 command");
    let mut parts = cmd.split_whitespace();
    let child = Command::new(parts.next().expect("binary"))
        .args(parts)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restart s3s-fs");
    std::fs::write(&bed.pidfile, child.id().to_string()).expect("pidfile");
    std::mem::forget(child);
}

fn stop_server(bed: &S3Bed) {
    let pid = std::fs::read_to_string(&bed.pidfile).expect("pidfile");
    let status = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn server_stopped_mid_upload_then_rerun_completes() {
    let Some(bed) = s3_bed() else { return };
    // The archive form: one long stream to the server.
    let (fx, prefix) = to_s3(&bed, Fixture::archive("s3-outage", 24, ""));
    // The run pauses in the middle of the stream; meanwhile the server goes away, and comes
    // back only after the run has hit it.
    let mut cmd = fx.apply();
    with_keys(&mut cmd)
        .env("DTR_BACKUP_FAILPOINT", "stream.middle")
        .env("DTR_BACKUP_FAILPOINT_PAUSE_MS", "1500")
        .stdout(std::process::Stdio::piped());
    let child = spawn_until(&mut cmd, "failpoint stream.middle");
    stop_server(&bed);
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_final_keys_complete(&bed, &prefix);
    restart_server(&bed);
    let out: Output = child.wait_with_output().expect("wait");
    // Either object_store's retries carried the run over the outage, or it failed cleanly.
    let code = out.status.code();
    assert!(matches!(code, Some(0) | Some(1)), "{code:?}");
    assert_final_keys_complete(&bed, &prefix);
    if code != Some(0) {
        let out = run(with_keys(&mut fx.apply()));
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    }
    assert_eq!(complete(&bed, &prefix).len(), 1);
    assert_final_keys_complete(&bed, &prefix);
}

/// Writes a blob into a registry tree on disk; returns its digest.
fn add_blob(v2: &std::path::Path, content: &[u8]) -> String {
    let digest = dtr_backup::archive::sha256_hex(content);
    let dir = v2.join(format!("blobs/sha256/{}/{digest}", &digest[..2]));
    std::fs::create_dir_all(&dir).expect("blob dir");
    std::fs::write(dir.join("data"), content).expect("blob");
    digest
}

/// Keys of the objects under a folder served by s3s-fs (its own bookkeeping files excluded).
fn keys_under(root: &std::path::Path) -> std::collections::BTreeSet<String> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| p.is_file())
        .map(|(p, _)| {
            p.strip_prefix(root)
                .expect("under root")
                .display()
                .to_string()
        })
        .filter(|k| !k.split('/').any(|part| part.starts_with('.')))
        .collect()
}

/// How many stores of the blob store (`blobs/<store>/sha256/<ab>/<digest>`) hold `digest`.
fn stored_blobs(plan_root: &Path, digest: &str) -> usize {
    std::fs::read_dir(plan_root.join("blobs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.path()
                        .join(format!("sha256/{}/{digest}", &digest[..2]))
                        .is_file()
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn s3_image_content_is_copied_incrementally_and_restores_from_the_manifest() {
    let Some(bed) = s3_bed() else { return };
    let (fx, prefix) = s3_fixture(&bed, "s3-images", 0);
    // DTR's S3 storage: the registry tree under a root directory of the `registry` bucket.
    // Short: the test bed's S3 server keeps each object's metadata in a file named after the
    // base64 of its key, so that keys much longer than 180 bytes cannot be written there (the
    // restore into S3 below writes DTR's longest keys).
    let src_prefix = format!("r{}", std::process::id());
    let src_root = bed.data.join("registry").join(&src_prefix);
    let v2 = src_root.join("docker/registry/v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    copy_tree(
        &root().join("plans/quickstart/registry/docker/registry/v2/."),
        &v2,
    );
    for i in 0..92u32 {
        add_blob(
            &v2,
            format!("layer {i} {}", "x".repeat(1000 + i as usize)).as_bytes(),
        );
    }
    let text = std::fs::read_to_string(&fx.plan).expect("plan").replace(
        "images: {type: path, path: registry, name: dtr-registry-0a1b2c3d4e5f}",
        &format!(
            "images:\n  type: s3\n  bucket: registry\n  prefix: {src_prefix}\n  endpoint: {}\n  allow_http: true\n  \
             access_key_id: {{env: TEST_S3_KEY}}\n  secret_access_key: {{env: TEST_S3_SECRET}}\n  parallel: 8\n\
             dtr: {{replica: \"0a1b2c3d4e5f\"}}\nretention: {{keep_last: 1}}",
            bed.endpoint
        ),
    );
    std::fs::write(&fx.plan, text).expect("plan");
    let copied = |out: &Output| {
        let ev = events(out);
        let e = ev
            .iter()
            .find(|e| e["event"] == "objects_copied")
            .expect("objects_copied event")
            .clone();
        (
            e["copied"].as_u64().expect("copied"),
            e["already_present"].as_u64().expect("present"),
        )
    };

    let out = run(with_keys(&mut fx.apply()));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let total = 100u64; // 8 blobs of the sample tree + 92
    assert_eq!(copied(&out), (total, 0));
    let first = complete(&bed, &prefix);
    assert_eq!(first.len(), 1);

    // 1% new blobs, and one blob gone from the registry (garbage-collected by DTR).
    let new_digest = add_blob(&v2, b"a new layer pushed between the two backups");
    let gone = add_blob(&v2, format!("layer 0 {}", "x".repeat(1000)).as_bytes());
    std::fs::remove_dir_all(v2.join(format!("blobs/sha256/{}/{gone}", &gone[..2]))).expect("rm");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run(with_keys(&mut fx.apply()));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out), (1, total - 1), "only the new blob is copied");

    // Retention (keep_last: 1) removed the first backup and the blob only it listed.
    let backups = complete(&bed, &prefix);
    assert_eq!(backups.len(), 1);
    assert_ne!(backups[0], first[0]);
    let store = plan_dir(&bed, &prefix);
    assert_eq!(
        stored_blobs(&store, &gone),
        0,
        "an unreferenced blob was kept"
    );
    assert_eq!(stored_blobs(&store, &new_digest), 1);

    // Restore from the second backup's manifest alone plus the blob store: every object.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backups[0].join("manifest.json")).expect("manifest"))
            .expect("json");
    let objects = m["objects"].as_array().expect("objects");
    let listed: std::collections::BTreeSet<String> = objects
        .iter()
        .map(|o| o["key"].as_str().expect("key").to_owned())
        .collect();
    assert_eq!(
        listed,
        keys_under(&src_root),
        "the manifest lists exactly the registry's objects"
    );
    let tar_names = tar_list(&gpg_decrypt(
        &backups[0].join("dtr-images-0a1b2c3d4e5f.tar.gpg"),
        PASSPHRASE,
    ));
    for o in objects {
        let key = o["key"].as_str().expect("key");
        match o["blob"].as_str() {
            Some(blob) => {
                let plain = gpg_decrypt(&store.join(blob), PASSPHRASE);
                assert_eq!(
                    dtr_backup::archive::sha256_hex(&plain),
                    o["sha256"].as_str().expect("sha"),
                    "{key}"
                );
                assert_eq!(plain.len() as u64, o["size"].as_u64().expect("size"));
            }
            None => assert!(
                tar_names.contains(&format!("{VOLUME}/_data/{key}")),
                "{key} not in the archive"
            ),
        }
    }
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(["verify", "--read-data", "full"])
            .arg(&fx.plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // `restore` puts every object back, byte for byte, each checked against its sha256.
    let restored = fx.dir.path().join("restored");
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(["restore", "--output", "json", "--images-to"])
            .arg(&restored)
            .arg(&fx.plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(keys_under(&restored), keys_under(&src_root));
    for key in keys_under(&src_root) {
        assert_eq!(
            std::fs::read(restored.join(&key)).expect("restored"),
            std::fs::read(src_root.join(&key)).expect("source"),
            "{key}"
        );
    }
    // The bucket's storage lost: `restore` puts every object back under DTR's prefix itself.
    let originals: Vec<(String, Vec<u8>)> = keys_under(&src_root)
        .into_iter()
        .map(|k| {
            let b = std::fs::read(src_root.join(&k)).expect("source");
            (k, b)
        })
        .collect();
    let restore_s3 = || {
        let mut cmd = dtr_backup(fx.dir.path());
        cmd.env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(["restore", "--output", "json"])
            .arg(&fx.plan);
        with_keys(&mut cmd);
        cmd
    };
    let same_as_before = |what: &str| {
        assert_eq!(
            keys_under(&src_root),
            originals.iter().map(|(k, _)| k.clone()).collect(),
            "{what}"
        );
        for (k, b) in &originals {
            assert_eq!(
                &std::fs::read(src_root.join(k)).expect("restored"),
                b,
                "{what}: {k}"
            );
        }
    };
    // While the prefix holds objects, restore refuses and writes nothing.
    let out = run(&mut restore_s3());
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        error_of(&out).contains("is not empty"),
        "{}",
        error_of(&out)
    );
    same_as_before("refused");
    std::fs::remove_dir_all(&src_root).expect("lose the bucket's content");
    // Killed after the first object: the next restore recognises its own partial work from
    // its journal and finishes.
    let mut child = spawn_until(
        restore_s3().env("DTR_BACKUP_FAILPOINT", "restore.file"),
        "failpoint restore.file",
    );
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let out = run(&mut restore_s3());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let started = events(&out)
        .into_iter()
        .find(|e| e["event"] == "run_started")
        .expect("run_started");
    assert_eq!(started["resumed"], true);
    same_as_before("restored into S3 after a kill");

    // A damaged blob in the blob store: exit 5, and nothing of the restore left under the
    // prefix.
    std::fs::remove_dir_all(&src_root).expect("lose it again");
    let blob = objects
        .iter()
        .find_map(|o| o["blob"].as_str())
        .expect("a blob in the store");
    let damaged = store.join(blob);
    let good = std::fs::read(&damaged).expect("blob");
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&damaged, &bad).expect("damage");
    let out = run(&mut restore_s3());
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        !src_root.exists() || keys_under(&src_root).is_empty(),
        "{:?}",
        keys_under(&src_root)
    );
    std::fs::write(&damaged, &good).expect("repair");
    let out = run(&mut restore_s3());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    same_as_before("restored into S3");

    // Nothing left for retention to do.
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .args(["backups", "prune", "--dry-run"])
            .arg(&fx.plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("would delete 0 backups, 0 incomplete runs, 0 unreferenced blobs"),
        "{}",
        stdout(&out)
    );

    // A new passphrase: no blob encrypted with the old one is reused; every blob is copied
    // again, into a store of its own, and the backup opens with the new passphrase alone.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let rotated = "a rotated passphrase";
    let out = run(with_keys(fx.apply().env("DTR_BACKUP_PASSPHRASE", rotated)));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        copied(&out),
        (total, 0),
        "blobs under the old passphrase were reused"
    );
    assert_eq!(
        stored_blobs(&store, &new_digest),
        1,
        "retention removed the old store's blobs"
    );
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", rotated)
            .args(["verify", "--read-data", "full"])
            .arg(&fx.plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // Back to the old passphrase: its store is gone with its last backup, so it starts over
    // too, and never picks up blobs of the rotated one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run(with_keys(&mut fx.apply()));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(copied(&out), (total, 0));
}

#[test]
fn same_bucket_without_encryption_copies_server_side() {
    let Some(bed) = s3_bed() else { return };
    let (fx, prefix) = s3_fixture(&bed, "s3-copy", 0);
    let src_prefix = format!("{prefix}-src");
    let v2 = bed
        .data
        .join("registry")
        .join(&src_prefix)
        .join("docker/registry/v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    copy_tree(
        &root().join("plans/quickstart/registry/docker/registry/v2/."),
        &v2,
    );
    let text = std::fs::read_to_string(&fx.plan)
        .expect("plan")
        .replace("bucket: backups", "bucket: registry")
        .replace(
            "images: {type: path, path: registry, name: dtr-registry-0a1b2c3d4e5f}",
            &format!(
                "images:\n  type: s3\n  bucket: registry\n  prefix: {src_prefix}\n  endpoint: {}\n  allow_http: true\n  \
                 access_key_id: {{env: TEST_S3_KEY}}\n  secret_access_key: {{env: TEST_S3_SECRET}}\n\
                 dtr: {{replica: \"0a1b2c3d4e5f\"}}",
                bed.endpoint
            ),
        )
        .replace("encryption: {type: passphrase, passphrase: {env: DTR_BACKUP_PASSPHRASE}}", "encryption: {type: none}");
    std::fs::write(&fx.plan, text).expect("plan");
    let out = run(with_keys(&mut fx.apply()));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let ev = events(&out);
    let e = ev
        .iter()
        .find(|e| e["event"] == "objects_copied")
        .expect("objects_copied");
    assert_eq!(e["server_side"], true);
    assert_eq!(e["copied"], 8);
    // The copies are byte for byte the registry's blobs.
    let store = bed.data.join("registry").join(&prefix).join("qs");
    for (path, bytes) in snapshot(&v2.join("blobs")) {
        if path.is_file() {
            let digest = path
                .parent()
                .expect("dir")
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let copy =
                std::fs::read(store.join(format!("blobs/plain/sha256/{}/{digest}", &digest[..2])))
                    .expect("copied blob");
            assert_eq!(copy, bytes);
        }
    }
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .args(["verify", "--read-data", "full"])
            .arg(&fx.plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn state_updates_are_conditional_on_s3() {
    use dtr_backup::storage::Store;
    let Some(bed) = s3_bed() else { return };
    let cfg = dtr_backup::plan::S3Cfg {
        bucket: "backups".parse().unwrap(),
        prefix: Default::default(),
        region: None,
        endpoint: Some(bed.endpoint.parse().unwrap()),
        access_key_id: Some(dtr_backup::plan::SecretRef::Command(vec![
            "printf".into(),
            "dtr-backup-test".into(),
        ])),
        secret_access_key: Some(dtr_backup::plan::SecretRef::Command(vec![
            "printf".into(),
            "dtr-backup-test-secret".into(),
        ])),
        allow_http: true,
        path_style: true,
        parallel: None,
        allow_empty: false,
    };
    let root = format!("cond-{}", std::process::id());
    let a = dtr_backup::storage::s3::S3Store::new(&cfg, &root).expect("store a");
    let b = dtr_backup::storage::s3::S3Store::new(&cfg, &root).expect("store b");
    a.put("run.json", b"{\"v\":1}").expect("a writes");
    a.replace("run.json", b"{\"v\":2}")
        .expect("a replaces its own version");
    assert_eq!(
        b.get("run.json").expect("b reads"),
        Some(b"{\"v\":2}".to_vec())
    );
    b.replace("run.json", b"{\"v\":3}")
        .expect("b replaces what it read");
    let err = a
        .replace("run.json", b"{\"v\":4}")
        .expect_err("a's version is stale");
    assert!(err.to_string().contains("changed by someone else"), "{err}");
    assert_eq!(
        a.get("run.json").expect("read"),
        Some(b"{\"v\":3}".to_vec())
    );
    a.delete("run.json").expect("delete");
}

/// `backups copy` of `from` to `to`, NDJSON; the last line (`copy_finished`) parsed.
fn copy(fx: &Fixture, from: &Path, to: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .env("OTHER_PASSPHRASE", "not the same passphrase")
            .args(["backups", "copy", "--output", "json"])
            .arg(from)
            .arg("--to")
            .arg(to)
            .args(extra),
    ));
    let last = stdout(&out)
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .unwrap_or_default();
    (out, last)
}

fn flip_byte(file: &Path, at: u64) {
    let mut bytes = std::fs::read(file).expect("read");
    let i = (at as usize).min(bytes.len() - 1);
    bytes[i] ^= 0x55;
    std::fs::write(file, bytes).expect("write");
}

#[test]
fn copies_go_local_to_s3_and_back_resume_and_refuse_damage() {
    let Some(bed) = s3_bed() else { return };
    // Two local backups sharing blobs, the second with one blob more.
    let fx = Fixture::new("copy", 2, "");
    assert_eq!(run(&mut fx.apply()).status.code(), Some(0));
    let blob = b"a blob that only the second backup holds".to_vec();
    let digest = dtr_backup::archive::sha256_hex(&blob);
    let dir = fx.dir.path().join(format!(
        "registry/docker/registry/v2/blobs/sha256/{}/{digest}",
        &digest[..2]
    ));
    std::fs::create_dir_all(&dir).expect("blob dir");
    std::fs::write(dir.join("data"), &blob).expect("blob");
    // Ids name the second: the second backup must be later to be the latest.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(run(&mut fx.apply()).status.code(), Some(0));
    let ids: Vec<String> = fx
        .backup_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 2);

    // The same plan name, the test bed's bucket as destination.
    let text = std::fs::read_to_string(&fx.plan).expect("plan");
    let (s3_fx, prefix) = to_s3(&bed, Fixture::new("copy-s3", 0, ""));
    let s3_plan = fx.dir.write(
        "s3.yaml",
        &std::fs::read_to_string(&s3_fx.plan).expect("plan").replace(
            "path: registry",
            &format!("path: {}", fx.dir.path().join("registry").display()),
        ),
    );
    assert!(text.contains("name: qs"));

    // Killed during the copy: no manifest there, nothing listed; the next copy finishes,
    // finding what is there already.
    let mut child = spawn_until(
        with_keys(
            dtr_backup(fx.dir.path())
                .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
                .env("DTR_BACKUP_FAILPOINT", "copy.object-copied")
                .args(["backups", "copy"])
                .arg(&fx.plan)
                .arg("--to")
                .arg(&s3_plan),
        ),
        "failpoint copy.object-copied",
    );
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(
        complete(&bed, &prefix).is_empty(),
        "a manifest after a killed copy"
    );
    let (out, done) = copy(&fx, &fx.plan, &s3_plan, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(done["copied"], serde_json::json!(ids));
    assert!(done["objects_present"].as_u64() >= Some(1), "{done}");
    assert!(done["objects"].as_u64() >= Some(1), "{done}");
    assert_eq!(complete(&bed, &prefix).len(), 2);
    let out = run(with_keys(
        dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(["verify", "--read-data", "full", "--backup", &ids[0]])
            .arg(&s3_plan),
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // A second copy copies nothing.
    let (out, again) = copy(&fx, &fx.plan, &s3_plan, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(again["copied"], serde_json::json!([]));
    assert_eq!(again["present"], serde_json::json!(ids));
    assert_eq!(
        (again["objects"].as_u64(), again["bytes"].as_u64()),
        (Some(0), Some(0))
    );

    // And back, from S3 to a third destination, from which the image content restores.
    let back = fx
        .dir
        .write("back.yaml", &text.replace("path: backups", "path: back"));
    let (out, _) = copy(&fx, &s3_plan, &back, &["--backup", "latest"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The blob store's passphrase check came along: that plan's runs find the store theirs.
    let checks: Vec<PathBuf> = snapshot(&fx.dir.path().join("back/qs/blobs"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.ends_with("key-check"))
        .collect();
    assert_eq!(checks.len(), 1, "{checks:?}");
    let restored = fx.dir.path().join("restored");
    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["restore", "--images-to"])
        .arg(&restored)
        .arg(&back));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        restored
            .join(format!(
                "docker/registry/v2/blobs/sha256/{}/{digest}/data",
                &digest[..2]
            ))
            .is_file()
    );

    // A plan that could not decrypt the copies is refused before anything is copied.
    let other_key = fx.dir.write(
        "other-key.yaml",
        &text
            .replace("path: backups", "path: other-key")
            .replace("{env: DTR_BACKUP_PASSPHRASE}", "{env: OTHER_PASSPHRASE}"),
    );
    let (out, failed) = copy(&fx, &fx.plan, &other_key, &["--backup", "latest"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot decrypt backup")),
        "{failed}"
    );
    assert!(!fx.dir.path().join("other-key/qs/blobs").exists());

    // Damage at the source is refused and leaves no backup at the destination: a blob
    // object, then an artifact.
    let fourth = fx.dir.write(
        "fourth.yaml",
        &text.replace("path: backups", "path: fourth"),
    );
    let object = fx.plan_root().join("blobs");
    let stored: Vec<PathBuf> = snapshot(&object)
        .into_iter()
        .filter(|(p, b)| !p.is_dir() && b.len() > 1000 && p.to_string_lossy().contains("/sha256/"))
        .map(|(p, _)| p)
        .collect();
    let victim = stored.first().expect("a blob object").clone();
    let good = std::fs::read(&victim).expect("read");
    flip_byte(&victim, 600);
    let rel = victim
        .strip_prefix(fx.plan_root())
        .expect("under the plan")
        .to_owned();
    for _ in 0..2 {
        // Refused every time: the damaged object is never named at the destination (so a
        // second copy cannot take it for copied).
        let (out, failed) = copy(&fx, &fx.plan, &fourth, &[]);
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|e| e.contains("is damaged")),
            "{failed}"
        );
        assert!(!fx.dir.path().join("fourth/qs").join(&rel).exists());
    }
    std::fs::write(&victim, good).expect("mend");
    let artifact = fx.backup_dirs()[0].join("dtr-images-0a1b2c3d4e5f.tar.gpg");
    flip_byte(&artifact, 100);
    let (out, failed) = copy(&fx, &fx.plan, &fourth, &["--backup", &ids[0]]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("dtr-images-0a1b2c3d4e5f.tar.gpg") && error.contains("is damaged"),
        "{error}"
    );
    assert!(
        !fx.dir
            .path()
            .join("fourth/qs")
            .join(&ids[0])
            .join("dtr-images-0a1b2c3d4e5f.tar.gpg")
            .exists()
    );
    let listed = run(dtr_backup(fx.dir.path())
        .args(["backups", "list", "--output", "json"])
        .arg(&fourth));
    let doc: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(doc["backups"], serde_json::json!([]), "{doc}");
}
