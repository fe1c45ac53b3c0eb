//! `dtr-backup plan apply PLAN`: run the plan, resuming an unfinished run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Output;
use super::report::{Human, JsonLines};
use crate::cancel::Cancel;
use crate::events::{Event, Reporter, RunStatus, Summary};
use crate::exec::{self, Options};
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Print what each step would do; touch nothing (no lock, no files, no containers).
    #[arg(long)]
    pub dry_run: bool,
    /// Discard an unfinished run of this plan and start a new one.
    #[arg(long)]
    pub fresh: bool,
    /// Wait this long for another run's lock (e.g. `30s`, `5m`, `1h`) instead of exiting 4.
    #[arg(long, value_name = "DURATION", value_parser = crate::clock::parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// Back up another replica than the last complete backup's (restore needs care then).
    #[arg(long)]
    pub allow_replica_change: bool,
    /// `json`: NDJSON events on stdout, and nothing else there.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Only warnings, errors and the final line.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &Args) -> Exit {
    let reporter: Arc<dyn Reporter> = match args.output {
        Output::Json => Arc::new(JsonLines),
        Output::Text => Arc::new(Human::new(args.quiet)),
    };
    let plan = match super::load_plan(&args.plan) {
        Ok(plan) => plan,
        Err(exit) => {
            reporter.emit(&Event::RunFinished {
                status: RunStatus::InvalidPlan,
                backup_id: None,
                exit_code: exit.code(),
                error: Some(format!("{} is not a valid plan", args.plan.display())),
                summary: Summary::default(),
            });
            return exit;
        }
    };
    if args.dry_run {
        return dry_run(&plan, args.output);
    }
    let source = match std::fs::read_to_string(&args.plan) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.plan.display());
            return Exit::Usage;
        }
    };
    let opts = Options {
        fresh: args.fresh,
        lock_timeout: args.lock_timeout,
        allow_replica_change: args.allow_replica_change,
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let cancel = Cancel::new();
        super::cancel_on_signals(cancel.clone());
        match exec::apply(Arc::new(plan), &source, &opts, reporter, cancel).await {
            Ok(_) => Exit::Ok,
            Err(e) => e.exit(),
        }
    })
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
