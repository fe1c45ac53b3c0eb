//! Operations around `plan apply`: hooks, notifiers (against a loopback HTTP receiver), the
//! metrics textfile, and `status`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::common::*;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    body: String,
}

/// A loopback HTTP/1.1 server that records each request and answers `200 OK`.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                log.lock().unwrap().push(Request {
                    method,
                    path,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK",
                );
            }
        });
        Receiver { port, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `env` of a hook as `NAME=value` lines, written to `file` in the plan's folder.
fn env_hook(file: &str) -> String {
    format!("[/bin/sh, -c, 'env > {file}; echo hook {file} says hello']")
}

fn env_of(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{file} was not written: {e}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn var<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().find_map(|l| l.strip_prefix(&format!("{name}=")))
}

fn logged(ev: &[serde_json::Value], needle: &str) -> bool {
    ev.iter()
        .any(|e| e["event"] == "log" && e["message"].as_str().is_some_and(|m| m.contains(needle)))
}

#[test]
fn hooks_run_around_the_backup_with_its_facts_and_without_its_secrets() {
    let fx = Fixture::new(
        "hooks-ok",
        0,
        &format!(
            "hooks:\n  before: [{}]\n  after: [{}]\n  on_error: [{}]\n",
            env_hook("before.env"),
            env_hook("after.env"),
            env_hook("on_error.env")
        ),
    );
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    let id = ev.last().unwrap()["backup_id"].as_str().unwrap().to_owned();
    let before = env_of(fx.dir.path(), "before.env");
    let after = env_of(fx.dir.path(), "after.env");
    assert_eq!(var(&before, "DTR_BACKUP_PLAN"), Some("qs"));
    assert_eq!(var(&before, "DTR_BACKUP_ID"), Some(id.as_str()));
    assert_eq!(var(&before, "DTR_BACKUP_STATUS"), None, "not ended yet");
    assert_eq!(var(&after, "DTR_BACKUP_ID"), Some(id.as_str()));
    assert_eq!(var(&after, "DTR_BACKUP_STATUS"), Some("ok"));
    assert_eq!(var(&after, "DTR_BACKUP_EXIT_CODE"), Some("0"));
    // The passphrase's variable is the plan's secret: the hooks never see it.
    for env in [&before, &after] {
        assert_eq!(var(env, "DTR_BACKUP_PASSPHRASE"), None);
        assert!(!env.iter().any(|l| l.contains(PASSPHRASE)));
    }
    assert!(!fx.dir.path().join("on_error.env").exists());
    assert!(logged(&ev, "hook before.env says hello"), "{ev:?}");
    assert!(logged(&ev, "hook after.env says hello"));
    // The before hook ran before the first step, the after hook after the last.
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| ev.iter().position(pred).unwrap();
    let before_at = pos(&|e| e["step"] == "hooks.before");
    let first_step = pos(&|e| e["event"] == "step_started");
    let after_at = pos(&|e| e["step"] == "hooks.after");
    let last_step = ev
        .iter()
        .rposition(|e| e["event"] == "step_finished")
        .unwrap();
    assert!(before_at < first_step && last_step < after_at);
}

#[test]
fn a_failing_before_hook_writes_nothing_and_on_error_is_told() {
    let fx = Fixture::new(
        "hooks-before",
        0,
        &format!(
            "hooks:\n  before: [[/bin/sh, -c, 'echo draining failed >&2; exit 3'], {}]\n  on_error: [{}]\n",
            env_hook("never.env"),
            env_hook("on_error.env")
        ),
    );
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_of(&out);
    assert!(
        err.contains("before hook")
            && err.contains("status 3")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert!(
        !fx.dir.path().join("never.env").exists(),
        "hooks stop at the first failure"
    );
    assert!(fx.backup_dirs().is_empty(), "no backup folder");
    assert!(!fx.plan_root().join("blobs").exists(), "no blob store");
    assert!(
        !fx.plan_root().join(".state/run.json").exists(),
        "no journal"
    );
    assert!(
        !fx.plan_root().join(".state/lock.json").exists(),
        "no lock left"
    );
    let env = env_of(fx.dir.path(), "on_error.env");
    assert_eq!(var(&env, "DTR_BACKUP_STATUS"), Some("failed"));
    assert_eq!(var(&env, "DTR_BACKUP_EXIT_CODE"), Some("1"));
    assert!(var(&env, "DTR_BACKUP_ERROR").is_some_and(|e| e.contains("before hook")));
    assert!(logged(&events(&out), "draining failed"));
}

#[test]
fn a_failing_after_hook_fails_the_run_but_the_backup_stays() {
    let fx = Fixture::new(
        "hooks-after",
        0,
        "hooks:\n  after: [[/bin/sh, -c, 'sleep 30']]\n  timeout: 1s\n",
    );
    let out = run_within(&mut fx.apply(), 60);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_of(&out);
    assert!(
        err.contains("did not finish within 1s") && err.contains("stays"),
        "{err}"
    );
    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the backup is whole: {}",
        stderr(&out)
    );
}

#[test]
fn notifiers_are_told_of_start_success_and_failure_and_their_urls_never_show() {
    let hc = Receiver::start();
    let hook = Receiver::start();
    let hc_url = hc.url("/ping/5ecret-uuid");
    let fx = Fixture::new(
        "notify",
        0,
        &format!(
            "notify:\n  - {{type: healthchecks, url: {{env: HC_PING_URL}}}}\n  - {{type: webhook, url: '{}', on: [failure]}}\n",
            hook.url("/hooks/t0ken")
        ),
    );
    let out = run(fx.apply().env("HC_PING_URL", &hc_url));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = hc.requests();
    assert_eq!(
        got.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/ping/5ecret-uuid/start", "/ping/5ecret-uuid"]
    );
    assert!(got.iter().all(|r| r.method == "POST"));
    let id = events(&out).last().unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        got[1].body.contains(&id) && got[1].body.contains("ok"),
        "{}",
        got[1].body
    );
    assert!(
        hook.requests().is_empty(),
        "the webhook is for failures only"
    );
    for text in [stdout(&out), stderr(&out)] {
        assert!(
            !text.contains("5ecret") && !text.contains("t0ken"),
            "{text}"
        );
    }

    // A failing run: the registry is gone.
    std::fs::rename(fx.dir.path().join("registry"), fx.dir.path().join("moved")).unwrap();
    let out = run(fx.apply().env("HC_PING_URL", &hc_url));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let got = hc.requests();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[2].path, "/ping/5ecret-uuid/start");
    assert_eq!(got[3].path, "/ping/5ecret-uuid/fail");
    assert!(got[3].body.contains("failed"), "{}", got[3].body);
    assert!(
        got[3].body.contains("step preflight failed"),
        "the log's tail: {}",
        got[3].body
    );
    let posted = hook.requests();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].path, "/hooks/t0ken");
    let event: serde_json::Value = serde_json::from_str(&posted[0].body).expect("JSON");
    assert_eq!(event["event"], "run_finished");
    assert_eq!(event["status"], "failed");
    assert_eq!(event["exit_code"], 1);
    for text in [stdout(&out), stderr(&out)] {
        assert!(
            !text.contains("5ecret") && !text.contains("t0ken"),
            "{text}"
        );
    }
}

#[test]
fn an_unreachable_notifier_leaves_the_backup_good() {
    let fx = Fixture::new(
        "notify-down",
        0,
        &format!(
            "notify: [{{type: healthchecks, url: 'http://127.0.0.1:{}/ping/hidden'}}]\n",
            closed_port()
        ),
    );
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&out);
    assert!(warned(&ev, "was not told of the start"), "{ev:?}");
    assert!(warned(&ev, "was not told of the outcome"), "{ev:?}");
    assert_eq!(ev.last().unwrap()["event"], "run_finished");
    assert_eq!(fx.backup_dirs().len(), 1);
    assert!(!stdout(&out).contains("hidden") && !stderr(&out).contains("hidden"));
}

fn metric(text: &str, name: &str, plan: &str) -> Option<f64> {
    let prefix = format!("{name}{{plan=\"{plan}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("a number"))
}

#[test]
fn the_textfile_keeps_the_last_success_across_a_failure_and_other_plans() {
    let fx = Fixture::new("metrics", 0, "metrics: {textfile: prom/dtr_backup.prom}\n");
    std::fs::create_dir_all(fx.dir.path().join("prom")).unwrap();
    let file = fx.dir.path().join("prom/dtr_backup.prom");
    // Another plan's series already there.
    std::fs::write(
        &file,
        "# HELP dtr_backup_last_run_status x\n# TYPE dtr_backup_last_run_status gauge\ndtr_backup_last_run_status{plan=\"other\"} 1\n",
    )
    .unwrap();
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let success = metric(&text, "dtr_backup_last_success_timestamp_seconds", "qs").unwrap();
    assert!(success > 1.7e9, "{text}");
    assert_eq!(metric(&text, "dtr_backup_last_run_status", "qs"), Some(1.0));
    assert_eq!(metric(&text, "dtr_backup_backups", "qs"), Some(1.0));
    assert!(metric(&text, "dtr_backup_last_run_bytes", "qs").unwrap() > 0.0);
    assert_eq!(
        metric(&text, "dtr_backup_last_run_status", "other"),
        Some(1.0)
    );

    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::rename(fx.dir.path().join("registry"), fx.dir.path().join("moved")).unwrap();
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(metric(&text, "dtr_backup_last_run_status", "qs"), Some(0.0));
    assert_eq!(
        metric(&text, "dtr_backup_last_success_timestamp_seconds", "qs"),
        Some(success),
        "kept from the successful run"
    );
    assert!(metric(&text, "dtr_backup_last_run_timestamp_seconds", "qs").unwrap() > success);
    assert_eq!(metric(&text, "dtr_backup_backups", "qs"), Some(1.0));
    assert_eq!(
        metric(&text, "dtr_backup_last_run_status", "other"),
        Some(1.0)
    );
    assert_eq!(
        text.matches("# TYPE dtr_backup_last_run_status gauge")
            .count(),
        1
    );
}

#[test]
fn a_dry_run_says_what_runs_around_the_backup_and_runs_none_of_it() {
    let rx = Receiver::start();
    let fx = Fixture::new(
        "ops-dry",
        0,
        &format!(
            "hooks: {{before: [{}]}}\nnotify: [{{type: webhook, url: '{}', on: [failure]}}]\nmetrics: {{textfile: m.prom}}\n",
            env_hook("before.env"),
            rx.url("/t0ken")
        ),
    );
    for output in ["text", "json"] {
        let out = run(dtr_backup(fx.dir.path())
            .args(["plan", "apply", "--dry-run", "--output", output])
            .arg(&fx.plan));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("before the first step: run hook `/bin/sh -c"),
            "{text}"
        );
        assert!(
            text.contains("notify webhook <redacted URL from the plan> of failure"),
            "{text}"
        );
        assert!(text.contains("m.prom"), "{text}");
        assert!(!text.contains("t0ken"), "{text}");
    }
    assert!(!fx.dir.path().join("before.env").exists());
    assert!(!fx.dir.path().join("m.prom").exists());
    assert!(rx.requests().is_empty());
}

#[test]
fn sigterm_during_a_before_hook_ends_the_run_as_interrupted_and_the_hook_with_it() {
    let fx = Fixture::new(
        "hooks-term",
        0,
        "hooks:\n  before: [[/bin/sh, -c, 'touch started; sleep 30; touch finished']]\n",
    );
    let child = fx
        .apply()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = fx.dir.path().join("started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(events(&out).last().unwrap()["status"], "interrupted");
    assert!(fx.backup_dirs().is_empty(), "nothing written");
    // The hook's shell (and its sleep) ended with the run: no process runs its command line.
    let marker = format!("{}", fx.dir.path().display());
    let hooks_alive = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| {
                c.contains("touch finished") || (c.contains("sleep 30") && c.contains(&marker))
            })
            .count()
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(hooks_alive(), 0, "the hook was ended with the run");
    assert!(!fx.dir.path().join("finished").exists());
}

#[test]
fn status_reports_the_newest_backup_and_the_last_run_and_goes_stale() {
    let fx = Fixture::new("status", 0, "");
    let status = |max_age: &str| {
        let out = run(dtr_backup(fx.dir.path())
            .args(["status", "--output", "json", "--max-age", max_age])
            .arg(&fx.plan));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("JSON ({e}): {}", stderr(&out)));
        (out.status.code(), doc["plans"][0].clone())
    };
    let (code, st) = status("1h");
    assert_eq!(code, Some(6), "no backup yet: stale");
    assert!(st["newest"].is_null() && st["last_run"].is_null(), "{st}");

    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = events(&out).last().unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, st) = status("1h");
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["newest"]["backup_id"], id.as_str());
    assert_eq!(st["backups"], 1);
    assert_eq!(st["last_run"]["status"], "ok");
    assert_eq!(st["fresh"], true);

    // A failed run: the newest backup stays, the last run says what failed.
    std::fs::rename(fx.dir.path().join("registry"), fx.dir.path().join("moved")).unwrap();
    assert_eq!(run(&mut fx.apply()).status.code(), Some(1));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, st) = status("1s");
    assert_eq!(code, Some(6), "older than 1s: stale");
    assert_eq!(st["newest"]["backup_id"], id.as_str());
    assert_eq!(st["last_run"]["status"], "failed");
    assert_eq!(st["last_run"]["exit_code"], 1);
    assert_eq!(st["fresh"], false);

    // Text output names the plan, the newest backup and the staleness.
    let out = run(dtr_backup(fx.dir.path())
        .args(["status", "--max-age", "1s"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(6));
    let text = stdout(&out);
    assert!(
        text.contains(&id) && text.contains("STALE") && text.contains("last run: failed"),
        "{text}"
    );

    // A run holding the lock is judged running; once killed, its lock is judged stale.
    std::fs::rename(fx.dir.path().join("moved"), fx.dir.path().join("registry")).unwrap();
    let mut child = spawn_until(
        fx.apply().env("DTR_BACKUP_FAILPOINT", "apply.locked"),
        "failpoint apply.locked",
    );
    let (_, st) = status("1d");
    assert_eq!(st["lock_holder"]["state"], "running", "{st}");
    assert_eq!(st["locked_by"]["pid"], child.id());
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let (_, st) = status("1d");
    assert_eq!(st["lock_holder"]["state"], "gone", "{st}");
    let out = run(dtr_backup(fx.dir.path()).arg("status").arg(&fx.plan));
    assert!(
        stdout(&out).contains("stale, that process is gone; the next run takes it over"),
        "{}",
        stdout(&out)
    );
}
