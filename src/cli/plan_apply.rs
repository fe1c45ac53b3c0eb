//! `dtr-backup plan apply PLAN... [--jobs N]`: run each plan, resuming an unfinished run of
//! it. Every plan is validated before any runs; each then runs under its own lock, and the
//! exit code is the most severe of theirs (`Exit::worst`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Output;
use super::report::{Human, JsonLines};
use crate::cancel::Cancel;
use crate::events::{Event, Reporter, RunStatus, Summary};
use crate::exec::{self, Options};
use crate::exit::Exit;
use futures_util::FutureExt;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One or more plan files. Every one is validated before any runs; then each runs under
    /// its own lock, and one failing does not stop the others.
    #[arg(value_name = "PLAN", required = true)]
    pub plans: Vec<PathBuf>,
    /// How many plans run at once.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Print what each step would do; touch nothing (no lock, no files, no containers).
    #[arg(long)]
    pub dry_run: bool,
    /// Discard an unfinished run of the plan and start a new one.
    #[arg(long)]
    pub fresh: bool,
    /// Wait this long for another run's lock (e.g. `30s`, `5m`, `1h`) instead of exiting 4.
    #[arg(long, value_name = "DURATION", value_parser = crate::clock::parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// Back up another replica than the last complete backup's (restore needs care then).
    #[arg(long)]
    pub allow_replica_change: bool,
    /// Read every repository's files, even those listed as the last run saw them.
    #[arg(long)]
    pub read_all: bool,
    /// `json`: NDJSON events on stdout (each with `plan`), and nothing else there.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Only warnings, errors and the final line.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &Args) -> Exit {
    // Every plan first: if one is invalid, none runs.
    let mut plans = Vec::new();
    let mut invalid = Exit::Ok;
    for path in &args.plans {
        match super::load_plan(path) {
            Ok(plan) => match std::fs::read_to_string(path) {
                Ok(source) => plans.push((plan, source)),
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", path.display());
                    invalid = invalid.worst(Exit::Usage);
                }
            },
            Err(exit) => {
                if args.output == Output::Json {
                    JsonLines::default().emit(&Event::RunFinished {
                        status: RunStatus::InvalidPlan,
                        backup_id: None,
                        exit_code: exit.code(),
                        error: Some(format!("{} is not a valid plan", path.display())),
                        summary: Summary::default(),
                    });
                }
                invalid = invalid.worst(exit);
            }
        }
    }
    if invalid != Exit::Ok {
        if args.plans.len() > 1 {
            eprintln!("error: no plan was run: every plan must be valid first");
        }
        return invalid;
    }
    if args.dry_run {
        for (plan, _) in &plans {
            dry_run(plan, args.output);
        }
        return Exit::Ok;
    }
    let opts = Options {
        fresh: args.fresh,
        lock_timeout: args.lock_timeout,
        allow_replica_change: args.allow_replica_change,
        read_all: args.read_all,
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let many = plans.len() > 1;
    let count = plans.len();
    let jobs = usize::from(args.jobs).min(plans.len());
    let outcomes = runtime.block_on(async {
        let cancel = Cancel::new();
        super::cancel_on_signals(cancel.clone());
        let turns = Arc::new(tokio::sync::Semaphore::new(jobs));
        let mut runs = tokio::task::JoinSet::new();
        for (i, (plan, source)) in plans.into_iter().enumerate() {
            let name = plan.name.to_string();
            let reporter: Arc<dyn Reporter> = match args.output {
                Output::Json => Arc::new(JsonLines::for_plan(&name)),
                Output::Text if many => Arc::new(Human::for_plan(args.quiet, &name, jobs == 1)),
                Output::Text => Arc::new(Human::new(args.quiet)),
            };
            // Its own token: Ctrl-C stops every plan, a lost lock only its own.
            let (opts, cancel, turns) = (opts.clone(), cancel.child(), turns.clone());
            runs.spawn(async move {
                let Ok(_turn) = turns.acquire_owned().await else {
                    return (i, name, Err(Exit::Interrupted), String::new());
                };
                if cancel.is_cancelled() {
                    return (
                        i,
                        name,
                        Err(Exit::Interrupted),
                        "not started: interrupted".into(),
                    );
                }
                let run = exec::apply(Arc::new(plan), &source, &opts, reporter, cancel);
                // A panic is this plan's failure, never a silent success of the whole.
                match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                    Ok(Ok(id)) => (i, name, Ok(()), id),
                    Ok(Err(e)) => (i, name, Err(e.exit()), e.to_string()),
                    Err(_) => (
                        i,
                        name,
                        Err(Exit::RunFailed),
                        "dtr-backup failed unexpectedly (a panic, reported above); its journal is kept for the next run".into(),
                    ),
                }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = runs.join_next().await {
            if let Ok(o) = done {
                outcomes.push(o);
            }
        }
        outcomes.sort_by_key(|o| o.0);
        outcomes
    });
    // A plan without an outcome (its task was lost) is a failure, never a silent success.
    let mut worst = if outcomes.len() < count {
        Exit::RunFailed
    } else {
        Exit::Ok
    };
    for (_, name, outcome, what) in &outcomes {
        let exit = outcome.err().unwrap_or(Exit::Ok);
        worst = worst.worst(exit);
        if many && args.output == Output::Text {
            match outcome {
                Ok(()) => println!("plan {name}: ok, backup {what}"),
                Err(e) => println!("plan {name}: failed, exit {}: {what}", e.code()),
            }
        }
    }
    worst
}

fn dry_run(plan: &crate::plan::Plan, output: Output) -> Exit {
    let steps = exec::dry_run(plan);
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "format_version": 1,
                "dry_run": true,
                "plan": plan.name.to_string(),
                "steps": steps.iter().map(|(s, actions)| serde_json::json!({
                    "id": s.id, "kind": s.kind, "depends_on": s.depends_on, "actions": actions,
                })).collect::<Vec<_>>(),
                "around": crate::ops::describe(plan),
            });
            println!("{doc}");
        }
        Output::Text => {
            println!("dry run of plan {}: nothing will be changed", plan.name);
            for (i, (step, actions)) in steps.iter().enumerate() {
                println!("\n{:>2}. {} ({})", i + 1, step.id, step.kind.as_str());
                for a in actions {
                    println!("      {a}");
                }
            }
            let around = crate::ops::describe(plan);
            if !around.is_empty() {
                println!("\naround the run:");
                for a in around {
                    println!("      {a}");
                }
            }
        }
    }
    Exit::Ok
}
