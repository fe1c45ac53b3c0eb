//! An S3 (or S3-compatible) bucket as a store, through object_store.
//!
//! - Artifacts go up as multipart uploads of 8 MiB parts, at most 4 parts in flight per
//!   object: memory stays near 40 MiB per object whatever its size. An upload is completed
//!   only on `commit`; dropped before, it is aborted, so no partial object ever appears under
//!   a final key. object_store retries requests with backoff on 5xx and timeouts.
//! - The lock is created with a conditional put (`If-None-Match: *`), so that two runners on
//!   two machines cannot both hold it. Small objects (state, manifest) are single PUTs, which
//!   S3 makes visible whole.
//!
//! The `Store` interface is blocking; each call runs on the async runtime (the current one, or
//! a small one of this store's when there is none).

use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use tokio::runtime::{Handle, Runtime};

use super::{ObjectWriter, ServerCopy, Store};
use crate::error::{Error, Result};
use crate::plan::S3Cfg;
use crate::secret;

/// Bytes per multipart part.
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once, per object.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Bytes per ranged GET when reading an object back.
const READ_CHUNK: u64 = 8 << 20;

/// Runs futures for blocking callers.
#[derive(Clone)]
struct Exec {
    handle: Handle,
    /// Our own runtime when the caller had none (kept alive as long as the store).
    _own: Option<Arc<Runtime>>,
}

impl Exec {
    fn new() -> Result<Exec> {
        match Handle::try_current() {
            Ok(handle) => Ok(Exec { handle, _own: None }),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| Error::s3(format!("starting the S3 client runtime: {e}")))?;
                Ok(Exec {
                    handle: rt.handle().clone(),
                    _own: Some(Arc::new(rt)),
                })
            }
        }
    }

    /// Blocks on `f`, from a runtime worker, a blocking-pool thread or a plain thread.
    fn run<F: Future>(&self, f: F) -> F::Output {
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.handle.block_on(f))
            }
            _ => self.handle.block_on(f),
        }
    }
}

pub struct S3Store {
    store: Arc<AmazonS3>,
    /// ETags of the small objects this store last read or wrote (for conditional updates).
    versions: std::sync::Mutex<std::collections::HashMap<String, object_store::UpdateVersion>>,
    /// Key prefix of this store (`<prefix>/<plan>`), without a trailing `/`.
    root: String,
    describe: String,
    /// Endpoint, region, bucket and credential references: see [`ServerCopy::reach`].
    reach: String,
    exec: Exec,
}

impl S3Store {
    /// Connects to the bucket (credentials resolved now: secret references, or the standard
    /// AWS environment and instance chain when the plan gives none). `root` is the key prefix.
    pub fn new(cfg: &S3Cfg, root: &str) -> Result<S3Store> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(cfg.bucket.as_str())
            .with_allow_http(cfg.allow_http);
        if let Some(region) = &cfg.region {
            b = b.with_region(region);
        } else if cfg.endpoint.is_some() {
            b = b.with_region("us-east-1");
        }
        if let Some(endpoint) = &cfg.endpoint {
            b = b.with_endpoint(endpoint.as_str());
        }
        b = b.with_virtual_hosted_style_request(!cfg.path_style && cfg.endpoint.is_none());
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            b = b
                .with_access_key_id(secret::resolve(id)?.expose())
                .with_secret_access_key(secret::resolve(secret)?.expose());
        }
        let store = b.build().map_err(|e| {
            Error::s3(format!(
                "cannot set up S3 access to bucket {}: {e}; check region, endpoint and credentials",
                cfg.bucket
            ))
        })?;
        let root = root.trim_matches('/').to_owned();
        let reference = |r: &Option<crate::plan::SecretRef>| {
            r.as_ref()
                .map_or_else(|| "the AWS chain".to_owned(), |r| r.describe())
        };
        let reach = format!(
            "s3 endpoint {} region {} bucket {} key {} secret {}",
            cfg.endpoint.as_deref().unwrap_or("aws"),
            cfg.region.as_deref().unwrap_or("-"),
            cfg.bucket,
            reference(&cfg.access_key_id),
            reference(&cfg.secret_access_key),
        );
        Ok(S3Store {
            store: Arc::new(store),
            versions: Default::default(),
            describe: format!("s3://{}/{root}", cfg.bucket),
            reach,
            root,
            exec: Exec::new()?,
        })
    }

    fn key(&self, rel: &str) -> ObjPath {
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            ObjPath::from(self.root.as_str())
        } else if self.root.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.root))
        }
    }

    fn rel(&self, key: &ObjPath) -> String {
        let k = key.as_ref();
        match k.strip_prefix(&self.root) {
            Some(rest) if !self.root.is_empty() => rest.trim_start_matches('/').to_owned(),
            _ => k.to_owned(),
        }
    }

    fn fail(&self, doing: &str, rel: &str, e: object_store::Error) -> Error {
        Error::s3(format!("{doing} {}/{rel}: {e}", self.describe))
    }
}

impl S3Store {
    /// Reads a small object with its metadata (ETag, version); `None` when absent.
    fn read_with_meta(
        &self,
        rel: &str,
    ) -> Result<Option<(bytes::Bytes, object_store::ObjectMeta)>> {
        let key = self.key(rel);
        self.exec
            .run(async {
                match self.store.get(&key).await {
                    Ok(r) => {
                        let meta = r.meta.clone();
                        r.bytes().await.map(|b| Some((b, meta)))
                    }
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| self.fail("reading", rel, e))
    }

    fn remember(&self, rel: &str, e_tag: Option<String>, version: Option<String>) {
        if let Ok(mut v) = self.versions.lock() {
            if e_tag.is_some() || version.is_some() {
                v.insert(
                    rel.to_owned(),
                    object_store::UpdateVersion { e_tag, version },
                );
            } else {
                v.remove(rel);
            }
        }
    }
}

/// An object being uploaded in parts.
struct S3Writer {
    upload: Option<WriteMultipart>,
    exec: Exec,
    what: String,
}

impl Write for S3Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(io::Error::other("upload already finished"));
        };
        // Parts are spawned on the runtime; wait while too many are in flight.
        let _guard = self.exec.handle.enter();
        upload.write(buf);
        self.exec
            .run(upload.wait_for_capacity(PARTS_IN_FLIGHT))
            .map(|()| buf.len())
            .map_err(|e| io::Error::other(format!("uploading {}: {e}", self.what)))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        let _guard = self.exec.handle.enter();
        self.exec
            .run(upload.finish())
            .map(|_| ())
            .map_err(|e| Error::s3(format!("completing the upload of {}: {e}", self.what)))
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            let _guard = self.exec.handle.enter();
            if let Err(e) = self.exec.run(upload.abort()) {
                // Drop has no caller to tell; stderr keeps stdout (NDJSON) clean.
                let _ = writeln!(
                    io::stderr(),
                    "warning: could not abort the unfinished upload of {}: {e}; its parts stay in the bucket (billed) until a lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                    self.what
                );
            }
        }
    }
}

/// Reads an object with ranged GETs: memory stays at one chunk.
struct S3Reader {
    store: Arc<AmazonS3>,
    key: ObjPath,
    size: u64,
    pos: u64,
    buf: bytes::Bytes,
    exec: Exec,
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = (self.pos + READ_CHUNK).min(self.size);
            self.buf = self
                .exec
                .run(self.store.get_range(&self.key, self.pos..end))
                .map_err(|e| io::Error::other(format!("reading {}: {e}", self.key)))?;
            self.pos = end;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ServerCopy for S3Store {
    fn reach(&self) -> &str {
        &self.reach
    }

    fn absolute(&self, path: &str) -> String {
        self.key(path).to_string()
    }

    fn copy_in(&self, from: &str, to: &str) -> Result<()> {
        self.exec
            .run(self.store.copy(&ObjPath::from(from), &self.key(to)))
            .map_err(|e| Error::s3(format!("copying {from} to {}/{to}: {e}", self.describe)))
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn server_copy(&self) -> Option<&dyn ServerCopy> {
        Some(self)
    }

    fn create(&self, rel: &str) -> Result<Box<dyn ObjectWriter>> {
        let key = self.key(rel);
        let upload = self
            .exec
            .run(self.store.put_multipart(&key))
            .map_err(|e| self.fail("starting the upload of", rel, e))?;
        Ok(Box::new(S3Writer {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            exec: self.exec.clone(),
            what: format!("{}/{rel}", self.describe),
        }))
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let payload = PutPayload::from(bytes.to_vec());
        let put = self
            .exec
            .run(self.store.put(&self.key(rel), payload))
            .map_err(|e| self.fail("writing", rel, e))?;
        self.remember(rel, put.e_tag, put.version);
        Ok(())
    }

    fn replace(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let known = self.versions.lock().ok().and_then(|v| v.get(rel).cloned());
        let Some(version) = known else {
            return self.put(rel, bytes);
        };
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        match self.exec.run(self.store.put_opts(
            &self.key(rel),
            PutPayload::from(bytes.to_vec()),
            opts,
        )) {
            Ok(put) => {
                self.remember(rel, put.e_tag, put.version);
                Ok(())
            }
            Err(object_store::Error::Precondition { .. }) => Err(Error::s3(format!(
                "{}/{rel} was changed by someone else since this run read it: is another runner using this destination without the lock?",
                self.describe
            ))),
            // A server without conditional updates: the lock alone keeps writers apart.
            Err(object_store::Error::NotImplemented { .. }) => self.put(rel, bytes),
            Err(e) => Err(self.fail("writing", rel, e)),
        }
    }

    fn put_new(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.exec.run(self.store.put_opts(
            &self.key(rel),
            PutPayload::from(bytes.to_vec()),
            opts,
        )) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.fail("creating", rel, e)),
        }
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.read_with_meta(rel)? {
            Some((bytes, meta)) => {
                self.remember(rel, meta.e_tag, meta.version);
                Ok(Some(bytes.to_vec()))
            }
            None => Ok(None),
        }
    }

    fn open(&self, rel: &str) -> Result<Box<dyn Read + Send + Sync>> {
        let key = self.key(rel);
        let meta = self
            .exec
            .run(self.store.head(&key))
            .map_err(|e| self.fail("opening", rel, e))?;
        Ok(Box::new(S3Reader {
            store: self.store.clone(),
            key,
            size: meta.size,
            pos: 0,
            buf: bytes::Bytes::new(),
            exec: self.exec.clone(),
        }))
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        match self.exec.run(self.store.head(&self.key(rel))) {
            Ok(m) => Ok(Some(m.size)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.fail("reading", rel, e)),
        }
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let key = self.key(prefix);
        let listed = self
            .exec
            .run(self.store.list_with_delimiter(Some(&key)))
            .map_err(|e| self.fail("listing", prefix, e))?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let key = self.key(prefix);
        let metas: Vec<object_store::Result<object_store::ObjectMeta>> =
            self.exec.run(self.store.list(Some(&key)).collect());
        let mut out = Vec::new();
        for m in metas {
            let m = m.map_err(|e| self.fail("listing", prefix, e))?;
            out.push((self.rel(&m.location), m.size));
        }
        out.sort();
        Ok(out)
    }

    /// A conditional put (`If-Match` the ETag of the GET that read `old`): S3 lets one of
    /// several such writers win.
    fn swap(&self, rel: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let Some((held, meta)) = self.read_with_meta(rel)? else {
            return Ok(false);
        };
        if held.as_ref() != old {
            return Ok(false);
        }
        let opts = PutOptions {
            mode: PutMode::Update(object_store::UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            }),
            ..Default::default()
        };
        match self.exec.run(self.store.put_opts(
            &self.key(rel),
            PutPayload::from(new.to_vec()),
            opts,
        )) {
            Ok(put) => {
                self.remember(rel, put.e_tag, put.version);
                Ok(true)
            }
            Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.fail("replacing", rel, e)),
        }
    }

    /// S3 has no conditional delete that object_store sends: the object is read and compared,
    /// then deleted. (The window between the two is a round trip; a lock is only ever deleted
    /// by its holder or by `plan unlock`.)
    fn delete_if(&self, rel: &str, old: &[u8]) -> Result<bool> {
        match self.get(rel)? {
            Some(held) if held == old => self.delete(rel).map(|()| true),
            _ => Ok(false),
        }
    }

    fn delete(&self, rel: &str) -> Result<()> {
        self.remember(rel, None, None);
        match self.exec.run(self.store.delete(&self.key(rel))) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(self.fail("deleting", rel, e)),
        }
    }

    fn delete_all(&self, prefix: &str) -> Result<()> {
        if prefix.trim_matches('/').is_empty() {
            return Err(Error::s3("refusing to delete a whole store"));
        }
        for rel in self.list(prefix)? {
            self.delete(&rel)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SecretRef;
    use crate::storage::{can_copy_on_server, memory::MemoryStore};

    fn cfg(bucket: &str, key_var: &str) -> S3Cfg {
        S3Cfg {
            bucket: bucket.parse().unwrap(),
            prefix: Default::default(),
            region: None,
            endpoint: Some("http://127.0.0.1:9".parse().unwrap()),
            access_key_id: Some(SecretRef::Command(vec!["printf".into(), key_var.into()])),
            secret_access_key: Some(SecretRef::Command(vec!["printf".into(), "s".into()])),
            allow_http: true,
            path_style: true,
            parallel: None,
            allow_empty: false,
        }
    }

    /// Building a store connects to nothing: these stores only compare their reach.
    #[test]
    fn server_side_copy_needs_the_same_server_bucket_and_credentials() {
        let a = S3Store::new(&cfg("images", "k"), "registry").unwrap();
        let same = S3Store::new(&cfg("images", "k"), "backups/prod").unwrap();
        let other_bucket = S3Store::new(&cfg("backups", "k"), "prod").unwrap();
        let other_key = S3Store::new(&cfg("images", "k2"), "prod").unwrap();
        assert!(can_copy_on_server(&a, &same));
        assert!(!can_copy_on_server(&a, &other_bucket));
        assert!(!can_copy_on_server(&a, &other_key));
        assert!(!can_copy_on_server(&a, &MemoryStore::new()));
        assert!(!can_copy_on_server(&MemoryStore::new(), &a));
        // Names carry the store's root.
        assert_eq!(a.absolute("docker/x"), "registry/docker/x");
        assert_eq!(same.absolute("blobs/y"), "backups/prod/blobs/y");
    }
}
