//! Named points where the process can be made to stop, for the kill-and-resume tests.
//!
//! With `DTR_BACKUP_FAILPOINT=<name>` set, reaching that point prints `failpoint <name>` on
//! stderr and waits, so that a test can `kill -9` the process exactly there, or send SIGTERM
//! (the wait ends when the run is cancelled, and the run stops as it would anywhere). Without
//! the variable, `hit` does nothing. With `DTR_BACKUP_FAILPOINT_PAUSE_MS` also set, the point
//! only pauses that long and the run goes on (for tests that disturb a server meanwhile).

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("DTR_BACKUP_FAILPOINT").ok())
        .as_deref()
}

/// Waits here until the run is cancelled, if this failpoint is armed.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("failpoint {name}");
        if let Some(ms) = std::env::var("DTR_BACKUP_FAILPOINT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return;
        }
        while !crate::cancel::process_cancelled() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
