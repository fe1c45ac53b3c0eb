//! `backups prune`: the plan's retention, applied now, outside a run. It takes the plan's
//! lock (a dry run takes none and deletes nothing), and spares what an unfinished run has:
//! its folder and the blobs it already copied.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{lock, state};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::plan::{Plan, RetentionCfg};
use crate::steps::retention::{self, Pruned};
use crate::storage;

/// Applies `cfg` (the plan's retention) to the plan's destination.
pub async fn prune(
    plan: &Plan,
    cfg: RetentionCfg,
    dry_run: bool,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Pruned> {
    let stores = Arc::new(storage::open(plan)?);
    let _lock = if dry_run {
        None
    } else {
        Some(
            lock::acquire(
                stores.state.clone(),
                plan.name.as_str(),
                "backups prune",
                None,
                plan.lock_lease,
                reporter,
                cancel,
            )
            .await?,
        )
    };
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
    let cancel = cancel.clone();
    let store: Arc<dyn storage::Store> = if dry_run {
        Arc::new(storage::dry_run::DryRun(stores.backups.clone()))
    } else {
        stores.backups.clone()
    };
    tokio::task::spawn_blocking(move || {
        retention::prune(store.as_ref(), &cfg, &current, &protected, &cancel)
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
}
