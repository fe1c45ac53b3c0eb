//! Named points where the process can be made to stop, for the kill-and-resume tests.
//!
//! With `DTR_BACKUP_FAILPOINT=<name>` set, reaching that point prints `failpoint <name>` on
//! stderr and waits forever, so that a test can `kill -9` the process exactly there. Without
//! the variable, `hit` does nothing.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("DTR_BACKUP_FAILPOINT").ok())
        .as_deref()
}

/// Stops here forever if this failpoint is armed.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("failpoint {name}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
