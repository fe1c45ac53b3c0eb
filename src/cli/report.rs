//! Printing run events: NDJSON on stdout (`--output json`), or lines and progress bars on
//! stderr for people.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::events::{Event, Reporter, RunStatus};

/// One JSON object per line on stdout, and nothing else there. Each carries `plan` when the
/// reporter is a plan's (many plans may run in one invocation).
#[derive(Default)]
pub struct JsonLines {
    plan: Option<String>,
}

impl JsonLines {
    pub fn for_plan(plan: &str) -> JsonLines {
        JsonLines {
            plan: Some(plan.to_owned()),
        }
    }
}

impl Reporter for JsonLines {
    fn emit(&self, event: &Event) {
        let Ok(mut doc) = serde_json::to_value(event) else {
            return;
        };
        if let (Some(plan), Some(o)) = (&self.plan, doc.as_object_mut()) {
            o.entry("plan").or_insert_with(|| plan.clone().into());
        }
        if let Ok(line) = serde_json::to_string(&doc) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Human output on stderr; the final summary line on stdout.
pub struct Human {
    quiet: bool,
    /// A restore's run (not a backup's): its own start line, no backup summary at the end.
    restore: bool,
    bars: bool,
    bar: Mutex<Option<ProgressBar>>,
    /// Without a terminal, progress lines are printed at most this often.
    last_line: Mutex<Option<std::time::Instant>>,
    /// Put before each line (`[plan] `) when several plans report at once.
    prefix: String,
}

impl Human {
    pub fn new(quiet: bool) -> Human {
        Human {
            quiet,
            restore: false,
            bars: !quiet && std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
            last_line: Mutex::new(None),
            prefix: String::new(),
        }
    }

    /// One of several plans in one invocation: its lines start with `[plan] `; with
    /// `bars: false` (plans running at once) progress is printed as lines.
    pub fn for_plan(quiet: bool, plan: &str, bars: bool) -> Human {
        let mut h = Human::new(quiet);
        h.prefix = format!("[{plan}] ");
        h.bars &= bars;
        h
    }

    /// For `restore`, which prints its own final line.
    pub fn for_restore(quiet: bool) -> Human {
        Human {
            restore: true,
            ..Human::new(quiet)
        }
    }

    fn line(&self, text: &str) {
        let text = format!("{}{text}", self.prefix);
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish_bar(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(bar) = b.take()
        {
            bar.finish_and_clear();
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Reporter for Human {
    fn emit(&self, event: &Event) {
        match event {
            Event::Warning { message } => self.line(&format!("warning: {message}")),
            Event::StepFailed { step, error } => {
                self.finish_bar();
                self.line(&format!("error: step {step} failed: {error}"));
            }
            Event::RunFinished {
                status,
                backup_id,
                error,
                summary,
                ..
            } => {
                self.finish_bar();
                match (status, backup_id) {
                    (RunStatus::Ok, _) if self.restore => {}
                    (RunStatus::Ok, Some(id)) => println!(
                        "{}backup {id} complete: {} artifacts, {}, {} steps run, {} skipped, {:.1} s",
                        self.prefix,
                        summary.artifacts,
                        human_bytes(summary.bytes),
                        summary.steps_run,
                        summary.steps_skipped,
                        summary.duration_ms as f64 / 1000.0
                    ),
                    _ => {
                        if let Some(e) = error {
                            eprintln!("{}error: {e}", self.prefix);
                        }
                    }
                }
            }
            _ if self.quiet => {}
            Event::RunStarted {
                plan,
                backup_id,
                resumed,
                ..
            } => self.line(&if self.restore {
                format!("restoring backup {backup_id} of plan {plan}")
            } else {
                format!(
                    "{} run {backup_id} of plan {plan}",
                    if *resumed { "resuming" } else { "starting" }
                )
            }),
            Event::StepStarted { step, .. } => {
                self.line(&format!("▶ {step}"));
                if self.bars
                    && let Ok(mut b) = self.bar.lock()
                {
                    let bar = ProgressBar::new(0);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "  {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_bar}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    *b = Some(bar);
                }
            }
            Event::StepProgress {
                bytes,
                total_bytes,
                step,
                objects,
            } => {
                if let Ok(b) = self.bar.lock() {
                    match b.as_ref() {
                        Some(bar) => {
                            match total_bytes {
                                Some(t) => bar.set_length(*t),
                                // No total: what is done and how fast, without a bar or ETA.
                                None if bar.length() == Some(0) => {
                                    bar.set_length(u64::MAX);
                                    bar.set_style(
                                        ProgressStyle::with_template(
                                            "  {spinner} {bytes} {binary_bytes_per_sec} {msg}",
                                        )
                                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                                    );
                                }
                                None => {}
                            }
                            if let Some(n) = objects {
                                bar.set_message(format!("{n} objects"));
                            }
                            bar.set_position(*bytes);
                        }
                        None => {
                            let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                            if last.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                                *last = Some(std::time::Instant::now());
                                eprintln!(
                                    "{}  {step}: {}{}",
                                    self.prefix,
                                    human_bytes(*bytes),
                                    total_bytes
                                        .map(|t| format!(" of {}", human_bytes(t)))
                                        .unwrap_or_default()
                                );
                            }
                        }
                    }
                }
            }
            Event::StepSkipped { step, reason } => {
                self.line(&format!("↷ {step}: skipped, {reason}"))
            }
            Event::StepFinished {
                step,
                duration_ms,
                artifacts,
            } => {
                self.finish_bar();
                let what: Vec<String> = artifacts
                    .iter()
                    .map(|a| format!("{} ({})", a.path, human_bytes(a.size)))
                    .collect();
                self.line(&format!(
                    "✓ {step} {:.1} s{}{}",
                    *duration_ms as f64 / 1000.0,
                    if what.is_empty() { "" } else { ": " },
                    what.join(", ")
                ));
            }
            Event::Log { step, message } => self.line(&format!("  {step}: {message}")),
            Event::Check {
                step,
                name,
                ok,
                detail,
            } => self.line(&format!(
                "  {step}: {} {name}: {detail}",
                if *ok { "PASS" } else { "FAIL" }
            )),
            Event::ObjectsCopied {
                step,
                copied,
                already_present,
                bytes_copied,
                small_objects,
                ..
            } => self.line(&format!(
                "  {step}: {copied} new blobs copied ({}), {already_present} already in the blob store, {small_objects} small objects archived",
                human_bytes(*bytes_copied)
            )),
        }
    }
}
