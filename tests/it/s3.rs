//! The S3 destination against a real S3-compatible server (s3s-fs, started by the test bed):
//! artifacts, manifest, list and verify; locks between runners; the server going away in the
//! middle of an upload.

use std::path::PathBuf;
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
    let fx = Fixture::new(tag, big_blob_mib, "");
    let prefix = format!(
        "{tag}-{}",
        fx.dir.path().file_name().expect("name").to_string_lossy()
    );
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
            .any(|n| n.starts_with(&format!("{VOLUME}/_data/docker/registry/v2/blobs/")))
    );
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
    let (fx, prefix) = s3_fixture(&bed, "s3-outage", 24);
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
