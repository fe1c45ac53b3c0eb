//! `dtr-backup restore PLAN`: bring a backup's image content back, or drill it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use super::Output;
use super::report::{Human, JsonLines};
use crate::cancel::Cancel;
use crate::events::{Event, Reporter, RunStatus, Summary};
use crate::exec::restore::{self, Only, RestoreOptions};
use crate::exit::Exit;
use crate::manifest::Which;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnlyArg {
    /// The image content only.
    Images,
    /// The metadata only, through DTR's restore (the image content already in place).
    Metadata,
    /// UCP's backup only, through the UCP image's restore (UCP uninstalled first).
    Ucp,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// The backup id, or `latest` (the newest complete backup).
    #[arg(long, default_value = "latest", value_name = "ID")]
    pub backup: String,
    /// Restore only these parts of the backup (`--only images,metadata`, or the flag
    /// repeated); default: every part it holds.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<OnlyArg>,
    /// Restore the image content into PATH (absent or empty) instead of the plan's source;
    /// PATH then holds the registry root (`PATH/docker/registry/v2/...`).
    #[arg(long, value_name = "PATH")]
    pub images_to: Option<PathBuf>,
    /// Restore into a scratch folder, check what a registry could serve from it, remove it.
    /// Changes nothing live; exit 0 only when the backup restores whole.
    #[arg(long)]
    pub drill: bool,
    /// Print what each step would do; touch nothing (no lock, no files).
    #[arg(long)]
    pub dry_run: bool,
    /// Abandon an unfinished restore (its staging folder removed; what it already put in
    /// place stays) and start a new one, instead of finishing it.
    #[arg(long)]
    pub fresh: bool,
    /// Wait this long for another run's lock (e.g. `30s`, `5m`, `1h`) instead of exiting 4.
    #[arg(long, value_name = "DURATION", value_parser = crate::clock::parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// `json`: NDJSON events on stdout, and nothing else there.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Only warnings, errors and the final line.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &Args) -> Exit {
    let reporter: Arc<dyn Reporter> = match args.output {
        Output::Json => Arc::new(JsonLines::default()),
        Output::Text => Arc::new(Human::for_restore(args.quiet)),
    };
    let finish_early = |exit: Exit, error: String| {
        match args.output {
            Output::Json => reporter.emit(&Event::RunFinished {
                status: if exit == Exit::InvalidPlan {
                    RunStatus::InvalidPlan
                } else {
                    RunStatus::Failed
                },
                backup_id: None,
                exit_code: exit.code(),
                error: Some(error),
                summary: Summary::default(),
            }),
            Output::Text => eprintln!("error: {error}"),
        }
        exit
    };
    let plan = match super::load_plan(&args.plan) {
        Ok(plan) => plan,
        Err(exit) => {
            return finish_early(exit, format!("{} is not a valid plan", args.plan.display()));
        }
    };
    let which: Which = match args.backup.parse() {
        Ok(w) => w,
        Err(e) => {
            return finish_early(
                Exit::Usage,
                format!(
                    "{e}: `dtr-backup backups list {}` shows the ids",
                    args.plan.display()
                ),
            );
        }
    };
    let opts = RestoreOptions {
        which,
        only: args
            .only
            .iter()
            .map(|o| match o {
                OnlyArg::Images => Only::Images,
                OnlyArg::Metadata => Only::Metadata,
                OnlyArg::Ucp => Only::Ucp,
            })
            .collect(),
        images_to: args.images_to.clone(),
        drill: args.drill,
        lock_timeout: args.lock_timeout,
        fresh: args.fresh,
    };
    if args.dry_run {
        return match restore::dry_run(&plan, &opts) {
            Ok(steps) => {
                print_dry_run(&plan, &steps, args.output);
                Exit::Ok
            }
            Err(e) => finish_early(e.exit(), e.to_string()),
        };
    }
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let cancel = Cancel::new();
        super::cancel_on_signals(cancel.clone());
        match restore::restore(Arc::new(plan), &opts, reporter, cancel).await {
            Ok(report) => {
                if args.output == Output::Text {
                    let r = &report.restored;
                    if report.drill {
                        println!(
                            "drill of backup {} passed: {} files ({} bytes) restored into a scratch folder, {} checked against their digests, removed again",
                            report.backup_id, r.files, r.bytes, r.checked
                        );
                    } else {
                        let said: Vec<String> = report
                            .parts
                            .iter()
                            .map(|p| match p.as_str() {
                                "images" => format!(
                                    "the image content into {} ({} files, {} bytes, {} checked against their digests)",
                                    report.target.display(),
                                    r.files,
                                    r.bytes,
                                    r.checked
                                ),
                                "ucp" => "UCP (through the UCP image's restore)".to_owned(),
                                "metadata" => "DTR's metadata (through DTR's restore)".to_owned(),
                                other => other.to_owned(),
                            })
                            .collect();
                        println!(
                            "restored backup {}: {}",
                            report.backup_id,
                            said.join("; then ")
                        );
                    }
                }
                Exit::Ok
            }
            Err(e) => e.exit(),
        }
    })
}

fn print_dry_run(plan: &crate::plan::Plan, steps: &[(String, Vec<String>)], output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "format_version": 1,
                "dry_run": true,
                "plan": plan.name.to_string(),
                "steps": steps.iter().map(|(id, actions)| serde_json::json!({
                    "id": id, "actions": actions,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Text => {
            println!(
                "dry run of restore of plan {}: nothing will be changed",
                plan.name
            );
            for (i, (id, actions)) in steps.iter().enumerate() {
                println!("\n{:>2}. {id}", i + 1);
                for a in actions {
                    println!("      {a}");
                }
            }
        }
    }
}
