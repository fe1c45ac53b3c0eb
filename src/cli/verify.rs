//! `dtr-backup verify PLAN`: prove a stored backup whole, decryptable and restorable.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;

use super::Output;
use crate::cancel::Cancel;
use crate::events::{Event, Reporter};
use crate::exit::Exit;
use crate::manifest::Which;
use crate::verify::{self, Check, ReadData};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReadDataArg {
    /// Layout, sizes, sha256 and decryption; blob contents are not hashed.
    #[default]
    Layout,
    /// Also hash a fixed sample of the blobs (`--sample-percent`).
    Sample,
    /// Also hash every blob against its digest.
    Full,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One or more plan files (several: `--backup latest` only; JSON: one document per plan,
    /// one per line).
    #[arg(value_name = "PLAN", required = true)]
    pub plans: Vec<PathBuf>,
    /// The backup id, or `latest`.
    #[arg(long, default_value = "latest", value_name = "ID")]
    pub backup: String,
    #[arg(long, value_enum, default_value_t)]
    pub read_data: ReadDataArg,
    /// With `--read-data sample`: the share of blobs hashed (same blobs every time).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub sample_percent: u8,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &Args) -> Exit {
    let plans = match super::load_plans(&args.plans) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    if plans.len() > 1 && args.backup != "latest" {
        eprintln!(
            "error: --backup {} names one plan's backup; with several plans, verify the latest of each (the default)",
            args.backup
        );
        return Exit::Usage;
    }
    let mut worst = Exit::Ok;
    for (plan, path) in plans.iter().zip(&args.plans) {
        worst = worst.worst(verify_one(plan, path, args));
    }
    worst
}

fn verify_one(plan: &crate::plan::Plan, path: &std::path::Path, args: &Args) -> Exit {
    let fail = |msg: String, exit: Exit| {
        match args.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"format_version": 1, "plan": plan.name.to_string(), "ok": false, "error": msg, "checks": []})
            ),
            Output::Text => eprintln!("error: {msg}"),
        }
        exit
    };
    let which: Which = match args.backup.parse() {
        Ok(w) => w,
        Err(e) => {
            return fail(
                format!(
                    "{e}: `dtr-backup backups list {}` shows the ids",
                    path.display()
                ),
                Exit::Usage,
            );
        }
    };
    let read_data = match args.read_data {
        ReadDataArg::Layout => ReadData::Layout,
        ReadDataArg::Sample => ReadData::Sample(args.sample_percent),
        ReadDataArg::Full => ReadData::Full,
    };
    let warn = |w: String| eprintln!("warning: {w}");
    // On a terminal, a bar of what is read (stderr); JSON stays one document on stdout.
    let bar: Option<Arc<dyn Reporter>> = (args.output == Output::Text
        && std::io::stderr().is_terminal())
    .then(|| Arc::new(super::report::Human::new(false)) as Arc<dyn Reporter>);
    if let Some(r) = &bar {
        r.emit(&Event::StepStarted {
            step: "verify".into(),
            kind: "verify".into(),
        });
    }
    let started = std::time::Instant::now();
    let report = verify::stored(plan, &which, read_data, &Cancel::new(), &warn, bar.clone());
    if let Some(r) = &bar {
        r.emit(&Event::StepFinished {
            step: "verify".into(),
            duration_ms: started.elapsed().as_millis() as u64,
            artifacts: vec![],
        });
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(e.to_string(), e.exit()),
    };
    let (id, checks) = (&report.backup_id, &report.checks);
    let ok = report.ok();
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"format_version": 1, "plan": plan.name.to_string(), "backup_id": id, "ok": ok, "checks": checks})
        ),
        Output::Text => {
            println!("verify {} backup {id}", plan.name);
            for c in checks {
                println!(
                    "  {} {}: {}",
                    if c.ok { "PASS" } else { "FAIL" },
                    c.name,
                    short(&c.detail)
                );
            }
            let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
            if failed.is_empty() {
                println!("all {} checks passed", checks.len());
            } else {
                println!("{} of {} checks failed", failed.len(), checks.len());
                for c in failed.iter().take(3) {
                    eprintln!("error: {}: {}", c.name, c.detail);
                }
            }
        }
    }
    if ok { Exit::Ok } else { Exit::VerifyFailed }
}

fn short(s: &str) -> String {
    if s.chars().count() > 110 {
        format!("{}…", s.chars().take(110).collect::<String>())
    } else {
        s.to_owned()
    }
}
