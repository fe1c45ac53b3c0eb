//! The I/O class of a thread: apply's read-back of what it has just written steps aside for
//! the copy's writes.
//!
//! The read-back keeps four direct reads in flight; an I/O scheduler that serves reads before
//! writes (`mq-deadline`) then held back each copy thread's one write at a time and, through
//! its buffers, the copy itself. At the idle class the read-back's reads take the device when
//! nothing else asks for it: the copy's writes go first, and on a registry node so do the
//! registry's own reads (figures in `docs/performance.md`, "The nightly case"). Schedulers
//! that ignore classes (`none`, `kyber`) change nothing; `mq-deadline` serves a waiting read
//! after its `prio_aging_expire` (10 s by default), and the read-back moves back to the
//! default class as soon as the copy is done, so that what is left of it waits for nobody.
//!
//! The class is set with `ionice -p TID` (util-linux's, or busybox's): the crate forbids
//! `unsafe`, and so the `ioprio_set` system call. One process per change, with an empty
//! environment, found at a fixed path (never through `PATH`). A thread started afterwards
//! inherits its creator's class (the read-ahead threads of `direct::open` do).

use std::path::Path;
use std::process::{Command, Stdio};

/// Where `ionice` is looked for.
const IONICE: [&str; 2] = ["/usr/bin/ionice", "/bin/ionice"];

/// Moves the calling thread's I/O to the idle class. Whether it did: where `ionice` is
/// missing or refuses, the thread keeps its class and nothing else changes.
pub fn idle_io() -> bool {
    ionice(&["-c", "3"])
}

/// Moves the calling thread's I/O back to the default class (the one its CPU priority
/// gives). Whether it did.
pub fn default_io() -> bool {
    ionice(&["-c", "0"])
}

/// Runs `ionice ARGS -p TID` for the calling thread.
fn ionice(args: &[&str]) -> bool {
    let Some(ionice) = IONICE.iter().map(Path::new).find(|p| p.is_file()) else {
        return false;
    };
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    Command::new(ionice)
        .env_clear()
        .args(args)
        .arg("-p")
        .arg(tid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// For tests: what `ionice -p` says of the calling thread, and a known class to start from
/// (whatever the test runner's is).
#[cfg(test)]
pub(crate) mod probe {
    use super::*;

    /// The calling thread's class as `ionice -p` prints it (`idle`, `best-effort: prio 4`,
    /// `none: prio 4`).
    pub(crate) fn class() -> String {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let out = Command::new(IONICE[0])
            .arg("-p")
            .arg(tid.to_string())
            .output()
            .unwrap_or_else(|e| panic!("{} (apt-get install util-linux): {e}", IONICE[0]));
        assert!(out.status.success(), "ionice -p failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Puts the calling thread in the best-effort class, priority 4.
    pub(crate) fn best_effort() {
        assert!(ionice(&["-c", "2", "-n", "4"]), "ionice -c 2 refused");
        assert_eq!(class(), "best-effort: prio 4");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread that asks goes idle, and the threads it starts afterwards with it; the
    /// thread that started it keeps its class; `default_io` moves it back.
    #[test]
    fn idle_io_moves_the_calling_thread_and_those_it_starts_and_default_io_moves_it_back() {
        probe::best_effort();
        let (own, child, back) = std::thread::spawn(|| {
            assert!(idle_io(), "ionice -c 3 refused");
            let own = probe::class();
            let child = std::thread::spawn(probe::class).join().unwrap();
            assert!(default_io(), "ionice -c 0 refused");
            (own, child, probe::class())
        })
        .join()
        .unwrap();
        assert_eq!(own, "idle");
        assert_eq!(child, "idle");
        assert_ne!(back, "idle");
        assert_eq!(probe::class(), "best-effort: prio 4");
    }
}
