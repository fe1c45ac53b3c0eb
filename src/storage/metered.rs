//! A store that counts what is read from it: every octet read through [`Store::open`] and
//! every object opened go to a [`Meter`], so that verification and restore show progress
//! without a counter threaded through their logic. Everything else passes through unchanged.

use std::io::Read;
use std::sync::Arc;

use super::{ObjectWriter, ServerCopy, Store};
use crate::error::Result;
use crate::meter::Meter;

pub struct Metered {
    pub inner: Arc<dyn Store>,
    pub meter: Meter,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Store>, meter: &Meter) -> Arc<dyn Store> {
        Arc::new(Metered {
            inner,
            meter: meter.clone(),
        })
    }
}

struct Counted<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add_bytes(n as u64);
        Ok(n)
    }
}

impl Store for Metered {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        self.inner.create(path)
    }
    fn create_many(&self, path: &str, size: u64) -> Result<Box<dyn ObjectWriter>> {
        self.inner.create_many(path, size)
    }
    fn sync_many(&self, prefix: &str) -> Result<()> {
        self.inner.sync_many(prefix)
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<()> {
        self.inner.put(path, bytes)
    }
    fn replace(&self, path: &str, bytes: &[u8]) -> Result<()> {
        self.inner.replace(path, bytes)
    }
    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        self.inner.put_new(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(path)
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
        let inner = self.inner.open(path)?;
        self.meter.add_object();
        Ok(Box::new(Counted {
            inner,
            meter: self.meter.clone(),
        }))
    }
    fn size(&self, path: &str) -> Result<Option<u64>> {
        self.inner.size(path)
    }
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_dirs(prefix)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.list_sized(prefix)
    }
    fn walk_sized(&self, prefix: &str, f: &mut dyn FnMut(&str, u64) -> Result<()>) -> Result<()> {
        self.inner.walk_sized(prefix, f)
    }
    fn swap(&self, path: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        self.inner.swap(path, old, new)
    }
    fn delete_if(&self, path: &str, old: &[u8]) -> Result<bool> {
        self.inner.delete_if(path, old)
    }
    fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path)
    }
    fn delete_all(&self, prefix: &str) -> Result<()> {
        self.inner.delete_all(prefix)
    }
    fn server_copy(&self) -> Option<&dyn ServerCopy> {
        self.inner.server_copy()
    }
    fn on_local_disk(&self) -> bool {
        self.inner.on_local_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn counts_what_is_read_and_nothing_else() {
        let mem = Arc::new(MemoryStore::default());
        mem.put("a", &[7u8; 1000]).expect("put");
        mem.put("b", &[1u8; 24]).expect("put");
        let meter = Meter::default();
        let store = Metered::wrap(mem, &meter);
        let mut v = Vec::new();
        store
            .open("a")
            .expect("open")
            .read_to_end(&mut v)
            .expect("read");
        assert_eq!(store.get("b").expect("get").map(|b| b.len()), Some(24));
        assert_eq!(store.size("a").expect("size"), Some(1000));
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            (meter.bytes.load(Relaxed), meter.objects.load(Relaxed)),
            (1000, 1)
        );
    }
}
