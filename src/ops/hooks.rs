//! Hooks: commands a plan runs around `plan apply` (`hooks.before`, `after`, `on_error`).
//!
//! Each hook is an argv list run without a shell, in the plan's folder, with stdin closed and
//! the run's facts in `DTR_BACKUP_*` variables. Variables that the plan names as secret
//! references (`{env: NAME}`) are taken out of its environment: a hook never sees a secret.
//! Each line the hook prints is handed to `log`. A hook runs in a process group of its own,
//! so that a timeout (or an interruption) ends it and whatever it started.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cancel::Cancel;

/// The longest line of a hook's output passed on as one line; longer ones are cut.
const MAX_LINE: usize = 4096;

/// How one hook is run.
pub struct Runner<'a> {
    /// `DTR_BACKUP_*` variables (never a secret).
    pub env: &'a [(String, String)],
    /// Variables taken out of the hook's environment (the plan's secret references).
    pub remove: &'a [String],
    /// The folder the hook runs in (the plan's).
    pub dir: &'a Path,
    pub timeout: Duration,
    /// Receives each line the hook prints (stdout and stderr).
    pub log: &'a (dyn Fn(String) + Send + Sync),
}

impl Runner<'_> {
    /// Runs `argv`; `Err` says in words why it failed (exit status, signal, timeout, not
    /// found). With `cancel`, an interruption ends the hook too.
    pub async fn run(&self, argv: &[String], cancel: Option<&Cancel>) -> Result<(), String> {
        let Some((program, args)) = argv.split_first() else {
            return Err("an empty command".to_owned());
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in self.remove {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "cannot run {program:?}: not found (give an absolute path, or check PATH and the plan's folder {})",
                    self.dir.display()
                )
            } else {
                format!("cannot run {program:?}: {e}")
            }
        })?;
        let group = child.id();
        let out = child.stdout.take().map(|o| lines(o, self.log));
        let err = child.stderr.take().map(|e| lines(e, self.log));
        let outputs = async {
            if let Some(o) = out {
                o.await;
            }
        };
        let errors = async {
            if let Some(e) = err {
                e.await;
            }
        };
        let waited = async {
            let (status, (), ()) = tokio::join!(child.wait(), outputs, errors);
            status
        };
        let cancelled = async {
            match cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            status = waited => Ok(status),
            _ = tokio::time::sleep(self.timeout) => Err(format!(
                "{program:?} did not finish within {}s (hooks.timeout); it was killed",
                self.timeout.as_secs()
            )),
            _ = cancelled => Err(format!("{program:?} was stopped: the run was interrupted")),
        };
        // Whatever the hook started in its group goes with it once it is done or given up.
        if let Some(pid) = group.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        match outcome? {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(match (status.code(), status_signal(&status)) {
                (Some(code), _) => format!("{program:?} exited with status {code}"),
                (None, Some(sig)) => format!("{program:?} was killed by signal {sig}"),
                (None, None) => format!("{program:?} ended abnormally"),
            }),
            Err(e) => Err(format!("waiting for {program:?}: {e}")),
        }
    }
}

fn status_signal(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

/// Reads `r` to its end, handing each line (without its newline, cut at [`MAX_LINE`]) to `log`.
async fn lines(mut r: impl AsyncRead + Unpin, log: &(dyn Fn(String) + Send + Sync)) {
    let mut buf = [0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line, &mut cut, log);
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut cut, log);
    }
}

fn emit(line: &mut Vec<u8>, cut: &mut bool, log: &(dyn Fn(String) + Send + Sync)) {
    let mut text = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned();
    if *cut {
        text.push_str(" [cut]");
    }
    log(text);
    line.clear();
    *cut = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn runner<'a>(
        env: &'a [(String, String)],
        remove: &'a [String],
        timeout: Duration,
        log: &'a (dyn Fn(String) + Send + Sync),
    ) -> Runner<'a> {
        Runner {
            env,
            remove,
            dir: Path::new("/"),
            timeout,
            log,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_hook_sees_the_facts_but_not_the_secret_variables_and_its_lines_are_logged() {
        // HOME is in this process's environment; named as removed, the hook must not see it.
        assert!(
            std::env::var_os("HOME").is_some(),
            "the test needs HOME set"
        );
        let env = vec![("DTR_BACKUP_PLAN".to_owned(), "p1".to_owned())];
        let remove = vec!["HOME".to_owned()];
        let lines = Mutex::new(Vec::new());
        let log = |l: String| lines.lock().unwrap().push(l);
        let r = runner(&env, &remove, Duration::from_secs(10), &log);
        r.run(
            &sh("echo plan=$DTR_BACKUP_PLAN; echo home=${HOME-unset} >&2"),
            None,
        )
        .await
        .unwrap();
        let mut got = lines.into_inner().unwrap();
        got.sort();
        assert_eq!(got, ["home=unset", "plan=p1"]);
    }

    #[tokio::test]
    async fn failures_say_why() {
        let log = |_: String| {};
        let r = runner(&[], &[], Duration::from_millis(300), &log);
        let e = r.run(&sh("exit 3"), None).await.unwrap_err();
        assert!(e.contains("exited with status 3"), "{e}");
        let e = r.run(&sh("sleep 5"), None).await.unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        let e = r
            .run(&["/nonexistent/hook".to_owned()], None)
            .await
            .unwrap_err();
        assert!(e.contains("not found"), "{e}");
        let cancel = Cancel::new();
        cancel.cancel();
        let r = runner(&[], &[], Duration::from_secs(10), &log);
        let e = r.run(&sh("sleep 5"), Some(&cancel)).await.unwrap_err();
        assert!(e.contains("interrupted"), "{e}");
    }

    #[tokio::test]
    async fn a_timed_out_hook_takes_its_children_with_it() {
        let dir = std::env::temp_dir().join(format!("dtr-backup-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("late");
        let log = |_: String| {};
        let r = runner(&[], &[], Duration::from_millis(300), &log);
        let script = format!("(sleep 1; touch {}) & wait", marker.display());
        assert!(r.run(&sh(&script), None).await.is_err());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the hook's child was killed with it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn long_lines_are_cut() {
        let lines = Mutex::new(Vec::new());
        let log = |l: String| lines.lock().unwrap().push(l);
        let r = runner(&[], &[], Duration::from_secs(10), &log);
        r.run(
            &sh("head -c 10000 /dev/zero | tr '\\\\0' x; echo; echo end"),
            None,
        )
        .await
        .unwrap();
        let got = lines.into_inner().unwrap();
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(got[0].ends_with(" [cut]") && got[0].len() == MAX_LINE + 6);
        assert_eq!(got[1], "end");
    }
}
