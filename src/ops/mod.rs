//! Operations around a run: the plan's hooks, its notifiers and its metrics.
//!
//! [`Operations`] is made once per `plan apply` by `exec::apply_to`, which calls it at four
//! points: `started` (healthchecks' start signal), `before` (once the lock is held and the
//! backup id known, before the first step: `hooks.before`), `after` (`hooks.after` on
//! success, `hooks.on_error` otherwise) and `finished` (the textfile, then the outcome to each
//! notifier). It sees the run only through the events it forwards ([`Operations::reporter`]),
//! of which it keeps the last lines for healthchecks' failure body. Nothing here fails a
//! backup but a `before` or `after` hook: an unreachable notifier or an unwritable textfile is
//! a warning.

pub mod hooks;
pub mod metrics;
pub mod notify;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::events::{Event, Reporter, RunStatus};
use crate::plan::{Plan, SecretRef};

/// Lines of the run's log kept for a failure notification.
const TAIL_LINES: usize = 40;

/// The plan's hooks, notifiers and metrics for one run.
pub struct Operations {
    plan: Arc<Plan>,
    /// The caller's reporter behind a [`Tee`] that keeps `tail`.
    reporter: Arc<dyn Reporter>,
    tail: Arc<Tail>,
    notifiers: Vec<notify::Notifier>,
    client: Option<reqwest::Client>,
    /// The run's backup id, once known.
    backup_id: Mutex<Option<String>>,
}

/// How a run ended, as hooks and notifiers see it.
struct Outcome<'a> {
    status: RunStatus,
    exit_code: u8,
    error: Option<&'a str>,
}

impl Operations {
    /// Resolves the notifiers' URLs (one that cannot be resolved is a warning and is left
    /// out). `reporter` receives the run's events.
    pub fn new(plan: Arc<Plan>, reporter: Arc<dyn Reporter>) -> Operations {
        let mut notifiers = Vec::new();
        for cfg in &plan.notify {
            match notify::Notifier::resolve(cfg) {
                Ok(n) => notifiers.push(n),
                Err(e) => reporter.emit(&Event::Warning {
                    message: format!(
                        "the {} notifier ({}) is left out of this run: {e}",
                        cfg.kind.as_str(),
                        cfg.url.redacted()
                    ),
                }),
            }
        }
        let client = if notifiers.is_empty() {
            None
        } else {
            match notify::client() {
                Ok(c) => Some(c),
                Err(e) => {
                    reporter.emit(&Event::Warning {
                        message: format!("notifiers are left out of this run: {e}"),
                    });
                    notifiers.clear();
                    None
                }
            }
        };
        let tail = Arc::new(Tail::default());
        Operations {
            plan,
            reporter: Arc::new(Tee {
                inner: reporter,
                tail: tail.clone(),
            }),
            tail,
            notifiers,
            client,
            backup_id: Mutex::new(None),
        }
    }

    /// The reporter the run emits to: the caller's, and the tail kept here.
    pub fn reporter(&self) -> Arc<dyn Reporter> {
        self.reporter.clone()
    }

    fn warn(&self, message: String) {
        self.reporter.emit(&Event::Warning { message });
    }

    /// The run starts: healthchecks' start signal.
    pub async fn started(&self) {
        let Some(client) = &self.client else { return };
        for n in self.notifiers.iter().filter(|n| n.sends_start()) {
            if let Err(e) = n.start(client).await {
                self.warn(format!("the {} was not told of the start: {e}", n.label));
            }
        }
    }

    /// The lock is held and the backup id known: `hooks.before`, in order; the first that
    /// fails fails the run.
    pub async fn before(&self, backup_id: &str, cancel: &Cancel) -> Result<()> {
        *self.backup_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(backup_id.to_owned());
        let env = self.env(None);
        for argv in &self.plan.hooks.before {
            let ran = self.hook("before", argv, &env, Some(cancel)).await;
            if cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            ran.map_err(|e| {
                Error::hook(format!(
                    "the before hook {e}; nothing was written. Fix the hook or its command in `hooks.before`, then run again"
                ))
            })?;
        }
        Ok(())
    }

    /// The run ended with `result`: `hooks.after` on success (the first that fails turns the
    /// result into an error; the backup stays), `hooks.on_error` otherwise (each runs; those
    /// that fail are warnings).
    pub async fn after(&self, result: Result<String>) -> Result<String> {
        let e = match result {
            Ok(id) => match self.after_hooks(&id).await {
                Ok(()) => return Ok(id),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let message = e.to_string();
        let env = self.env(Some(&Outcome {
            status: RunStatus::of(&e),
            exit_code: e.exit().code(),
            error: Some(&message),
        }));
        for argv in &self.plan.hooks.on_error {
            if let Err(why) = self.hook("on_error", argv, &env, None).await {
                self.warn(format!("the on_error hook {why}"));
            }
        }
        Err(e)
    }

    async fn after_hooks(&self, id: &str) -> Result<()> {
        let env = self.env(Some(&Outcome {
            status: RunStatus::Ok,
            exit_code: 0,
            error: None,
        }));
        for argv in &self.plan.hooks.after {
            self.hook("after", argv, &env, None).await.map_err(|e| {
                Error::hook(format!(
                    "the after hook {e}; the backup {id} is complete and stays. Fix the hook in `hooks.after`"
                ))
            })?;
        }
        Ok(())
    }

    /// The run is over (`event` is its `run_finished`): the textfile, then the notifiers.
    pub async fn finished(&self, event: &Event, metrics: Option<metrics::RunMetrics>) {
        if let (Some(path), Some(m)) = (&self.plan.metrics_textfile, metrics)
            && let Err(e) = metrics::record(path, &m)
        {
            self.warn(format!(
                "could not write the metrics textfile {}: {e}; check that its folder exists and is writable",
                path.display()
            ));
        }
        let Some(client) = &self.client else { return };
        let Event::RunFinished {
            status,
            backup_id,
            error,
            summary,
            ..
        } = event
        else {
            return;
        };
        let ok = *status == RunStatus::Ok;
        let line = match (ok, backup_id, error) {
            (true, Some(id), _) => format!(
                "dtr-backup: plan {} ok: backup {id}, {} bytes, {} steps run, {:.1}s",
                self.plan.name,
                summary.bytes,
                summary.steps_run,
                summary.duration_ms as f64 / 1000.0
            ),
            (_, _, e) => format!(
                "dtr-backup: plan {} {}: {}",
                self.plan.name,
                status.word(),
                e.as_deref().unwrap_or("no message")
            ),
        };
        let tail = self.tail.text();
        let json = serde_json::to_string(event).unwrap_or_default();
        for n in self.notifiers.iter().filter(|n| n.sends(ok)) {
            if let Err(e) = n.finish(client, ok, &line, &tail, &json).await {
                self.warn(format!("the {} was not told of the outcome: {e}", n.label));
            }
        }
    }

    /// The `DTR_BACKUP_*` variables of a hook; `outcome` once the run has ended.
    fn env(&self, outcome: Option<&Outcome>) -> Vec<(String, String)> {
        let id = self
            .backup_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let mut env = vec![
            ("DTR_BACKUP_PLAN".to_owned(), self.plan.name.to_string()),
            (
                "DTR_BACKUP_PLAN_FILE".to_owned(),
                self.plan.file.display().to_string(),
            ),
            ("DTR_BACKUP_ID".to_owned(), id),
        ];
        if let Some(o) = outcome {
            env.push(("DTR_BACKUP_STATUS".to_owned(), o.status.word().to_owned()));
            env.push(("DTR_BACKUP_EXIT_CODE".to_owned(), o.exit_code.to_string()));
            env.push((
                "DTR_BACKUP_ERROR".to_owned(),
                o.error.unwrap_or("").to_owned(),
            ));
        }
        env
    }

    async fn hook(
        &self,
        stage: &str,
        argv: &[String],
        env: &[(String, String)],
        cancel: Option<&Cancel>,
    ) -> std::result::Result<(), String> {
        let reporter = &self.reporter;
        let step = format!("hooks.{stage}");
        let program = argv.first().cloned().unwrap_or_default();
        let log = |line: String| {
            reporter.emit(&Event::Log {
                step: step.clone(),
                message: format!("{program}: {line}"),
            })
        };
        let remove = secret_variables(&self.plan);
        let dir = self
            .plan
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let runner = hooks::Runner {
            env,
            remove: &remove,
            dir,
            timeout: self.plan.hooks.timeout,
            log: &log,
        };
        reporter.emit(&Event::Log {
            step: step.clone(),
            message: format!("running {}", argv.join(" ")),
        });
        runner.run(argv, cancel).await
    }
}

/// What a plan runs around `plan apply`, one line each, for `--dry-run` (URLs redacted).
pub fn describe(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let h = &plan.hooks;
    for (stage, cmds) in [
        ("before the first step", &h.before),
        ("once the backup is published", &h.after),
        ("if the run fails", &h.on_error),
    ] {
        for argv in cmds.iter() {
            out.push(format!(
                "{stage}: run hook `{}` (at most {}s)",
                argv.join(" "),
                h.timeout.as_secs()
            ));
        }
    }
    for n in &plan.notify {
        let when = match (n.on_success, n.on_failure) {
            (true, true) => "success and failure",
            (true, false) => "success",
            _ => "failure",
        };
        out.push(format!(
            "notify {} {} of {when}",
            n.kind.as_str(),
            n.url.redacted()
        ));
    }
    if let Some(p) = &plan.metrics_textfile {
        out.push(format!("write the metrics textfile {}", p.display()));
    }
    if plan.dtr.read_only_window
        && let Some(url) = &plan.dtr.external_url
    {
        out.push(format!(
            "set DTR at {} read-only from before metadata until after images (as {:?}), then writable again",
            url.as_str(),
            plan.ucp.as_ref().map_or("", |u| u.username.as_str())
        ));
    }
    out
}

/// The environment variables the plan reads secrets from: kept from hooks.
fn secret_variables(plan: &Plan) -> Vec<String> {
    let mut refs: Vec<&SecretRef> = Vec::new();
    if let crate::plan::EncryptionCfg::Passphrase(r) = &plan.encryption {
        refs.push(r);
    }
    if let Some(u) = &plan.ucp {
        refs.push(&u.password);
    }
    refs.extend(plan.verify_key.iter());
    refs.extend(plan.verify_key_passphrase.iter());
    for s3 in [
        plan.images.as_ref().and_then(|i| match i {
            crate::plan::ImagesCfg::S3(s) => Some(s),
            _ => None,
        }),
        match &plan.destination {
            crate::plan::DestinationCfg::S3(s) => Some(s),
            _ => None,
        },
    ]
    .into_iter()
    .flatten()
    {
        refs.extend(s3.access_key_id.iter());
        refs.extend(s3.secret_access_key.iter());
    }
    for n in &plan.notify {
        if let crate::plan::UrlSource::Secret(r) = &n.url {
            refs.push(r);
        }
    }
    let mut names: Vec<String> = refs
        .into_iter()
        .filter_map(|r| match r {
            SecretRef::Env(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    // The standard AWS chain's variables too, when S3 credentials come from it.
    names.extend(
        ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    names.sort();
    names.dedup();
    names
}

/// The last lines of a run's log, as text.
#[derive(Default)]
struct Tail(Mutex<VecDeque<String>>);

impl Tail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// Forwards every event and keeps a line of those worth reading after a failure.
struct Tee {
    inner: Arc<dyn Reporter>,
    tail: Arc<Tail>,
}

impl Reporter for Tee {
    fn emit(&self, event: &Event) {
        let line = match event {
            Event::RunStarted {
                backup_id, resumed, ..
            } => Some(format!(
                "run {backup_id} {}",
                if *resumed { "resumed" } else { "started" }
            )),
            Event::StepStarted { step, .. } => Some(format!("step {step} started")),
            Event::StepFinished {
                step, duration_ms, ..
            } => Some(format!("step {step} done in {duration_ms} ms")),
            Event::StepFailed { step, error } => Some(format!("step {step} failed: {error}")),
            Event::Warning { message } => Some(format!("warning: {message}")),
            Event::Log { step, message } => Some(format!("{step}: {message}")),
            Event::Check {
                name, ok, detail, ..
            } => Some(format!(
                "check {name}: {} {detail}",
                if *ok { "ok" } else { "FAILED" }
            )),
            _ => None,
        };
        if let Some(line) = line {
            self.tail.push(line);
        }
        self.inner.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let t = Tail::default();
        for i in 0..100 {
            t.push(format!("l{i}"));
        }
        let text = t.text();
        assert!(text.starts_with("l60\n") && text.ends_with("l99"), "{text}");
    }

    #[test]
    fn secret_variables_are_the_plans_env_references() {
        let source = "version: 1\nname: p\nparts: [images]\n\
            images: {type: path, path: /r}\n\
            destination: {type: local, path: /d}\n\
            encryption: {type: passphrase, passphrase: {env: PASS}}\n\
            notify: [{type: webhook, url: {env: HOOK_URL}}, {type: healthchecks, url: {file: /u}}]\n";
        let plan = crate::plan::load_str(std::path::Path::new("p.yaml"), source)
            .plan
            .expect("a valid plan");
        let names = secret_variables(&plan);
        assert!(names.contains(&"PASS".to_owned()), "{names:?}");
        assert!(names.contains(&"HOOK_URL".to_owned()), "{names:?}");
        assert!(names.contains(&"AWS_SECRET_ACCESS_KEY".to_owned()));
    }
}
