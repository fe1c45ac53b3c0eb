//! Fleet: the container image (`scripts/image`) run as a Docker Swarm job
//! (`deploy/swarm/run-job`) on a real single-node swarm of the test bed's engine, and the
//! Kubernetes manifests under `deploy/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::docker::{Bed, IMAGE, R1, VERSION, bed};

const TAG: &str = "dtr-backup:fleet-test";

/// The engine in swarm mode for one test; it leaves the swarm (and its secrets, configs and
/// services) on drop, so that the other tests find a plain engine.
struct Swarm<'a>(&'a Bed);

impl<'a> Swarm<'a> {
    fn init(bed: &'a Bed) -> Swarm<'a> {
        let _ = bed.try_docker(&["swarm", "leave", "--force"]);
        bed.docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        Swarm(bed)
    }

    fn secret(&self, name: &str, value: &[u8]) {
        self.0.docker_stdin(&["secret", "create", name, "-"], value);
    }

    fn config(&self, name: &str, value: &[u8]) {
        self.0.docker_stdin(&["config", "create", name, "-"], value);
    }
}

impl Drop for Swarm<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_docker(&["swarm", "leave", "--force"]);
    }
}

fn run_job(bed: &Bed, dest: &Path, node: &str, job_env: &str) -> Command {
    let mut cmd = Command::new(root().join("deploy/swarm/run-job"));
    cmd.env("DOCKER_HOST", format!("unix://{}", bed.sock))
        .env("DTR_BACKUP_NODE", node)
        .env("DTR_BACKUP_IMAGE", TAG)
        .env("DTR_BACKUP_DEST", dest)
        .env("DTR_BACKUP_DOCKER_SOCKET", &bed.sock)
        .env(
            "DTR_BACKUP_SECRETS",
            "dtr-backup-passphrase ucp-password ucp-ca",
        )
        .env("DTR_BACKUP_JOB_ENV", job_env)
        .env("DTR_BACKUP_TIMEOUT", "300");
    cmd
}

#[test]
fn the_image_runs_as_a_swarm_job_with_secrets_and_a_killed_job_resumes() {
    let Some(bed) = bed() else { return };
    bed.standin_image(IMAGE, VERSION, &[R1], 12 << 20);
    bed.replica(R1, VERSION);
    // The image, from this build's binary (scripts/image strips it): at most 50 MiB.
    let out = run(Command::new(root().join("scripts/image"))
        .arg(TAG)
        .env("DOCKER_HOST", format!("unix://{}", bed.sock))
        .env("DTR_BACKUP_BINARY", env!("CARGO_BIN_EXE_dtr-backup")));
    assert!(out.status.success(), "scripts/image: {}", stderr(&out));
    let size: u64 = stdout(&bed.docker(&["image", "inspect", "--format", "{{.Size}}", TAG]))
        .trim()
        .parse()
        .expect("size");
    assert!(size <= 50 << 20, "{size} bytes");
    let entry = stdout(&bed.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        TAG,
    ]));
    assert_eq!(entry.trim(), r#"["/usr/local/bin/dtr-backup"]"#);
    // The ionice that apply's read-back moves itself to the idle I/O class with runs there,
    // its libraries with it, and the container may set that class (it says so of itself).
    let ionice = bed.docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/usr/bin/ionice",
        TAG,
        "-c",
        "3",
        "/usr/bin/ionice",
        "-p",
        "1",
    ]);
    assert!(
        ionice.status.success(),
        "ionice in the image: {}",
        stderr(&ionice)
    );
    assert_eq!(stdout(&ionice).trim(), "idle");

    let swarm = Swarm::init(&bed);
    let node = stdout(&bed.docker(&["node", "ls", "--format", "{{.Hostname}}"]))
        .trim()
        .to_owned();
    let dir = TempDir::new("fleet");
    let dest = dir.path().join("backups");
    std::fs::create_dir_all(&dest).expect("dest");
    let plan = format!(
        "version: 1\nname: dtr\n\
         ucp:\n  url: {}\n  username: admin\n  password: {{file: /run/secrets/ucp-password}}\n  ca_file: /run/secrets/ucp-ca\n\
         docker: {{host: \"unix:///var/run/docker.sock\"}}\n\
         dtr: {{image: \"{IMAGE}\", replica: auto}}\n\
         images: {{type: volume}}\n\
         destination: {{type: local, path: /backups}}\n\
         encryption: {{type: passphrase, passphrase: {{file: /run/secrets/dtr-backup-passphrase}}}}\n\
         state: {{lock_lease: 10s}}\n",
        bed.ucp_url
    );
    swarm.config("dtr-backup-plan", plan.as_bytes());
    swarm.secret("dtr-backup-passphrase", PASSPHRASE.as_bytes());
    swarm.secret("ucp-password", bed.ucp_password.as_bytes());
    swarm.secret(
        "ucp-ca",
        &std::fs::read(bed.certs.join("ca.pem")).expect("ca"),
    );

    // Killed (kill -9 of its container) while the metadata streams: the job fails with 137.
    let child = spawn_until(
        &mut run_job(&bed, &dest, &node, "DTR_BACKUP_FAILPOINT=stream.middle"),
        "failpoint stream.middle",
    );
    let job = bed.lines(&["ps", "-q", "--filter", &format!("ancestor={TAG}")]);
    assert_eq!(job.len(), 1, "{job:?}");
    bed.docker(&["kill", &job[0]]);
    let out = child.wait_with_output().expect("run-job");
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(complete(&dest).is_empty());

    // The next job takes the killed one's lock over once its lease (10 s) ran out, resumes
    // that run and completes it.
    let out = run(run_job(&bed, &dest, &node, "").env(
        "DTR_BACKUP_ARGS",
        "plan apply --output json --lock-timeout 60s /etc/dtr-backup/plan.yaml",
    ));
    let logs = stdout(&out) + &stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{logs}");
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let started = events
        .iter()
        .find(|e| e["event"] == "run_started")
        .expect("run_started");
    assert_eq!(started["resumed"], true, "{logs}");
    assert!(
        events.iter().any(|e| e["event"] == "warning"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("took over a stale lock"))),
        "{logs}"
    );
    assert_eq!(events.last().expect("events")["status"], "ok");
    assert_eq!(complete(&dest).len(), 1);
    // Secrets stay secret: not in the job's logs.
    assert!(!logs.contains(&bed.ucp_password) && !logs.contains(PASSPHRASE));
    // No job is left.
    assert!(
        bed.lines(&["service", "ls", "-q"]).is_empty(),
        "run-job left its service"
    );
}

/// Complete backups under a local destination of plan `dtr`.
fn complete(dest: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dest.join("dtr"))
        .map(|rd| {
            rd.map(|e| e.expect("e").path())
                .filter(|p| p.join("manifest.json").exists())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_deploy_manifests_are_valid_and_carry_a_valid_plan() {
    let Ok(validate) = std::env::var("DTR_BACKUP_TEST_KUBERNETES_VALIDATE") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI is set but kubernetes-validate was not installed: run the tests through scripts/test"
        );
        eprintln!("skipped: no kubernetes-validate (run the tests through scripts/test)");
        return;
    };
    let manifest = root().join("deploy/kubernetes/cronjob.yaml");
    let check = |file: &Path| {
        run(Command::new(&validate)
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .arg(file))
    };
    let out = check(&manifest);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    for must in [
        "kind: CronJob",
        "concurrencyPolicy: Forbid",
        "startingDeadlineSeconds:",
        "kubernetes.io/hostname:",
        "path: /var/run/docker.sock",
        "secretName: dtr-backup",
    ] {
        assert!(text.contains(must), "the CronJob lacks {must}");
    }
    // The validator refuses what Kubernetes refuses (so that its pass means something): a
    // misspelt key, a number that is not one.
    let dir = TempDir::new("k8s");
    for (from, to) in [
        ("nodeSelector:", "nodeSelektor:"),
        (
            "startingDeadlineSeconds: 3600",
            "startingDeadlineSeconds: an hour",
        ),
    ] {
        let broken = dir.write("broken.yaml", &text.replace(from, to));
        assert!(!check(&broken).status.success(), "{to} passed");
    }

    // The plan in its ConfigMap is a valid plan.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    let plan = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["plan.yaml"].as_str())
        .expect("the plan in the ConfigMap");
    let file = dir.write("plan.yaml", plan);
    let out = run(dtr_backup(dir.path()).args(["plan", "validate"]).arg(&file));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    // The CI schedule parses and runs run-job on schedules only.
    let ci: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("deploy/ci/gitlab-ci.yml")).expect("ci"),
    )
    .expect("YAML");
    let job = &ci["dtr-backup"];
    assert!(job["script"].to_string().contains("deploy/swarm/run-job"));
    assert!(job["rules"].to_string().contains("schedule"));
    // The systemd units name what they run.
    let service =
        std::fs::read_to_string(root().join("deploy/swarm/dtr-backup.service")).expect("unit");
    assert!(service.contains("ExecStart=/usr/local/bin/dtr-backup-run-job"));
    let timer = std::fs::read_to_string(root().join("deploy/swarm/dtr-backup.timer")).expect("t");
    assert!(timer.contains("OnCalendar=") && timer.contains("Persistent=true"));
}
