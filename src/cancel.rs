//! Cancellation shared by async tasks and blocking pipeline threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when any run of this process is cancelled (read by `failpoint`).
static PROCESS_CANCELLED: AtomicBool = AtomicBool::new(false);

/// Whether a cancellation happened in this process.
pub fn process_cancelled() -> bool {
    PROCESS_CANCELLED.load(Ordering::SeqCst)
}

use tokio::sync::Notify;

/// Set once by Ctrl-C or SIGTERM; every step and pipeline stage checks it.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        PROCESS_CANCELLED.store(true, Ordering::SeqCst);
        self.0.flag.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// An I/O error to return from a blocking stage when cancelled.
    pub fn check(&self) -> std::io::Result<()> {
        if self.is_cancelled() {
            Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                crate::error::INTERRUPTED,
            ))
        } else {
            Ok(())
        }
    }

    /// Resolves when cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
