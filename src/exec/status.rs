//! `status`: what a plan's destination says of it now: the newest complete backup, how the
//! last run ended (`last-run.json`), an unfinished run (the journal), the lock's holder.

use serde::Serialize;

use super::{lock, state};
use crate::clock;
use crate::error::Result;
use crate::manifest;
use crate::plan::Plan;
use crate::process::Liveness;
use crate::storage;

/// The newest complete backup of a plan.
#[derive(Clone, Debug, Serialize)]
pub struct Newest {
    pub backup_id: String,
    pub finished_at: String,
    /// Seconds since the backup started (its id's time).
    pub age_seconds: i64,
    pub size: u64,
    pub replica: Option<String>,
    pub version: Option<String>,
}

/// One plan's status.
#[derive(Clone, Debug, Serialize)]
pub struct PlanStatus {
    pub plan: String,
    pub backups: usize,
    pub newest: Option<Newest>,
    pub last_run: Option<state::LastRun>,
    /// The backup id of an unfinished run that the next `plan apply` resumes.
    pub unfinished: Option<String>,
    /// Who holds the lock now, if anyone.
    pub locked_by: Option<lock::LockInfo>,
    /// Whether that holder still runs: `running`, `gone` (the next run takes the lock over),
    /// or `unknown` (another host or container).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<Holder>,
    /// A read-only window that a stopped run left open (DTR may still be read-only); the
    /// next run of the plan closes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_left: Option<state::ReadOnly>,
    /// Folders whose manifest cannot be read (not counted).
    pub unreadable: usize,
}

/// The lock holder's state, as far as this machine can tell.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    /// `running`, `gone` or `unknown`.
    pub state: &'static str,
    /// Why it is gone, or why it cannot be told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Reads the status of `plan` at its destination. Nothing is written.
pub fn of(plan: &Plan) -> Result<PlanStatus> {
    let stores = storage::open(plan)?;
    let listing = manifest::list(stores.backups.as_ref())?;
    let now = clock::now_unix();
    let newest = listing.complete.last().map(|m| Newest {
        backup_id: m.backup_id.clone(),
        finished_at: m.finished_at.clone(),
        age_seconds: clock::backup_id_time(&m.backup_id).map_or(i64::MAX, |t| now - t),
        size: m.total_size(),
        replica: m.dtr.replica.clone(),
        version: m.dtr.version.clone(),
    });
    let locked_by = lock::holder(stores.state.as_ref())?;
    Ok(PlanStatus {
        plan: plan.name.to_string(),
        backups: listing.complete.len(),
        newest,
        last_run: state::load_last_run(stores.state.as_ref())?,
        unfinished: state::load(stores.state.as_ref())?.map(|r| r.backup_id),
        lock_holder: locked_by.as_ref().map(|l| {
            let me = crate::process::ProcessId::current();
            match (l.process.liveness(&me), l.stale(&me, plan.lock_lease, now)) {
                (Liveness::Running, _) => Holder {
                    state: "running",
                    why: None,
                },
                (_, Some(why)) => Holder {
                    state: "gone",
                    why: Some(why),
                },
                (Liveness::Unknown(why), None) | (Liveness::Gone(why), None) => Holder {
                    state: "unknown",
                    why: Some(why.to_owned()),
                },
            }
        }),
        locked_by,
        read_only_left: state::load_read_only(stores.state.as_ref())?,
        unreadable: listing.unreadable.len(),
    })
}
