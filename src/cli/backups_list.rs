//! `dtr-backup backups list PLAN...`: the complete backups at each plan's destination.

use std::path::PathBuf;

use super::Output;
use super::report::human_bytes;
use crate::exit::Exit;
use crate::manifest::{self, ArtifactKind};
use crate::storage;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One or more plan files (JSON: one document per plan, one per line).
    #[arg(value_name = "PLAN", required = true)]
    pub plans: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &Args) -> Exit {
    let plans = match super::load_plans(&args.plans) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let many = plans.len() > 1;
    let mut worst = Exit::Ok;
    for plan in &plans {
        if many && args.output == Output::Text {
            println!("plan {}:", plan.name);
        }
        worst = worst.worst(list(plan, args.output));
    }
    worst
}

fn list(plan: &crate::plan::Plan, output: Output) -> Exit {
    let listing = match storage::open(plan).and_then(|s| manifest::list(s.backups.as_ref())) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: plan {}: {e}", plan.name);
            return e.exit();
        }
    };
    for u in &listing.unreadable {
        eprintln!("warning: {}", u.warning());
    }
    let backups = &listing.complete;
    match output {
        Output::Json => {
            let doc = serde_json::json!({"format_version": 1, "plan": plan.name.to_string(), "backups": backups, "unreadable": listing.unreadable});
            println!("{doc}");
        }
        Output::Text => {
            println!(
                "{:<22} {:<20} {:<16} {:>10} {:<12} VERSION",
                "ID", "FINISHED", "PARTS", "SIZE", "REPLICA"
            );
            for m in backups {
                let parts: Vec<&str> = m
                    .artifacts
                    .iter()
                    .filter_map(|a| match a.kind {
                        ArtifactKind::Ucp => Some("ucp"),
                        ArtifactKind::Metadata => Some("metadata"),
                        ArtifactKind::Images => Some("images"),
                        // The list of the images' blobs: part of `images`.
                        ArtifactKind::Blobs | ArtifactKind::Trees => None,
                    })
                    .collect();
                println!(
                    "{:<22} {:<20} {:<16} {:>10} {:<12} {}",
                    m.backup_id,
                    m.finished_at,
                    parts.join(","),
                    human_bytes(m.total_size()),
                    m.dtr.replica.as_deref().unwrap_or("-"),
                    m.dtr.version.as_deref().unwrap_or("-")
                );
            }
            if backups.is_empty() {
                eprintln!("no complete backup of plan {} yet", plan.name);
            }
        }
    }
    Exit::Ok
}
