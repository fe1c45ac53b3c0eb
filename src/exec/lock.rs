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

/// Who holds a lock. Besides the host name, which hosts can share (containers with
/// `--uts=host`, `hostNetwork` pods, the `unknown-host` fallback), the lock records what tells
/// a process apart for sure: the kernel's boot id, the pid namespace and the process's start
/// time. (Locks written without them are judged by host and pid alone.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub operation: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// The process's start time, in clock ticks since boot (`/proc/<pid>/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "lock {} held by {} on host {} (pid {}) since {}",
            self.id, self.operation, self.host, self.pid, self.started_at
        )
    }

    /// This process, holding a lock `id`.
    fn ours(id: String, operation: &str) -> LockInfo {
        let pid = std::process::id();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        LockInfo {
            id,
            host: hostname(),
            pid,
            operation: operation.to_owned(),
            started_at: clock::rfc3339(clock::now_unix()),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid_ns: pid_namespace(),
            start_ticks: start_ticks(pid),
        }
    }

    /// Why the holder of this lock is known to be gone, judged from `me`; `None` when it may
    /// still run (then only `plan unlock` removes the lock).
    pub fn gone(&self, me: &LockInfo) -> Option<&'static str> {
        if self.host != me.host {
            return None;
        }
        let Some(boot) = &self.boot_id else {
            // A lock of an older release: host and pid are all there is.
            return (!pid_alive(self.pid)).then_some("that process is gone");
        };
        if me.boot_id.as_ref() != Some(boot) {
            // Another boot: this machine restarted since, or another machine has this name.
            let same_machine = self.machine_id.is_some() && self.machine_id == me.machine_id;
            return same_machine.then_some("that host restarted since");
        }
        if self.pid_ns.is_none() || self.pid_ns != me.pid_ns {
            // Another container on this kernel: its pids are not ours to look at.
            return None;
        }
        match (start_ticks(self.pid), self.start_ticks) {
            (None, _) => Some("that process is gone"),
            (Some(now), Some(then)) if now != then => {
                Some("that process is gone (its pid belongs to another process now)")
            }
            _ => None,
        }
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

fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name, which may hold
/// spaces): when the process started, in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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
            .map_err(|e| Error::failed(e.to_string()))??
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
        if let Some(why) = holder.gone(&info) {
            // Replace it only if it is still that very lock: of several runs that found it
            // stale, one takes it over and the others see the new holder.
            let s = store.clone();
            let b = bytes.clone();
            let took = tokio::task::spawn_blocking(move || s.swap(FILE, &held, &b))
                .await
                .map_err(|e| Error::failed(e.to_string()))??;
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
    if !store.delete_if(FILE, &bytes)? {
        return Err(Error::failed(
            "the lock changed while it was being removed (another run took it?); run `plan unlock` again to see who holds it",
        ));
    }
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::events::Recorder;
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
        l.pid = 4_000_000_000;
        l.start_ticks = Some(1);
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
                    got.map(|g| g.info.id.clone()).map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = takers.into_iter().map(|t| t.join().unwrap()).collect();
        let held: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(held.len(), 1, "{results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(r.as_ref().unwrap_err().contains("is locked"), "{r:?}");
        }
        assert_eq!(store.get(FILE).unwrap(), None, "released on drop");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_live_holder_is_never_judged_gone_and_identity_tells_processes_apart() {
        let me = LockInfo::ours("me".into(), "plan apply");
        assert_eq!(me.gone(&me), None, "this process runs");
        assert!(me.boot_id.is_some() && me.pid_ns.is_some() && me.start_ticks.is_some());
        let dead = stale_lock();
        assert_eq!(dead.gone(&me), Some("that process is gone"));
        // A reused pid: alive, but started at another time.
        let mut reused = me.clone();
        reused.start_ticks = me.start_ticks.map(|t| t + 1);
        assert!(
            reused
                .gone(&me)
                .is_some_and(|w| w.contains("another process"))
        );
        // The same host name on another kernel, or in another pid namespace: not ours to judge.
        let mut other_kernel = dead.clone();
        other_kernel.boot_id = Some("another-boot".into());
        other_kernel.machine_id = Some("another-machine".into());
        assert_eq!(other_kernel.gone(&me), None);
        let mut other_container = dead.clone();
        other_container.pid_ns = Some("pid:[1]".into());
        assert_eq!(other_container.gone(&me), None);
        // The same machine after a restart.
        let mut before_reboot = me.clone();
        before_reboot.boot_id = Some("an-earlier-boot".into());
        if me.machine_id.is_some() {
            assert_eq!(before_reboot.gone(&me), Some("that host restarted since"));
        } else {
            assert_eq!(before_reboot.gone(&me), None);
        }
    }
}
