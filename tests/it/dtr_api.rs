//! HTTPS to UCP and DTR against a stand-in of their APIs (`scripts/ucp-standin.py`: neither
//! UCP nor DTR can be run here) started by each test with a certificate of its own, beside the
//! real engine of the test bed: UCP's own self-signed certificate pinned through `ca_file`, and
//! DTR's read-only window around metadata and images.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::*;
use crate::docker::{Bed, IMAGE, R1, Setup, apply, bed, write_plan};

/// A self-signed certificate for 127.0.0.1 as `openssl req -x509` makes it (`CA:TRUE`), and
/// its key: (cert, key).
fn self_signed(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.path().join(format!("{name}.pem"));
    let key = dir.path().join(format!("{name}-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl: {}", stderr(&out));
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        stdout(&text).contains("CA:TRUE"),
        "not the certificate UCP makes: {}",
        stdout(&text)
    );
    (cert, key)
}

/// The API stand-in on a free loopback port, serving `cert`; killed on drop.
pub(crate) struct Api {
    child: Child,
    pub(crate) port: u16,
    /// Each change of `readOnlyRegistry`: `<unix time> readOnlyRegistry=<bool>`.
    pub(crate) log: PathBuf,
}

impl Api {
    pub(crate) fn start(dir: &TempDir, cert: &Path, key: &Path, password: &str) -> Api {
        Api::spawn(dir, cert, key, password, false)
    }

    /// Under the test bed's server certificate (checked against the bed's CA), DTR
    /// read-only from the start or not.
    pub(crate) fn on_bed(dir: &TempDir, bed: &Bed, password: &str, read_only: bool) -> Api {
        let (cert, key) = (
            bed.certs.join("server.pem"),
            bed.certs.join("server-key.pem"),
        );
        Api::spawn(dir, &cert, &key, password, read_only)
    }

    fn spawn(dir: &TempDir, cert: &Path, key: &Path, password: &str, read_only: bool) -> Api {
        let log = dir.path().join("dtr-api.log");
        let mut child = Command::new("python3")
            .arg(root().join("scripts/ucp-standin.py"))
            .arg("0")
            .arg(cert)
            .arg(key)
            .arg(cert)
            .env("UCP_STANDIN_PASSWORD", password)
            .env("DTR_STANDIN_LOG", &log)
            .env(
                "DTR_STANDIN_READ_ONLY",
                if read_only { "true" } else { "false" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the stand-in prints its port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the stand-in did not print its port: {line:?}")
        });
        Api { child, port, log }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The changes of the read-only flag so far, as (unix time, value).
    pub(crate) fn changes(&self) -> Vec<(f64, bool)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (t, v) = l.split_once(" readOnlyRegistry=").expect("a log line");
                (t.parse().expect("a time"), v == "true")
            })
            .collect()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test bed's plan with UCP at `url`, trusted through `ca_file`.
fn plan_with_ucp(bed: &Bed, dir: &TempDir, url: &str, ca_file: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(write_plan(
        bed,
        dir,
        &Setup {
            extra: extra.into(),
            ..Setup::default()
        },
    ))
    .expect("plan");
    let text = text.replace(&bed.ucp_url, url).replace(
        &bed.certs.join("ca.pem").display().to_string(),
        &ca_file.display().to_string(),
    );
    dir.write("plan.yaml", &text)
}

#[test]
fn a_self_signed_ucp_certificate_is_pinned_and_no_other_accepted() {
    let Some(bed) = bed() else { return };
    bed.standin_image(IMAGE, crate::docker::VERSION, &[R1], 0);
    bed.replica(R1, crate::docker::VERSION);
    let dir = TempDir::new("ucp-pinned");
    let (cert, key) = self_signed(&dir, "ucp");
    let (other, _) = self_signed(&dir, "other-ucp");
    let api = Api::start(&dir, &cert, &key, &bed.ucp_password);

    // UCP's own certificate in ca_file: accepted, the backup completes.
    let plan = plan_with_ucp(&bed, &dir, &api.url(), &cert, "");
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Another self-signed certificate: refused, in words, before any step after preflight.
    let plan = plan_with_ucp(&bed, &dir, &api.url(), &other, "");
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(1));
    let err = error_of(&out);
    assert!(
        err.contains("is not one of the certificates in")
            && err.contains(&other.display().to_string()),
        "{err}"
    );
    assert_eq!(steps_with(&events(&out), "step_failed"), ["preflight"]);

    // The pinned certificate, asked for under a name it does not carry: refused (pinning
    // checks the name as any verification does).
    let by_name = format!("https://localhost:{}", api.port);
    let plan = plan_with_ucp(&bed, &dir, &by_name, &cert, "");
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(1));
    let err = error_of(&out);
    assert!(
        err.contains("not issued for the host") && err.contains("localhost"),
        "{err}"
    );
}

/// The test bed's plan with DTR's API at `api` and the read-only window.
fn window_plan(bed: &Bed, dir: &TempDir, api: &Api, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(write_plan(
        bed,
        dir,
        &Setup {
            extra: extra.into(),
            ..Setup::default()
        },
    ))
    .expect("plan");
    let with = text.replace(
        "replica: \"auto\"}",
        &format!(
            "replica: \"auto\", external_url: \"{}\", read_only_during_backup: true}}",
            api.url()
        ),
    );
    assert_ne!(with, text, "the plan's dtr line changed: update this test");
    dir.write("plan.yaml", &with)
}

fn read_only_record(dir: &TempDir) -> PathBuf {
    dir.path().join("backups/dtr/.state/read-only.json")
}

fn values(changes: &[(f64, bool)]) -> Vec<bool> {
    changes.iter().map(|c| c.1).collect()
}

#[test]
fn dtrs_read_only_window_spans_metadata_and_images_and_is_always_closed() {
    let Some(bed) = bed() else { return };
    // Padding, so that the metadata container is still streaming at the failpoint.
    bed.standin_image(IMAGE, crate::docker::VERSION, &[R1], 12 << 20);
    bed.replica(R1, crate::docker::VERSION);
    let dir = TempDir::new("dtr-read-only");
    // DTR's API under the test bed's server certificate: checked against ucp.ca_file, as no
    // dtr.ca_file is given.
    let api = Api::on_bed(&dir, &bed, &bed.ucp_password, false);
    let plan = window_plan(&bed, &dir, &api, "");

    // SIGTERM while metadata streams: read-only meanwhile, writable after; exit 130.
    let child = spawn_until(
        apply(&bed, &dir, &plan).env("DTR_BACKUP_FAILPOINT", "stream.middle"),
        "failpoint stream.middle",
    );
    assert_eq!(values(&api.changes()), [true], "read-only during metadata");
    assert!(read_only_record(&dir).exists());
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(values(&api.changes()), [true, false]);
    assert!(!read_only_record(&dir).exists());

    // kill -9 between metadata and images: DTR stays read-only, the record says so, and the
    // next run sets DTR writable first, then opens its own window around images.
    let mut child = spawn_until(
        apply(&bed, &dir, &plan).env("DTR_BACKUP_FAILPOINT", "step.images.before"),
        "failpoint step.images.before",
    );
    assert_eq!(values(&api.changes()), [true, false, true]);
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(read_only_record(&dir).exists());
    // `status` says so.
    let st = run(dtr_backup(dir.path())
        .args(["status", "--output", "json"])
        .arg(&plan));
    let doc: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status JSON");
    assert_eq!(
        doc["plans"][0]["read_only_left"]["url"],
        api.url().as_str(),
        "{doc}"
    );
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    let ev = events(&out);
    assert!(
        warned(&ev, "was read-only (since") && warned(&ev, "DTR is writable again"),
        "{}",
        stdout(&out)
    );
    // Set back at the start, then read-only around metadata and images again: metadata was
    // journaled, but both are copied inside one window.
    assert_eq!(
        values(&api.changes()),
        [true, false, true, false, true, false]
    );
    assert_eq!(steps_with(&ev, "step_skipped"), ["discover"]);
    assert!(
        warned(&ev, "metadata and images run again"),
        "{}",
        stdout(&out)
    );
    assert!(!read_only_record(&dir).exists());
    let finished = ev.last().expect("run_finished");
    let open_ms = finished["summary"]["read_only_ms"]
        .as_u64()
        .expect("the window's length in run_finished");
    let (set, cleared) = (api.changes()[4].0, api.changes()[5].0);
    assert!(
        open_ms > 0 && (open_ms as f64) <= (cleared - set) * 1000.0 + 50.0,
        "{open_ms} ms reported, {} ms seen",
        (cleared - set) * 1000.0
    );
    assert!(ev.iter().any(|e| {
        e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("writable again, after"))
    }));
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains(&bed.ucp_password), "the password leaked");

    // A record that names another DTR than the plan's (the state folder is at the
    // destination, which others may write): refused, and nothing is sent anywhere.
    let record = read_only_record(&dir);
    let planted = format!(
        "{{\"version\": \"1\", \"url\": \"https://127.0.0.1:{}\", \"backup_id\": \"x\", \"set_at\": 0}}",
        api.port + 1
    );
    std::fs::write(&record, &planted).expect("plant a record");
    let before = api.changes().len();
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_of(&out).contains("sends UCP's credentials only to the plan's DTR"),
        "{}",
        error_of(&out)
    );
    assert_eq!(api.changes().len(), before);
    assert_eq!(std::fs::read_to_string(&record).expect("kept"), planted);
    // A record of this DTR while DTR is writable already: dropped with a warning, no change.
    let ours = planted.replace(&format!(":{}", api.port + 1), &format!(":{}", api.port));
    std::fs::write(&record, ours).expect("record");
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    assert!(warned(
        &events(&out),
        "writable already; its record is dropped"
    ));
    assert_eq!(values(&api.changes()[before..]), [true, false]);
    drop(api);

    // A failure inside the window (the metadata container refuses the password, which DTR's
    // API accepts here): writable again, exit 1.
    let dir = TempDir::new("dtr-read-only-fail");
    let api = Api::on_bed(&dir, &bed, "wrong-password", false);
    let plan = window_plan(&bed, &dir, &api, "preflight: {check_ucp_login: false}\n");
    let out = run(apply(&bed, &dir, &plan).env("UCP_PASSWORD", "wrong-password"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_of(&out).contains("unauthorized"),
        "{}",
        error_of(&out)
    );
    assert_eq!(values(&api.changes()), [true, false]);
    assert!(!read_only_record(&dir).exists());
    drop(api);

    // A DTR that is read-only already is left so, and said so.
    let dir = TempDir::new("dtr-read-only-already");
    let api = Api::on_bed(&dir, &bed, &bed.ucp_password, true);
    let plan = window_plan(&bed, &dir, &api, "");
    let out = run(&mut apply(&bed, &dir, &plan));
    assert_eq!(out.status.code(), Some(0), "{}", error_of(&out));
    assert!(warned(&events(&out), "is read-only already"));
    assert!(api.changes().is_empty());
}
