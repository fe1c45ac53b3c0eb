//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every shipped plan in `plans/`.
pub fn shipped_plans() -> Vec<PathBuf> {
    let mut plans: Vec<PathBuf> = std::fs::read_dir(root().join("plans"))
        .expect("plans/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    plans.sort();
    assert!(
        plans.len() >= 4,
        "expected the four example plans, found {plans:?}"
    );
    plans
}

/// The `dtr-backup` binary, run from `dir`.
pub fn dtr_backup(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dtr-backup"));
    cmd.current_dir(dir).env("NO_COLOR", "1");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("dtr-backup runs")
}

/// Runs `cmd` to its end, failing the test (after a `kill -9`) if it takes more than `secs`:
/// for the cases that used to hang.
pub fn run_within(cmd: &mut Command, secs: u64) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dtr-backup runs");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {secs} s: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().expect("stdout"),
        stderr: err.join().expect("stderr"),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cp -a src dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {}",
        src.display(),
        dst.display()
    );
}

/// Sends SIGTERM to a child and waits for it to end; a child still running 30 s later is
/// killed and the test fails (a cancellation that hangs must not hang the suite).
pub fn terminate(mut child: std::process::Child) -> Output {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 30 s after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// A temporary folder removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("dtr-backup-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the folder and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, contents).expect("write file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A plan over a copy of the sample registry tree, backing up to `<dir>/backups`.
pub struct Fixture {
    pub dir: TempDir,
    pub plan: PathBuf,
}

pub const PASSPHRASE: &str = "correct horse battery";
pub const VOLUME: &str = "dtr-registry-0a1b2c3d4e5f";

impl Fixture {
    /// `extra` is appended to the plan. With `big_blob_mib > 0`, a blob of that size is added,
    /// so that the archive stream spans several pipe chunks.
    pub fn new(tag: &str, big_blob_mib: usize, extra: &str) -> Fixture {
        // No `mode`: the default, incremental.
        Fixture::in_mode(tag, big_blob_mib, extra, "")
    }

    /// The same with `images.mode: archive`: one self-contained tar per backup.
    pub fn archive(tag: &str, big_blob_mib: usize, extra: &str) -> Fixture {
        Fixture::in_mode(tag, big_blob_mib, extra, ", mode: archive")
    }

    fn in_mode(tag: &str, big_blob_mib: usize, extra: &str, mode: &str) -> Fixture {
        let dir = TempDir::new(tag);
        copy_tree(
            &root().join("plans/quickstart/registry"),
            &dir.path().join("registry"),
        );
        if big_blob_mib > 0 {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let data: Vec<u8> = (0..big_blob_mib << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let digest = dtr_backup::archive::sha256_hex(&data);
            let blob = dir.path().join(format!(
                "registry/docker/registry/v2/blobs/sha256/{}/{digest}",
                &digest[..2]
            ));
            std::fs::create_dir_all(&blob).expect("blob dir");
            std::fs::write(blob.join("data"), data).expect("blob");
        }
        let plan = dir.write(
            "plan.yaml",
            &format!(
                "version: 1\nname: qs\nparts: [images]\nimages: {{type: path, path: registry, name: {VOLUME}{mode}}}\n\
                 destination: {{type: local, path: backups}}\n\
                 encryption: {{type: passphrase, passphrase: {{env: DTR_BACKUP_PASSPHRASE}}}}\n{extra}"
            ),
        );
        Fixture { dir, plan }
    }

    /// `dtr-backup plan apply <plan> --output json` with the passphrase set.
    pub fn apply(&self) -> Command {
        let mut cmd = dtr_backup(self.dir.path());
        cmd.env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(["plan", "apply", "--output", "json"])
            .arg(&self.plan);
        cmd
    }

    /// The plan's folder at the destination.
    pub fn plan_root(&self) -> PathBuf {
        self.dir.path().join("backups/qs")
    }

    /// Backup folders at the destination (complete or not), sorted.
    pub fn backup_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.plan_root())
            .map(|rd| {
                rd.map(|e| e.expect("entry").path())
                    .filter(|p| p.is_dir() && !p.ends_with(".state") && !p.ends_with("blobs"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The error of the last event (`--output json`), if it has one.
pub fn error_of(out: &Output) -> String {
    events(out)
        .last()
        .and_then(|e| e["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether one of the `warning` events says `needle`.
pub fn warned(events: &[serde_json::Value], needle: &str) -> bool {
    events.iter().any(|e| {
        e["event"] == "warning" && e["message"].as_str().is_some_and(|m| m.contains(needle))
    })
}

/// The JSON events of an `--output json` run.
pub fn events(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A backup's `blobs.list` or `trees.list` (`what`: `blobs` or `trees`), read by hand: the
/// blob store it names, and each object's line (digest, size, stored size, ...).
pub fn object_list(backup: &Path, what: &str) -> (String, Vec<Vec<String>>) {
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let path = backup.join(format!("{what}.list"));
    let text = read(&path);
    let mut lines = text.lines().peekable();
    let store = lines
        .next()
        .and_then(|h| h.strip_prefix(&format!("dtr-backup {what} 1 ")))
        .unwrap_or_else(|| panic!("{}: no header", path.display()))
        .to_owned();
    let fields = |l: &str| l.split(' ').map(str::to_owned).collect::<Vec<_>>();
    // The base it names (the full list in the blob store), changed by its own lines.
    let mut objects = std::collections::BTreeMap::new();
    if let Some(base) = lines.peek().and_then(|l| l.strip_prefix("base ")) {
        let sha = base.split(' ').next().expect("base sha256").to_owned();
        lines.next();
        let base_path = backup
            .parent()
            .expect("plan folder")
            .join(format!("blobs/{store}/lists/{}/{sha}", &sha[..2]));
        let base_text = read(&base_path);
        assert_eq!(dtr_backup::archive::sha256_hex(base_text.as_bytes()), sha);
        for l in base_text.lines().skip(1) {
            let f = fields(l);
            objects.insert(f[0].clone(), f);
        }
    }
    for l in lines {
        let f = fields(l);
        if f.get(1).map(String::as_str) == Some("-") {
            assert!(
                objects.remove(&f[0]).is_some(),
                "{l} drops what the base lacks"
            );
        } else {
            objects.insert(f[0].clone(), f);
        }
    }
    (store, objects.into_values().collect())
}

/// The counts of the `log` line starting with `prefix`: the first number of each of its
/// parts (`blobs: 3 copied (120 bytes), 7 already in the blob store` gives 3 and 7).
pub fn logged_counts(ev: &[serde_json::Value], prefix: &str) -> Vec<u64> {
    let line = ev
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix}"));
    line.split(", ")
        .map(|part| {
            part.split(' ')
                .find_map(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("no count in {line}"))
        })
        .collect()
}

/// The last `step_progress` event of `step`, which must come before that step's
/// `step_finished`, and must say that all it counted on was read.
pub fn finished_progress(events: &[serde_json::Value], step: &str) -> serde_json::Value {
    let at = |kind: &str| {
        events
            .iter()
            .rposition(|e| e["event"] == kind && e["step"] == step)
    };
    let progress = at("step_progress").unwrap_or_else(|| panic!("no step_progress of {step}"));
    let finished = at("step_finished").unwrap_or_else(|| panic!("no step_finished of {step}"));
    assert!(
        progress < finished,
        "{step}: progress after the step finished"
    );
    let last = events[progress].clone();
    assert!(last["bytes"].as_u64().is_some_and(|b| b > 0), "{last}");
    assert_eq!(last["bytes"], last["total_bytes"], "{step}: {last}");
    last
}

/// Ids of the steps that have an event of `kind`.
pub fn steps_with(events: &[serde_json::Value], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["step"].as_str().expect("step").to_owned())
        .collect()
}

/// Decrypts with the real `gpg`, in a throwaway home.
pub fn gpg_decrypt(file: &Path, passphrase: &str) -> Vec<u8> {
    let home = TempDir::new("gnupg");
    let out = Command::new("gpg")
        .env("GNUPGHOME", home.path())
        .args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            passphrase,
            "-d",
        ])
        .arg(file)
        .output()
        .expect("gpg runs");
    assert!(out.status.success(), "gpg -d failed: {}", stderr(&out));
    out.stdout
}

/// `tar -tf -` of bytes, with the real tar.
pub fn tar_list(bytes: &[u8]) -> Vec<String> {
    use std::io::Write;
    let mut child = Command::new("tar")
        .args(["-tf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tar runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("tar output");
    writer.join().expect("join").expect("write to tar");
    assert!(out.status.success(), "tar -t failed");
    stdout(&out).lines().map(str::to_owned).collect()
}

/// Starts `cmd` and returns once its stderr shows `marker` (the child keeps running).
pub fn spawn_until(cmd: &mut Command, marker: &str) -> std::process::Child {
    spawn_marked(cmd.stdout(std::process::Stdio::null()), marker)
}

/// [`spawn_until`] with the command's standard output left as the caller set it.
pub fn spawn_marked(cmd: &mut Command, marker: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        let marker = wanted;
        let mut seen = Vec::new();
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let hit = line.contains(&marker);
            seen.push(line);
            if hit {
                let _ = tx.send(Ok(()));
                // Keep draining, so that the child never writes to a closed pipe (an
                // `eprintln!` that fails panics, which would end it for the wrong reason).
                for _ in lines {}
                return;
            }
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(Ok(())) => child,
        Ok(Err(seen)) => {
            let _ = child.kill();
            panic!("the process ended before {marker:?}; stderr:\n{seen}");
        }
        Err(_) => {
            let _ = child.kill();
            panic!("{marker:?} not reached in time");
        }
    }
}

/// Every file under `dir`, with its bytes.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.expect("entry").path();
            if p.is_dir() {
                out.push((p.clone(), Vec::new()));
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}
