//! Counters of bytes and objects done, shared by working threads and whoever reports them
//! (`progress::Ticker`). A leaf: the stores count through it without knowing of events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes and objects done so far; clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    pub bytes: Arc<AtomicU64>,
    pub objects: Arc<AtomicU64>,
}

impl Meter {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_object(&self) {
        self.objects.fetch_add(1, Ordering::Relaxed);
    }
}
