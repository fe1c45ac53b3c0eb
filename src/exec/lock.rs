//! One run per plan at a time: a lock object next to the state, created only if absent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::events::{Event, Reporter};
use crate::cancel::Cancel;
use crate::clock;
use crate::error::{Error, Result};
use crate::storage::Store;

pub const FILE: &str = "lock.json";

/// Who holds a lock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub operation: String,
    pub started_at: String,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "lock {} held by {} on host {} (pid {}) since {}",
            self.id, self.operation, self.host, self.pid, self.started_at
        )
    }
}

/// This machine's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Holds the lock; releases it when dropped.
pub struct LockGuard {
    store: Arc<dyn Store>,
    pub info: LockInfo,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Release only our own lock (an operator may have unlocked and another run locked).
        if let Ok(Some(bytes)) = self.store.get(FILE)
            && serde_json::from_slice::<LockInfo>(&bytes).is_ok_and(|l| l.id == self.info.id)
        {
            let _ = self.store.delete(FILE);
        }
    }
}

/// Takes the lock, waiting up to `timeout` for another holder. A lock left by a dead process
/// of this host is taken over with a warning.
pub async fn acquire(
    store: Arc<dyn Store>,
    plan: &str,
    operation: &str,
    timeout: Option<Duration>,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<LockGuard> {
    let now = clock::now_unix();
    let info = LockInfo {
        id: clock::random_hex(4),
        host: hostname(),
        pid: std::process::id(),
        operation: operation.to_owned(),
        started_at: clock::rfc3339(now),
    };
    let bytes = serde_json::to_vec_pretty(&info).unwrap_or_default();
    let start = Instant::now();
    loop {
        let s = store.clone();
        let b = bytes.clone();
        if tokio::task::spawn_blocking(move || s.put_new(FILE, &b))
            .await
            .map_err(|e| Error::failed(e.to_string()))??
        {
            return Ok(LockGuard { store, info });
        }
        let holder = match store.get(FILE)? {
            Some(b) => serde_json::from_slice::<LockInfo>(&b).ok(),
            None => continue, // released in between
        };
        let Some(holder) = holder else {
            return Err(Error::Locked(format!(
                "the lock {}/{FILE} is unreadable; if no run is active, delete it",
                store.describe()
            )));
        };
        if holder.host == info.host && !pid_alive(holder.pid) {
            reporter.emit(&Event::Warning {
                message: format!(
                    "taking over a stale lock: {} (that process is gone)",
                    holder.describe()
                ),
            });
            // Delete only if it is still the same stale lock.
            if let Some(b) = store.get(FILE)?
                && serde_json::from_slice::<LockInfo>(&b).is_ok_and(|l| l.id == holder.id)
            {
                store.delete(FILE)?;
            }
            continue;
        }
        let waited = start.elapsed();
        match timeout {
            Some(t) if waited < t => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = cancel.cancelled() => return Err(Error::Interrupted),
                }
            }
            _ => {
                return Err(Error::Locked(format!(
                    "plan {plan} is locked: {}. Wait for that run (`--lock-timeout 10m` waits), or, if it is not running any more, `dtr-backup plan unlock PLAN {}`",
                    holder.describe(),
                    holder.id
                )));
            }
        }
    }
}

/// Removes the lock `id`. Refuses another id, so that a typo cannot break a live run's lock.
pub fn unlock(store: &dyn Store, id: &str) -> Result<LockInfo> {
    let Some(bytes) = store.get(FILE)? else {
        return Err(Error::failed(format!(
            "there is no lock at {}/{FILE}",
            store.describe()
        )));
    };
    let holder: LockInfo = serde_json::from_slice(&bytes).map_err(|e| {
        Error::failed(format!(
            "the lock {}/{FILE} is unreadable ({e}); delete it by hand",
            store.describe()
        ))
    })?;
    if holder.id != id {
        return Err(Error::failed(format!(
            "the lock is {}, not {id}; check the id and run again",
            holder.describe()
        )));
    }
    store.delete(FILE)?;
    Ok(holder)
}
