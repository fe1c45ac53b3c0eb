//! DTR's read-only window (`dtr.read_only_during_backup`): the registry is set read-only
//! through DTR's API before the first of the metadata and images steps, so that no blob is
//! pushed or collected between them, and set writable again right after the last of them,
//! on failure and on interruption.
//!
//! The state folder holds a record (`state::READ_ONLY`) from before the setting is sent until
//! it is undone, so that a run killed inside the window (kill -9, a lost node) leaves a trace:
//! the next run of the plan sets DTR writable first ([`recover`]). A DTR that was read-only
//! already is left alone, and left read-only.

use std::time::{Duration, Instant};

use crate::clock;
use crate::dtr;
use crate::error::{Error, Result};
use crate::events::{Event, Reporter};
use crate::failpoint;
use crate::plan::Plan;
use crate::secret::Secret;
use crate::storage::Store;

use super::state;

/// The `step` of the window's log events.
const STEP: &str = "read-only";

/// An open window: DTR is read-only because this run set it so.
pub struct Window {
    api: dtr::Api,
    opened: Instant,
}

/// Sets DTR writable again when an earlier run stopped inside its window. Runs once the lock
/// is held, before anything else can fail. Only the plan's own `dtr.external_url` is ever
/// sent the credentials: a record that names another URL is refused (the state folder is at
/// the destination, which others may be able to write).
pub async fn recover(plan: &Plan, store: &dyn Store, reporter: &dyn Reporter) -> Result<()> {
    let Some(left) = state::load_read_only(store)? else {
        return Ok(());
    };
    let since = clock::rfc3339(left.set_at);
    let by_hand = format!(
        "check DTR's settings (set it writable if it is read-only), then delete {}/{}",
        store.describe(),
        state::READ_ONLY
    );
    let url = match &plan.dtr.external_url {
        Some(u) if u.as_str().trim_end_matches('/') == left.url => u.as_str(),
        other => {
            return Err(Error::ucp(format!(
                "a record says run {} left DTR at {} read-only (since {since}), and this plan's dtr.external_url is {}: dtr-backup sends UCP's credentials only to the plan's DTR; {by_hand}",
                left.backup_id,
                left.url,
                other.as_ref().map_or("not set", |u| u.as_str())
            )));
        }
    };
    let Some(ucp) = &plan.ucp else {
        return Err(Error::ucp(format!(
            "run {} left DTR at {url} read-only (since {since}), and this plan has no UCP credentials to set it back: {by_hand}",
            left.backup_id
        )));
    };
    let password = crate::secret::resolve(&ucp.password)?;
    let api = dtr::Api::new(plan, url, &password)?;
    let undo = |e: Error| {
        e.context(format!(
            "setting DTR writable again, as run {} left it read-only (since {since})",
            left.backup_id
        ))
    };
    if !api.read_only().await.map_err(undo)? {
        state::clear_read_only(store)?;
        reporter.emit(&Event::Warning {
            message: format!(
                "run {} stopped inside its read-only window (since {since}), and DTR at {url} is writable already; its record is dropped",
                left.backup_id
            ),
        });
        return Ok(());
    }
    api.set_read_only(false).await.map_err(undo)?;
    state::clear_read_only(store)?;
    reporter.emit(&Event::Warning {
        message: format!(
            "run {} stopped while DTR at {url} was read-only (since {since}); DTR is writable again",
            left.backup_id
        ),
    });
    Ok(())
}

/// Sets DTR read-only; `None` when it was read-only already (it is then left as it is).
pub async fn open(
    plan: &Plan,
    store: &dyn Store,
    password: &Secret,
    backup_id: &str,
    reporter: &dyn Reporter,
) -> Result<Option<Window>> {
    let url = plan.dtr.external_url.as_ref().ok_or_else(|| {
        Error::internal("the read-only window without dtr.external_url passed the plan's checks")
    })?;
    let api = dtr::Api::new(plan, url.as_str(), password)?;
    if api.read_only().await? {
        reporter.emit(&Event::Warning {
            message: format!(
                "DTR at {} is read-only already (set by hand, or by another plan's window): this run leaves the setting alone, and cannot promise that it stays read-only until the images are copied",
                api.url()
            ),
        });
        return Ok(None);
    }
    state::save_read_only(
        store,
        &state::ReadOnly {
            url: api.url().to_owned(),
            backup_id: backup_id.to_owned(),
            set_at: clock::now_unix(),
        },
    )?;
    if let Err(e) = api.set_read_only(true).await {
        // It may have been taken all the same: undo it, and drop the record once that worked.
        if api.set_read_only(false).await.is_ok() {
            state::clear_read_only(store)?;
        }
        return Err(e.context("opening DTR's read-only window"));
    }
    reporter.emit(&Event::Log {
        step: STEP.into(),
        message: format!(
            "DTR at {} is read-only until the image content is copied",
            api.url()
        ),
    });
    failpoint::hit("read-only.set");
    Ok(Some(Window {
        api,
        opened: Instant::now(),
    }))
}

impl Window {
    /// Sets DTR writable again; returns how long it was read-only.
    pub async fn close(self, store: &dyn Store, reporter: &dyn Reporter) -> Result<Duration> {
        self.api.set_read_only(false).await.map_err(|e| {
            e.context(format!(
                "DTR at {} is still read-only (the next run sets it writable; or set it by hand)",
                self.api.url()
            ))
        })?;
        let open = self.opened.elapsed();
        state::clear_read_only(store)?;
        reporter.emit(&Event::Log {
            step: STEP.into(),
            message: format!(
                "DTR at {} is writable again, after {:.1} s read-only",
                self.api.url(),
                open.as_secs_f64()
            ),
        });
        Ok(open)
    }
}
