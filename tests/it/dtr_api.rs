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
        let log = dir.path().join("dtr-api.log");
        let mut child = Command::new("python3")
            .arg(root().join("scripts/ucp-standin.py"))
            .arg("0")
            .arg(cert)
            .arg(key)
            .arg(cert)
            .env("UCP_STANDIN_PASSWORD", password)
            .env("DTR_STANDIN_LOG", &log)
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
