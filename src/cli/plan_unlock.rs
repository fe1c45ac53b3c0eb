//! `dtr-backup plan unlock PLAN LOCK_ID`: remove a lock left by a run that is gone.

use std::path::PathBuf;

use crate::exec::lock;
use crate::exit::Exit;
use crate::storage;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// The lock's id, as the locked run's message shows it.
    #[arg(value_name = "LOCK_ID")]
    pub lock_id: String,
}

pub fn run(args: &Args) -> Exit {
    let plan = match super::load_plan(&args.plan) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let result = storage::open(&plan).and_then(|s| lock::unlock(s.state.as_ref(), &args.lock_id));
    match result {
        Ok(holder) => {
            println!(
                "removed lock {} of {} on {} (pid {})",
                holder.id, holder.operation, holder.process.host, holder.process.pid
            );
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    }
}
