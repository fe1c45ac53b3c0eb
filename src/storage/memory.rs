//! A store in memory, for unit tests of the logic above the stores (retention, locks, the
//! executor) without disks or servers. It logs every change, so that a test can check the
//! order of writes and deletes.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use super::{ObjectWriter, Store};
use crate::error::{Error, Result, io};

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Vec<u8>>,
    log: Vec<String>,
    /// Objects committed under this prefix get one octet changed (see `damage_commits`).
    damage: Option<String>,
}

/// Objects by path, and the log of changes (`put a/b`, `delete a/b`, `delete_all a`).
#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Mutex<Inner>>);

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The changes made so far, in order.
    pub fn log(&self) -> Vec<String> {
        self.inner().log.clone()
    }

    /// Every path held.
    pub fn paths(&self) -> Vec<String> {
        self.inner().objects.keys().cloned().collect()
    }

    /// From now on, an object committed under `prefix` is kept with its middle octet changed
    /// (`None`: as written again): storage that loses what it acknowledged.
    pub fn damage_commits(&self, prefix: Option<&str>) {
        self.inner().damage = prefix.map(str::to_owned);
    }

    fn insert(&self, path: &str, bytes: Vec<u8>) {
        let mut i = self.inner();
        i.log.push(format!("put {path}"));
        i.objects.insert(path.to_owned(), bytes);
    }
}

/// Whether `path` lies under `prefix` (`""`: everything).
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

struct Writer {
    store: MemoryStore,
    path: String,
    buf: Vec<u8>,
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for Writer {
    fn commit(self: Box<Self>) -> Result<()> {
        let mut buf = self.buf;
        let damaged = self.store.inner().damage.clone();
        if damaged.is_some_and(|d| under(&self.path, &d)) && !buf.is_empty() {
            let mid = buf.len() / 2;
            buf[mid] ^= 0x01;
        }
        self.store.insert(&self.path, buf);
        Ok(())
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(Writer {
            store: self.clone(),
            path: path.to_owned(),
            buf: Vec::new(),
        }))
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<()> {
        self.insert(path, bytes.to_vec());
        Ok(())
    }
    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        if self.inner().objects.contains_key(path) {
            return Ok(false);
        }
        self.insert(path, bytes.to_vec());
        Ok(true)
    }
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner().objects.get(path).cloned())
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
        let bytes = self.get(path)?.ok_or_else(|| {
            io(
                std::io::ErrorKind::NotFound.into(),
                format!("opening {path}"),
            )
        })?;
        Ok(Box::new(Cursor::new(bytes)))
    }
    fn size(&self, path: &str) -> Result<Option<u64>> {
        Ok(self.inner().objects.get(path).map(|b| b.len() as u64))
    }
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        let mut dirs: Vec<String> = self
            .inner()
            .objects
            .keys()
            .filter(|p| under(p, prefix))
            .filter_map(|p| {
                let rest = if prefix.is_empty() {
                    p.as_str()
                } else {
                    &p[prefix.len() + 1..]
                };
                rest.split_once('/').map(|(d, _)| d.to_owned())
            })
            .collect();
        dirs.dedup();
        Ok(dirs)
    }
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .inner()
            .objects
            .iter()
            .filter(|(p, _)| under(p, prefix))
            .map(|(p, b)| (p.clone(), b.len() as u64))
            .collect())
    }
    fn swap(&self, path: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let mut i = self.inner();
        if i.objects.get(path).is_some_and(|b| b == old) {
            i.log.push(format!("put {path}"));
            i.objects.insert(path.to_owned(), new.to_vec());
            return Ok(true);
        }
        Ok(false)
    }
    fn delete_if(&self, path: &str, old: &[u8]) -> Result<bool> {
        let mut i = self.inner();
        if i.objects.get(path).is_some_and(|b| b == old) {
            i.log.push(format!("delete {path}"));
            i.objects.remove(path);
            return Ok(true);
        }
        Ok(false)
    }
    fn delete(&self, path: &str) -> Result<()> {
        let mut i = self.inner();
        i.log.push(format!("delete {path}"));
        i.objects.remove(path);
        Ok(())
    }
    fn delete_all(&self, prefix: &str) -> Result<()> {
        if prefix.trim_matches('/').is_empty() {
            return Err(Error::internal("refusing to delete a whole store"));
        }
        let mut i = self.inner();
        i.log.push(format!("delete_all {prefix}"));
        i.objects.retain(|p, _| !under(p, prefix));
        Ok(())
    }
}
