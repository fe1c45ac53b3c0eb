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

/// The error a blocking stage returns when the run is cancelled, inside an `io::Error` of
/// kind `Other`. Not `ErrorKind::Interrupted`: that kind means EINTR, which std's
/// `read_exact`, `write_all` and `io::copy` (and this crate's copy loops) retry, so a
/// cancellation reported that way would be retried forever.
#[derive(Debug, Clone, Copy)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dtr-backup: interrupted")
    }
}

impl std::error::Error for Cancelled {}

/// Whether `e` is (or wraps, at any depth) a [`Cancelled`].
pub fn is_cancellation(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<Cancelled>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if inner.is::<Cancelled>() {
                return true;
            }
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    false
}

/// Set once by Ctrl-C or SIGTERM; every step and pipeline stage checks it.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    notify: Notify,
    /// Cancelling the parent cancels this one too (not the reverse).
    parent: Option<Cancel>,
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

    /// A token cancelled with this one, or on its own (one plan of several losing its
    /// lock stops that plan only).
    pub fn child(&self) -> Cancel {
        Cancel(Arc::new(Inner {
            parent: Some(self.clone()),
            ..Inner::default()
        }))
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
            || self.0.parent.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// An I/O error to return from a blocking stage when cancelled ([`Cancelled`]).
    pub fn check(&self) -> std::io::Result<()> {
        if self.is_cancelled() {
            Err(std::io::Error::other(Cancelled))
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
            match &self.0.parent {
                Some(parent) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = Box::pin(parent.cancelled()) => return,
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cancel;

    #[test]
    fn a_child_follows_its_parent_and_not_the_reverse() {
        let parent = Cancel::new();
        let (a, b) = (parent.child(), parent.child());
        a.cancel();
        assert!(a.is_cancelled() && !b.is_cancelled() && !parent.is_cancelled());
        parent.cancel();
        assert!(b.is_cancelled());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), b.cancelled()).await
        })
        .expect("a child's wait ends with its parent");
    }
}
