//! `dtr-backup status PLAN... [--max-age DURATION]`: each plan's newest complete backup, how
//! its last run ended, an unfinished run, the lock. Exit 6 when a plan has no complete backup
//! younger than `--max-age`, so that cron and monitoring can page on staleness even when the
//! backup job itself never ran.

use std::path::PathBuf;
use std::time::Duration;

use super::Output;
use super::report::human_bytes;
use crate::exec::status;
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One or more plan files.
    #[arg(value_name = "PLAN", required = true)]
    pub plans: Vec<PathBuf>,
    /// Exit 6 unless every plan has a complete backup younger than this (`26h`, `2d`).
    #[arg(long, value_name = "DURATION", value_parser = crate::clock::parse_duration)]
    pub max_age: Option<Duration>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &Args) -> Exit {
    let mut worst = Exit::Ok;
    let mut docs = Vec::new();
    let plans = match super::load_plans(&args.plans) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    for plan in &plans {
        let st = match status::of(plan) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: plan {}: {e}", plan.name);
                worst = worst.worst(e.exit());
                continue;
            }
        };
        let fresh = match (args.max_age, &st.newest) {
            (None, _) => None,
            (Some(max), Some(n)) => Some(n.age_seconds <= max.as_secs() as i64),
            (Some(_), None) => Some(false),
        };
        if fresh == Some(false) {
            worst = worst.worst(Exit::Stale);
        }
        match args.output {
            Output::Json => {
                let mut doc = serde_json::to_value(&st).unwrap_or_default();
                doc["fresh"] = serde_json::json!(fresh);
                docs.push(doc);
            }
            Output::Text => print_text(&st, fresh, args.max_age),
        }
    }
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"format_version": 1, "plans": docs})
        );
    }
    worst
}

fn print_text(st: &status::PlanStatus, fresh: Option<bool>, max_age: Option<Duration>) {
    println!("plan {}: {} complete backup(s)", st.plan, st.backups);
    match &st.newest {
        Some(n) => println!(
            "  newest: {} finished {} ({} old), {}, replica {}, version {}",
            n.backup_id,
            n.finished_at,
            age(n.age_seconds),
            human_bytes(n.size),
            n.replica.as_deref().unwrap_or("-"),
            n.version.as_deref().unwrap_or("-")
        ),
        None => println!("  newest: none"),
    }
    match &st.last_run {
        Some(l) => println!(
            "  last run: {} (exit {}){}{}",
            l.status,
            l.exit_code,
            l.backup_id
                .as_deref()
                .map(|id| format!(", backup {id}"))
                .unwrap_or_default(),
            l.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        None => println!("  last run: none recorded"),
    }
    if let Some(id) = &st.unfinished {
        println!("  unfinished run {id}: the next `plan apply` resumes it");
    }
    if let Some(l) = &st.locked_by {
        let judged = match &st.lock_holder {
            Some(h) if h.state == "running" => ": running".to_owned(),
            Some(h) if h.state == "gone" => format!(
                ": stale, {}; the next run takes it over",
                h.why.as_deref().unwrap_or("gone")
            ),
            Some(h) => format!(
                ": cannot tell whether it runs ({})",
                h.why.as_deref().unwrap_or("unknown")
            ),
            None => String::new(),
        };
        println!(
            "  locked by {} on host {} (pid {}) since {}{judged}",
            l.operation, l.process.host, l.process.pid, l.started_at
        );
    }
    if let Some(r) = &st.read_only_left {
        println!(
            "  DTR at {} was left read-only by run {} (since {}): the next `plan apply` sets it writable",
            r.url,
            r.backup_id,
            crate::clock::rfc3339(r.set_at)
        );
    }
    if st.unreadable > 0 {
        println!(
            "  {} folder(s) with an unreadable manifest (see `backups list`)",
            st.unreadable
        );
    }
    if let (Some(false), Some(max)) = (fresh, max_age) {
        println!(
            "  STALE: no complete backup younger than {}",
            age(max.as_secs() as i64)
        );
    }
}

fn age(secs: i64) -> String {
    match secs {
        i64::MAX => "unknown".to_owned(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
