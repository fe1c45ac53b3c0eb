//! One run per plan at a time: a lock object next to the state, created only if absent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::clock;
use crate::error::{Error, Result};
use crate::events::{Event, Reporter};
use crate::process::ProcessId;
use crate::storage::Store;

pub const FILE: &str = "lock.json";

/// Who holds a lock: the lock's id, the operation, and the process (see
/// [`ProcessId`](crate::process::ProcessId): host, boot id, pid namespace, pid, start time).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    #[serde(flatten)]
    pub process: ProcessId,
    pub operation: String,
    pub started_at: String,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "lock {} held by {} on host {} (pid {}) since {}",
            self.id, self.operation, self.process.host, self.process.pid, self.started_at
        )
    }

    /// This process, holding a lock `id`.
    fn ours(id: String, operation: &str) -> LockInfo {
        LockInfo {
            id,
            process: ProcessId::current(),
            operation: operation.to_owned(),
            started_at: clock::rfc3339(clock::now_unix()),
        }
    }
}

/// Holds the lock; releases it when dropped.
pub struct LockGuard {
    store: Arc<dyn Store>,
    pub info: LockInfo,
    /// The lock object as written: released only if it still holds exactly this.
    bytes: Vec<u8>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Release only our own lock (an operator may have unlocked and another run locked).
        match self.store.delete_if(FILE, &self.bytes) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "warning: the lock {}/{FILE} is not this run's any more (removed with `plan unlock`?); left as it is",
                self.store.describe()
            ),
            Err(e) => eprintln!(
                "warning: could not release the lock {}/{FILE}: {e}; the next run on this host takes it over, or run `dtr-backup plan unlock PLAN {}`",
                self.store.describe(),
                self.info.id
            ),
        }
    }
}

/// Who holds the plan's lock now, as its record says (`None`: no lock, or a record that
/// cannot be read). Whether the holder still runs is judged by [`acquire`], not here.
pub fn holder(store: &dyn Store) -> Result<Option<LockInfo>> {
    Ok(store
        .get(FILE)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
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
    let info = LockInfo::ours(clock::random_hex(4), operation);
    let bytes = serde_json::to_vec_pretty(&info).unwrap_or_default();
    let start = Instant::now();
    loop {
        let s = store.clone();
        let b = bytes.clone();
        if tokio::task::spawn_blocking(move || s.put_new(FILE, &b))
            .await
            .map_err(|e| Error::internal(e.to_string()))??
        {
            return Ok(LockGuard { store, info, bytes });
        }
        let Some(held) = store.get(FILE)? else {
            continue; // released in between
        };
        let holder = serde_json::from_slice::<LockInfo>(&held).ok();
        let Some(holder) = holder else {
            return Err(Error::Locked(format!(
                "the lock {}/{FILE} is unreadable; if no run is active, delete it",
                store.describe()
            )));
        };
        if let Some(why) = holder.process.gone(&info.process) {
            // Replace it only if it is still that very lock: of several runs that found it
            // stale, one takes it over and the others see the new holder.
            let s = store.clone();
            let b = bytes.clone();
            let took = tokio::task::spawn_blocking(move || s.swap(FILE, &held, &b))
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
            if took {
                reporter.emit(&Event::Warning {
                    message: format!("took over a stale lock: {} ({why})", holder.describe()),
                });
                return Ok(LockGuard { store, info, bytes });
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
        return Err(Error::stored(format!(
            "there is no lock at {}/{FILE}",
            store.describe()
        )));
    };
    let holder: LockInfo = serde_json::from_slice(&bytes).map_err(|e| {
        Error::stored(format!(
            "the lock {}/{FILE} is unreadable ({e}); delete it by hand",
            store.describe()
        ))
    })?;
    if holder.id != id {
        return Err(Error::refused(format!(
            "the lock is {}, not {id}; check the id and run again",
            holder.describe()
        )));
    }
    if !store.delete_if(FILE, &bytes)? {
        return Err(Error::refused(
            "the lock changed while it was being removed (another run took it?); run `plan unlock` again to see who holds it",
        ));
    }
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Recorder;
    use crate::storage::local::LocalStore;
    use crate::storage::{ObjectWriter, Store};

    /// A local store where removing or replacing an object waits first, as when a taker is
    /// descheduled between reading a stale lock and acting on it.
    struct SlowReads(LocalStore);

    const DELAY: Duration = Duration::from_millis(300);

    impl Store for SlowReads {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn create(&self, p: &str) -> Result<Box<dyn ObjectWriter>> {
            self.0.create(p)
        }
        fn put(&self, p: &str, b: &[u8]) -> Result<()> {
            self.0.put(p, b)
        }
        fn put_new(&self, p: &str, b: &[u8]) -> Result<bool> {
            self.0.put_new(p, b)
        }
        fn get(&self, p: &str) -> Result<Option<Vec<u8>>> {
            self.0.get(p)
        }
        fn open(&self, p: &str) -> Result<Box<dyn std::io::Read + Send + Sync>> {
            self.0.open(p)
        }
        fn size(&self, p: &str) -> Result<Option<u64>> {
            self.0.size(p)
        }
        fn list_dirs(&self, p: &str) -> Result<Vec<String>> {
            self.0.list_dirs(p)
        }
        fn list_sized(&self, p: &str) -> Result<Vec<(String, u64)>> {
            self.0.list_sized(p)
        }
        fn swap(&self, p: &str, old: &[u8], new: &[u8]) -> Result<bool> {
            std::thread::sleep(DELAY);
            self.0.swap(p, old, new)
        }
        fn delete_if(&self, p: &str, old: &[u8]) -> Result<bool> {
            self.0.delete_if(p, old)
        }
        fn delete(&self, p: &str) -> Result<()> {
            std::thread::sleep(DELAY);
            self.0.delete(p)
        }
        fn delete_all(&self, p: &str) -> Result<()> {
            self.0.delete_all(p)
        }
    }

    fn stale_lock() -> LockInfo {
        let mut l = LockInfo::ours("dead".into(), "plan apply");
        // A pid no process has (above pid_max): the process is gone.
        l.process.pid = 4_000_000_000;
        l.process.start_ticks = Some(1);
        l
    }

    #[test]
    fn of_runs_that_find_the_same_stale_lock_exactly_one_takes_it_over() {
        let dir = std::env::temp_dir().join(format!("dtr-backup-lockrace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let local = LocalStore::new(dir.clone());
        local
            .put(FILE, &serde_json::to_vec(&stale_lock()).unwrap())
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(SlowReads(local));
        // Each taker starts a third of the delay after the one before: each finds the lock
        // still stale, and acts after the one before took it over.
        let takers: Vec<_> = (0..3u64)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(DELAY * i as u32 / 3);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let got = rt.block_on(acquire(
                        store,
                        "p",
                        "plan apply",
                        None,
                        &Recorder::default(),
                        &Cancel::new(),
                    ));
                    // Hold it a while, so that holders overlap if two ever succeed.
                    std::thread::sleep(Duration::from_millis(1500));
                    got.map(|g| g.info.id.clone())
                })
            })
            .collect();
        let results: Vec<_> = takers.into_iter().map(|t| t.join().unwrap()).collect();
        let held: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(held.len(), 1, "{results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(Error::Locked(_))), "{r:?}");
        }
        assert_eq!(store.get(FILE).unwrap(), None, "released on drop");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
