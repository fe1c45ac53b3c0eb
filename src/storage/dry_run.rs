//! A store that reads through and changes nothing: the dry runs of commands that delete
//! (`backups prune --dry-run`) run their real logic against it, so that what they report is
//! what they would do, and no `if dry_run` sits in that logic.

use std::io::Read;
use std::sync::Arc;

use super::{ObjectWriter, Store};
use crate::error::{Error, Result};

/// Reads go to the wrapped store; deletes are skipped; writes are refused (a dry run that
/// tried to write would be a bug, and must not pass for a real run).
pub struct DryRun(pub Arc<dyn Store>);

fn refuse(what: &str, path: &str) -> Error {
    Error::internal(format!(
        "a dry run writes nothing: refused to {what} {path}"
    ))
}

impl Store for DryRun {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        Err(refuse("create", path))
    }
    fn put(&self, path: &str, _: &[u8]) -> Result<()> {
        Err(refuse("write", path))
    }
    fn put_new(&self, path: &str, _: &[u8]) -> Result<bool> {
        Err(refuse("write", path))
    }
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.0.get(path)
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
        self.0.open(path)
    }
    fn size(&self, path: &str) -> Result<Option<u64>> {
        self.0.size(path)
    }
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.0.list_dirs(prefix)
    }
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.0.list_sized(prefix)
    }
    fn swap(&self, path: &str, _: &[u8], _: &[u8]) -> Result<bool> {
        Err(refuse("replace", path))
    }
    fn delete_if(&self, _: &str, _: &[u8]) -> Result<bool> {
        Ok(true)
    }
    fn delete(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn delete_all(&self, _: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn a_dry_run_reads_through_and_changes_nothing() {
        let mem = MemoryStore::new();
        mem.put("a/b", b"x").unwrap();
        let dry = DryRun(Arc::new(mem.clone()));
        assert_eq!(dry.get("a/b").unwrap().as_deref(), Some(&b"x"[..]));
        dry.delete("a/b").unwrap();
        dry.delete_all("a").unwrap();
        assert!(matches!(dry.put("a/c", b"y"), Err(Error::Internal(_))));
        assert!(matches!(dry.create("a/d"), Err(Error::Internal(_))));
        assert_eq!(mem.paths(), ["a/b"]);
        assert_eq!(mem.log(), ["put a/b"]);
    }
}
