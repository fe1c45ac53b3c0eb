//! `dtr-backup backups prune PLAN [--dry-run]`: apply the plan's retention now.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cancel::Cancel;
use crate::error::Error;
use crate::exec::{lock, state};
use crate::exit::Exit;
use crate::steps::retention;
use crate::storage;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Show what would be deleted; delete nothing, take no lock.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &Args) -> Exit {
    let plan = match super::load_plan(&args.plan) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let Some(cfg) = plan.retention else {
        eprintln!(
            "error: plan {} has no `retention` section: nothing to prune",
            plan.name
        );
        return Exit::Usage;
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let cancel = Cancel::new();
    let result = runtime.block_on(async {
        super::cancel_on_signals(cancel.clone());
        let stores = Arc::new(storage::open(&plan)?);
        let _lock = if args.dry_run {
            None
        } else {
            Some(
                lock::acquire(
                    stores.state.clone(),
                    plan.name.as_str(),
                    "backups prune",
                    None,
                    &super::report::Human::new(true),
                    &cancel,
                )
                .await?,
            )
        };
        // An unfinished run keeps its folder and the blobs it already copied.
        let unfinished = state::load(stores.state.as_ref())?;
        let current = unfinished
            .as_ref()
            .map(|r| r.backup_id.clone())
            .unwrap_or_default();
        let protected: BTreeSet<String> = unfinished
            .iter()
            .flat_map(|r| r.steps.values())
            .flat_map(|s| s.objects.iter().filter_map(|o| o.blob.clone()))
            .collect();
        let dry = args.dry_run;
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            retention::prune(
                stores.backups.as_ref(),
                &cfg,
                &current,
                &protected,
                dry,
                &cancel,
            )
        })
        .await
        .map_err(|e| Error::failed(e.to_string()))?
    });
    match result {
        Ok(p) => {
            for u in &p.unreadable {
                eprintln!("warning: {}", u.warning());
            }
            let verb = if args.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            for id in &p.backups {
                println!("{verb} backup {id}");
            }
            for id in &p.incomplete {
                println!("{verb} incomplete run {id}");
            }
            println!(
                "{verb} {} backups, {} incomplete runs, {} unreferenced blobs",
                p.backups.len(),
                p.incomplete.len(),
                p.blobs.len()
            );
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    }
}
