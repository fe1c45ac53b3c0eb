//! Who a process is, in a form that another process can judge later: is it still running?
//!
//! A host name alone cannot tell: hosts share names (containers with `--uts=host`,
//! `hostNetwork` pods, the `unknown-host` fallback). The kernel's boot id, the pid namespace
//! and the process's start time can. Locks and the containers dtr-backup creates carry this.
//! Only a process of this very kernel boot and pid namespace is ever judged gone: after a
//! restart, or from another container, the judgement is left to the operator.

use serde::{Deserialize, Serialize};

/// A process, as recorded by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// The process's start time, in clock ticks since boot (`/proc/<pid>/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
}

impl ProcessId {
    /// This process.
    pub fn current() -> ProcessId {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let pid = std::process::id();
        ProcessId {
            host: hostname(),
            pid,
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            start_ticks: start_ticks(pid).ok(),
        }
    }

    /// Why this process is known to be gone, judged from `me`; `None` when it may still run.
    /// Records without a boot id (older releases) are judged by host and pid alone.
    pub fn gone(&self, me: &ProcessId) -> Option<&'static str> {
        match self.liveness(me) {
            Liveness::Gone(why) => Some(why),
            Liveness::Running | Liveness::Unknown(_) => None,
        }
    }

    /// Whether this process still runs, as far as `me` can tell.
    pub fn liveness(&self, me: &ProcessId) -> Liveness {
        if self.host != me.host {
            return Liveness::Unknown("it runs on another host");
        }
        let Some(boot) = &self.boot_id else {
            // A record of an older release: a live pid may be another process by now.
            return if pid_alive(self.pid) {
                Liveness::Unknown("its pid runs, but the record is too old to tell whose")
            } else {
                Liveness::Gone("that process is gone")
            };
        };
        if me.boot_id.as_ref() != Some(boot) {
            // Another boot: this machine restarted since, or another machine has this name
            // (containers of one image share even /etc/machine-id). Not ours to judge.
            return Liveness::Unknown("it ran under another boot of this host name");
        }
        if self.pid_ns.is_none() || self.pid_ns != me.pid_ns {
            // Another container on this kernel: its pids are not ours to look at.
            return Liveness::Unknown("it runs in another pid namespace (container)");
        }
        match (start_ticks(self.pid), self.start_ticks) {
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {
                Liveness::Gone("that process is gone")
            }
            // Unreadable (`hidepid`, a security module): it may well run.
            (Err(_), _) => Liveness::Unknown("its process cannot be read here"),
            (Ok(now), Some(then)) if now != then => {
                Liveness::Gone("that process is gone (its pid belongs to another process now)")
            }
            (Ok(_), Some(_)) => Liveness::Running,
            (Ok(_), None) => Liveness::Unknown("its pid runs, but the record has no start time"),
        }
    }
}

/// What can be told of a recorded process from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (same host, boot, pid namespace; its pid started when it did).
    Running,
    /// It is gone, and why that is certain.
    Gone(&'static str),
    /// It cannot be told from here, and why.
    Unknown(&'static str),
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

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name, which may hold
/// spaces): when the process started, in clock ticks since boot.
fn start_ticks(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().nth(19))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/stat: unexpected format")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that does not run: a pid above any pid_max.
    pub fn dead() -> ProcessId {
        ProcessId {
            pid: 4_000_000_000,
            start_ticks: Some(1),
            ..ProcessId::current()
        }
    }

    #[test]
    fn a_live_process_is_never_judged_gone_and_identity_tells_processes_apart() {
        let me = ProcessId::current();
        assert_eq!(me.gone(&me), None, "this process runs");
        assert_eq!(dead().gone(&me), Some("that process is gone"));
        // A reused pid: alive, but started at another time.
        let mut reused = me.clone();
        reused.start_ticks = me.start_ticks.map(|t| t + 1);
        assert!(
            reused
                .gone(&me)
                .is_some_and(|w| w.contains("another process"))
        );
        // The same host name on another kernel (or this one before a restart), or in another
        // pid namespace: not ours to judge.
        let mut other_kernel = dead();
        other_kernel.boot_id = Some("another-boot".into());
        assert_eq!(other_kernel.gone(&me), None);
        let mut other_container = dead();
        other_container.pid_ns = Some("pid:[1]".into());
        assert_eq!(other_container.gone(&me), None);
        // A record of an older release: host and pid.
        let legacy = ProcessId {
            host: me.host.clone(),
            pid: 4_000_000_000,
            boot_id: None,
            pid_ns: None,
            start_ticks: None,
        };
        assert_eq!(legacy.gone(&me), Some("that process is gone"));
    }
}
