//! `dtr-backup backups prune PLAN [--dry-run]`: apply the plan's retention now.

use std::path::PathBuf;

use crate::cancel::Cancel;
use crate::exec;
use crate::exit::Exit;

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
        let reporter = super::report::Human::new(true);
        exec::prune::prune(&plan, cfg, args.dry_run, &reporter, &cancel).await
    });
    match result {
        Ok(p) => {
            for u in &p.unreadable {
                eprintln!("warning: {}", u.warning());
            }
            for w in &p.warnings {
                eprintln!("warning: {w}");
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
