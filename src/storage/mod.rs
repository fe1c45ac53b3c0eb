//! Where backups are kept, behind one small blocking interface.
//!
//! Paths are relative and `/`-separated, under the plan's root at the destination
//! (`<destination>/<plan-name>/`). Nothing appears under a final name until it is complete:
//! [`ObjectWriter::commit`] publishes it, dropping the writer discards it.
//! The interface is blocking on purpose: pipelines run on their own threads.

mod direct;
pub mod dry_run;
pub mod ioprio;
pub mod local;
pub mod memory;
pub mod metered;
pub mod nfs;
pub mod s3;

use std::io::{Read, Write};
use std::sync::Arc;

use crate::error::Result;
use crate::plan::{DestinationCfg, Plan};

/// A store of objects (files) under one root.
pub trait Store: Send + Sync {
    /// Where this is, for messages (`/var/backups/dtr/dtr-prod`).
    fn describe(&self) -> String;
    /// Starts an object that becomes visible under `path` only on `commit`.
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Starts one of many objects written together (the blobs of a run), of `size` bytes:
    /// visible under `path` on `commit` like [`Store::create`]'s, but durable only once
    /// [`Store::sync_many`] returned, so that many small objects cost one flush, not one
    /// each. Readers must not take such an object for whole before then (the blob store
    /// checks each object's size against what it must hold).
    fn create_many(&self, path: &str, size: u64) -> Result<Box<dyn ObjectWriter>> {
        let _ = size;
        self.create(path)
    }
    /// Makes durable what [`Store::create_many`] published under `prefix`.
    fn sync_many(&self, prefix: &str) -> Result<()> {
        let _ = prefix;
        Ok(())
    }
    /// Writes a small object atomically, replacing any previous one.
    fn put(&self, path: &str, bytes: &[u8]) -> Result<()>;
    /// Replaces a small object that this store last read or wrote, only if nobody changed it
    /// since (a conditional update where the backend supports it; a plain `put` otherwise).
    fn replace(&self, path: &str, bytes: &[u8]) -> Result<()> {
        self.put(path, bytes)
    }
    /// Writes a small object only if none exists under `path`; `false` when one does.
    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<bool>;
    /// Reads a small object; `None` when absent.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Streams an object.
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>>;
    /// Size of an object; `None` when absent.
    fn size(&self, path: &str) -> Result<Option<u64>>;
    /// Names of the folders directly under `prefix` (`""` for the root).
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>>;
    /// Paths of every object under `prefix`, recursively.
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sized(prefix)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }
    /// Paths and sizes of every object under `prefix`, recursively.
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// The same, one by one in no particular order, without holding them all (a blob store
    /// of a million objects).
    fn walk_sized(&self, prefix: &str, f: &mut dyn FnMut(&str, u64) -> Result<()>) -> Result<()> {
        for (p, s) in self.list_sized(prefix)? {
            f(&p, s)?;
        }
        Ok(())
    }
    /// Replaces the small object at `path` by `new` only if it still holds exactly `old`:
    /// of several callers that read the same `old`, at most one succeeds (`true`); the others
    /// get `false`, as they do when the object holds something else or is gone.
    fn swap(&self, path: &str, old: &[u8], new: &[u8]) -> Result<bool>;
    /// Removes the small object at `path` only if it still holds exactly `old`; `false`
    /// (and nothing removed) otherwise.
    fn delete_if(&self, path: &str, old: &[u8]) -> Result<bool>;
    /// Removes an object; absent is fine.
    fn delete(&self, path: &str) -> Result<()>;
    /// Removes everything under `prefix`.
    fn delete_all(&self, prefix: &str) -> Result<()>;
    /// The server-side copy this store offers, if any (an optional capability: S3 has it).
    fn server_copy(&self) -> Option<&dyn ServerCopy> {
        None
    }
    /// Whether its objects are files that the calling thread reads itself, through this
    /// machine's I/O schedulers, which a reading thread may step aside for (`ioprio`). A
    /// remote store's reads are network requests, some made by threads it starts.
    fn on_local_disk(&self) -> bool {
        false
    }
}

/// Copying objects on the server, without the bytes passing through this machine.
pub trait ServerCopy: Send + Sync {
    /// Which server holds the objects, and who asks: two stores of the same reach can copy
    /// between each other. Names credential references, never their values.
    fn reach(&self) -> &str;
    /// The name the server gives the object at `path`.
    fn absolute(&self, path: &str) -> String;
    /// Copies the object the server names `from` (of the same reach) to `to` in this store.
    fn copy_in(&self, from: &str, to: &str) -> Result<()>;
}

/// Whether objects of `source` can be copied into `dest` on the server.
pub fn can_copy_on_server(source: &dyn Store, dest: &dyn Store) -> bool {
    matches!(
        (source.server_copy(), dest.server_copy()),
        (Some(s), Some(d)) if s.reach() == d.reach()
    )
}

/// Copies `from` of `source` to `to` of `dest` on the server. `Ok(false)`: the two cannot
/// (see [`can_copy_on_server`]); stream the bytes instead.
pub fn copy_on_server(source: &dyn Store, from: &str, dest: &dyn Store, to: &str) -> Result<bool> {
    match (source.server_copy(), dest.server_copy()) {
        (Some(s), Some(d)) if s.reach() == d.reach() => {
            d.copy_in(&s.absolute(from), to)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An object being written.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and visible under its final name.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// The stores of a plan: artifacts at the destination, and state (journal, lock), by default
/// at the destination too (`.state/`), so that another machine can resume a run.
pub struct Stores {
    pub backups: Arc<dyn Store>,
    pub state: Arc<dyn Store>,
}

/// A store over an S3 bucket under the key prefix `root` (image content in S3, say).
pub fn open_s3(cfg: &crate::plan::S3Cfg, root: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(s3::S3Store::new(cfg, root)?))
}

/// Opens the stores of a plan. Creates nothing yet; S3 credentials are resolved here.
pub fn open(plan: &Plan) -> Result<Stores> {
    let name = plan.name.as_str();
    let (backups, default_state): (Arc<dyn Store>, Arc<dyn Store>) = match &plan.destination {
        DestinationCfg::Local { path } => (
            Arc::new(local::LocalStore::new(path.join(name))),
            Arc::new(local::LocalStore::new(path.join(name).join(".state"))),
        ),
        DestinationCfg::S3(cfg) => {
            let root = cfg.plan_root(name);
            (
                Arc::new(s3::S3Store::new(cfg, &root)?),
                Arc::new(s3::S3Store::new(cfg, &format!("{root}/.state"))?),
            )
        }
    };
    let state: Arc<dyn Store> = match &plan.state_path {
        Some(path) => Arc::new(local::LocalStore::new(path.join(name))),
        None => default_state,
    };
    Ok(Stores { backups, state })
}
