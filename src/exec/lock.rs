//! One run per plan at a time: a lock object next to the state, created only if absent.
//!
//! A holder refreshes its lock every fifth of the plan's lease (`state.lock_lease`, 15
//! minutes by default). A lock is stale, and taken over with a warning, when its process is
//! known to be gone (this host, this boot, this pid namespace), or when it was not refreshed
//! for longer than the lease: the case of a holder that cannot be checked from here (another
//! host, another container, a killed job or pod). A holder that finds its lock taken over
//! stops its run.

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
    /// When the holder last refreshed it (unix seconds); absent in records of releases that
    /// did not refresh (those are judged by their process only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<i64>,
    /// The holder's lease (seconds): a taker judges by the longer of it and its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
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
            refreshed: Some(clock::now_unix()),
            lease: None,
        }
    }

    /// Why this lock is stale by its age: not refreshed for longer than its lease (the longer
    /// of the holder's and `lease`).
    pub fn expired(&self, lease: Duration, now: i64) -> Option<String> {
        let age = now - self.refreshed?;
        let lease = lease.as_secs().max(self.lease.unwrap_or(0));
        (age > lease as i64).then(|| {
            format!("it was last refreshed {age} s ago, longer than the lease of {lease} s")
        })
    }

    /// Why this lock is stale, judged from `me`: its process is known to be gone, or it cannot
    /// be checked from here and its lease ran out. A holder seen running is never stale.
    pub fn stale(&self, me: &ProcessId, lease: Duration, now: i64) -> Option<String> {
        match self.process.liveness(me) {
            crate::process::Liveness::Gone(why) => Some(why.to_owned()),
            crate::process::Liveness::Running => None,
            crate::process::Liveness::Unknown(_) => self.expired(lease, now),
        }
    }
}

/// Holds the lock; releases it when dropped.
pub struct LockGuard {
    store: Arc<dyn Store>,
    pub info: LockInfo,
    held: Arc<std::sync::Mutex<Held>>,
    /// Set when the lock was found taken over (the run was cancelled for it).
    lost: Arc<std::sync::atomic::AtomicBool>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

/// The lock object as last written (released only if it still holds exactly this), and
/// whether it was released: a refresh and the release never cross.
struct Held {
    bytes: Vec<u8>,
    released: bool,
}

impl LockGuard {
    /// Whether the lock was taken over while this guard held it.
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl LockGuard {
    fn new(
        store: Arc<dyn Store>,
        info: LockInfo,
        bytes: Vec<u8>,
        lease: Duration,
        cancel: &Cancel,
    ) -> LockGuard {
        let held = Arc::new(std::sync::Mutex::new(Held {
            bytes,
            released: false,
        }));
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refresher = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(refresh(
                store.clone(),
                info.clone(),
                held.clone(),
                lost.clone(),
                lease,
                cancel.clone(),
            ))
        });
        LockGuard {
            store,
            info,
            held,
            lost,
            refresher,
        }
    }
}

/// Rewrites the lock with a new `refreshed` time every fifth of the lease, only while it is
/// still exactly what this holder wrote. A holder that lost it, or that could not refresh it
/// for four fifths of the lease (another may take it over soon), cancels its run.
async fn refresh(
    store: Arc<dyn Store>,
    info: LockInfo,
    held: Arc<std::sync::Mutex<Held>>,
    lost: Arc<std::sync::atomic::AtomicBool>,
    lease: Duration,
    cancel: Cancel,
) {
    use std::io::Write;
    let say = |line: String| {
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    let every = lease / 5;
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let mut next = info.clone();
        next.refreshed = Some(clock::now_unix());
        next.lease = Some(lease.as_secs());
        let new = serde_json::to_vec_pretty(&next).unwrap_or_default();
        let (s, h) = (store.clone(), held.clone());
        // The swap under the guard's mutex: the release waits for it, and no swap follows it.
        let swapped = tokio::task::spawn_blocking(move || -> Result<Option<bool>> {
            let mut h = h
                .lock()
                .map_err(|_| Error::internal("the lock's state is poisoned"))?;
            if h.released {
                return Ok(None);
            }
            let ok = s.swap(FILE, &h.bytes, &new)?;
            if ok {
                h.bytes = new;
            }
            Ok(Some(ok))
        })
        .await;
        match swapped {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(true))) => last_ok = Instant::now(),
            Ok(Ok(Some(false))) => {
                say(format!(
                    "error: the lock {}/{FILE} is not this run's any more (taken over once its lease ran out, or removed with `plan unlock`): stopping this run",
                    store.describe()
                ));
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Ok(Err(e)) if last_ok.elapsed() > lease * 4 / 5 => {
                say(format!(
                    "error: the lock {}/{FILE} could not be refreshed for {} s ({e}); another run may take it over soon: stopping this run",
                    store.describe(),
                    last_ok.elapsed().as_secs()
                ));
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Ok(Err(e)) => say(format!(
                "warning: could not refresh the lock {}/{FILE}: {e}; trying again in {} s",
                store.describe(),
                every.as_secs()
            )),
            Err(_) => {
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                cancel.cancel();
                return;
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        // Waits for a refresh in flight; none follows.
        let bytes = match self.held.lock() {
            Ok(mut h) => {
                h.released = true;
                h.bytes.clone()
            }
            Err(_) => return,
        };
        // Release only our own lock (an operator may have unlocked and another run locked).
        match self.store.delete_if(FILE, &bytes) {
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

/// Takes the lock, waiting up to `timeout` for another holder. A stale lock (its process gone,
/// or not refreshed for longer than `lease`) is taken over with a warning. The lock is
/// refreshed while the guard lives; a holder that loses it cancels `cancel`.
pub async fn acquire(
    store: Arc<dyn Store>,
    plan: &str,
    operation: &str,
    timeout: Option<Duration>,
    lease: Duration,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<LockGuard> {
    let mut info = LockInfo::ours(clock::random_hex(4), operation);
    info.lease = Some(lease.as_secs());
    let bytes = serde_json::to_vec_pretty(&info).unwrap_or_default();
    let start = Instant::now();
    loop {
        let s = store.clone();
        let b = bytes.clone();
        if tokio::task::spawn_blocking(move || s.put_new(FILE, &b))
            .await
            .map_err(|e| Error::internal(e.to_string()))??
        {
            return Ok(LockGuard::new(store, info, bytes, lease, cancel));
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
        let stale = holder.stale(&info.process, lease, clock::now_unix());
        if let Some(why) = stale {
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
                return Ok(LockGuard::new(store, info, bytes, lease, cancel));
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
                        crate::plan::DEFAULT_LOCK_LEASE,
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

    fn foreign(refreshed_ago: i64) -> LockInfo {
        let mut l = LockInfo::ours("far".into(), "plan apply");
        l.process.host = "another-host".into();
        l.refreshed = Some(clock::now_unix() - refreshed_ago);
        l
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_lock_that_cannot_be_checked_is_taken_over_only_once_its_lease_ran_out() {
        let store: Arc<dyn Store> = Arc::new(crate::storage::memory::MemoryStore::new());
        let lease = Duration::from_secs(60);
        store
            .put(FILE, &serde_json::to_vec(&foreign(10)).unwrap())
            .unwrap();
        let rec = Recorder::default();
        let take = || {
            rt().block_on(acquire(
                store.clone(),
                "p",
                "x",
                None,
                lease,
                &rec,
                &Cancel::new(),
            ))
        };
        let got = take();
        assert!(
            matches!(got, Err(Error::Locked(_))),
            "a fresh lease is honoured"
        );
        store
            .put(FILE, &serde_json::to_vec(&foreign(61)).unwrap())
            .unwrap();
        let got = take();
        assert!(got.is_ok(), "{:?}", got.err());
        let warned = rec.0.lock().unwrap().iter().any(|e| {
            matches!(e, Event::Warning { message } if message.contains("last refreshed 61 s ago"))
        });
        assert!(warned);
    }

    #[test]
    fn a_holder_refreshes_its_lock_and_stops_when_it_lost_it() {
        let store: Arc<dyn Store> = Arc::new(crate::storage::memory::MemoryStore::new());
        let lease = Duration::from_secs(10);
        let rt = rt();
        let cancel = Cancel::new();
        let guard = rt
            .block_on(acquire(
                store.clone(),
                "p",
                "x",
                None,
                lease,
                &Recorder::default(),
                &cancel,
            ))
            .unwrap();
        let before: LockInfo = serde_json::from_slice(&store.get(FILE).unwrap().unwrap()).unwrap();
        // A refresh every 2 s: after 3 s the record holds a later time, and is still ours.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(3100)).await });
        let after: LockInfo = serde_json::from_slice(&store.get(FILE).unwrap().unwrap()).unwrap();
        assert_eq!(after.id, before.id);
        assert!(after.refreshed > before.refreshed, "{after:?}");
        assert!(!cancel.is_cancelled());
        // Taken over by another: the next refresh finds it so and cancels the run.
        store
            .put(FILE, &serde_json::to_vec(&foreign(0)).unwrap())
            .unwrap();
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(2100)).await });
        assert!(cancel.is_cancelled(), "the run goes on without its lock");
        drop(guard);
        assert!(
            store.get(FILE).unwrap().is_some(),
            "the other's lock was released"
        );
    }
}
