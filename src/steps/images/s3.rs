//! Images kept by DTR in S3: an incremental copy, object by object.
//!
//! Registry blobs (`docker/registry/v2/blobs/sha256/<ab>/<digest>/data`) are content-addressed
//! and immutable: they go to the plan's shared blob store at the destination
//! (`<plan>/blobs/<store>/sha256/<ab>/<digest>`, see `blob_store`), and only the ones not already there are copied, each
//! checked against its digest on the way and encrypted on its own. Everything else
//! (repositories, `_manifests`, links: small and mutable) is copied in full, as the images
//! artifact of the backup (a tar laid out like the other image sources). The backup's manifest
//! lists every object of the snapshot, so that it restores on its own with the blob store.
//!
//! When the destination is the same bucket behind the same endpoint and credentials and the
//! plan does not encrypt, blobs are copied server-side (no bytes through this machine).
//! Otherwise they stream, `images.parallel` at once (default 4). A killed run resumes at
//! object granularity: blobs already in the blob store are not copied again.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::ImageSource;
use crate::archive::HashReader;
use crate::blob_store::BlobStore;
use crate::crypto::{self, Encryption};
use crate::error::{Error, Result, io};
use crate::events::Event;
use crate::manifest::{self, SnapshotObject};
use crate::plan::S3Cfg;
use crate::steps::stream::store_stream;
use crate::steps::{Ctx, Outcome, blocking};
use crate::storage::{self, Store};

/// Blobs copied at once unless `images.parallel` says otherwise.
pub const DEFAULT_PARALLEL: usize = 4;

/// Copies one blob into the blob store, checking its digest; returns (size, stored size).
fn copy_blob(
    source: &dyn Store,
    dest: &dyn Store,
    target: &str,
    key: &str,
    digest: &str,
    enc: &Encryption,
    cancel: &crate::cancel::Cancel,
) -> Result<(u64, u64)> {
    let mut reader = HashReader::new(source.open(key)?);
    let mut object = crate::archive::HashWriter::new(SyncWrite(Mutex::new(dest.create(target)?)));
    {
        let mut sealed =
            crypto::encrypt(&mut object, enc).map_err(|e| io(e, format!("encrypting {key}")))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            crate::failpoint::hit("blob.copy");
            cancel.check().map_err(|e| io(e, "copying blobs"))?;
            let n = io::Read::read(&mut reader, &mut buf)
                .map_err(|e| io(e, format!("reading {key}")))?;
            if n == 0 {
                break;
            }
            sealed
                .write_all(&buf[..n])
                .map_err(|e| io(e, format!("writing {target}")))?;
        }
        sealed
            .finish()
            .map_err(|e| io(e, format!("writing {target}")))?;
    }
    let (sha, size) = reader
        .finish()
        .map_err(|e| io(e, format!("reading {key}")))?;
    if sha != digest {
        // Dropping the object aborts the upload: nothing lands under the digest's name.
        return Err(Error::source(format!(
            "the source blob {key} hashes to {sha}, not to its digest: the registry storage is damaged"
        )));
    }
    let (object, _, stored) = object.finish();
    object
        .0
        .into_inner()
        .map_err(|_| Error::internal("a blob writer was poisoned"))?
        .commit()?;
    Ok((size, stored))
}

/// Copies one blob on the server (plaintext destination, same reach); returns (size, stored
/// size), the same here. The server copies what the source holds: the digest is checked by
/// `verify --read-data`, not on the way.
fn copy_on_server(
    source: &dyn Store,
    dest: &dyn Store,
    target: &str,
    key: &str,
) -> Result<(u64, u64)> {
    if !storage::copy_on_server(source, key, dest, target)? {
        return Err(Error::internal("the server-side copy became unavailable"));
    }
    let size = dest.size(target)?.unwrap_or(0);
    Ok((size, size))
}

pub struct S3 {
    pub cfg: S3Cfg,
}

impl ImageSource for S3 {
    fn input(&self, volume: &str) -> String {
        self.describe(volume)
    }

    fn describe(&self, _volume: &str) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.cfg.prefix)
    }

    fn output(&self, backup_folder: &str, _artifact: &str) -> String {
        format!(
            "{backup_folder}objects/ and {}blobs/sha256/ (shared)",
            backup_folder.trim_end_matches("<backup-id>/")
        )
    }

    fn back_up(&self, ctx: Ctx) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(run(ctx, self.cfg.clone()))
    }
}

async fn run(ctx: Ctx, cfg: S3Cfg) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let volume = super::volume_name(&ctx)?;
    let name = manifest::images_artifact(&plan, &volume);
    let path = ctx.backup_path(&name);
    let progress = ctx.progress(None);
    let counter = progress.bytes.clone();
    let objects_done = progress.objects.clone();
    let parallel = cfg.parallel.map_or(DEFAULT_PARALLEL, |p| p.max(1) as usize);
    let worker = ctx.clone();
    let (artifact_path, volume2) = (path.clone(), volume.clone());
    let outcome = blocking(move || {
        let ctx = worker;
        let source = storage::open_s3(&cfg, cfg.prefix.as_str())?;
        let dest = ctx.stores.backups.clone();
        // Same server and credentials, and nothing to encrypt: the server copies.
        let server_side = !ctx.secrets.encryption.is_encrypted()
            && storage::can_copy_on_server(source.as_ref(), dest.as_ref());
        let enc = Arc::new(ctx.secrets.encryption.clone());
        let listed = source.list_sized("docker/registry/v2")?;
        if listed.is_empty() && !cfg.allow_empty {
            return Err(Error::source(format!(
                "{} holds no docker/registry/v2 objects: check images.bucket and images.prefix (DTR's rootdirectory)",
                source.describe()
            )));
        }
        // The blob store of the plan's encryption, and the stored size of every blob already
        // in it (listed once). Blobs encrypted otherwise are not reused.
        let blob_store = BlobStore::for_encryption(dest.as_ref(), &enc)?;
        let mut stored_sizes: BTreeMap<String, u64> = blob_store.list(dest.as_ref())?;
        let mut blobs = Vec::new();
        let mut small = Vec::new();
        for (key, size) in listed {
            match super::restore::blob_digest(&key) {
                Some(digest) => blobs.push((key.clone(), digest, size)),
                None => small.push((key, size)),
            }
        }
        let missing: Vec<(String, String)> = blobs
            .iter()
            .filter(|(_, d, _)| !stored_sizes.contains_key(d))
            .map(|(k, d, _)| (k.clone(), d.clone()))
            .collect();

        // Blobs: bounded parallel copies.
        let queue = Mutex::new(missing.clone());
        let copied: Mutex<Vec<(String, u64, u64)>> = Mutex::new(Vec::new());
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let bytes = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..parallel.min(missing.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                            return;
                        }
                        if ctx.cancel.is_cancelled() {
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(Error::Interrupted);
                            }
                            return;
                        }
                        let Some((key, digest)) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                            return;
                        };
                        let target = blob_store.path(&digest);
                        let result = if server_side {
                            copy_on_server(source.as_ref(), dest.as_ref(), &target, &key)
                        } else {
                            copy_blob(source.as_ref(), dest.as_ref(), &target, &key, &digest, &enc, &ctx.cancel)
                        };
                        match result {
                            Ok((size, stored)) => {
                                bytes.fetch_add(size, Ordering::Relaxed);
                                counter.fetch_add(size, Ordering::Relaxed);
                                objects_done.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut c) = copied.lock() {
                                    c.push((digest, size, stored));
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or(None) {
            return Err(e);
        }
        let copied = copied.into_inner().unwrap_or_default();

        stored_sizes.extend(copied.iter().map(|(d, _, stored)| (d.clone(), *stored)));
        let mut objects: Vec<SnapshotObject> = blobs
            .iter()
            .map(|(key, digest, size)| SnapshotObject {
                key: key.clone(),
                size: *size,
                sha256: digest.clone(),
                blob: Some(blob_store.path(digest)),
                stored_size: stored_sizes.get(digest).copied(),
            })
            .collect();

        // Everything else: one tar artifact, each object hashed on the way.
        let small_objects: Arc<Mutex<Vec<SnapshotObject>>> = Arc::new(Mutex::new(Vec::new()));
        let recorded = small_objects.clone();
        let src = source.clone();
        let prefix = format!("{volume2}/_data");
        let tar_cancel = ctx.cancel.clone();
        let written = store_stream(
            move |pipe| {
                let mut b = tar::Builder::new(pipe);
                let now = crate::clock::now_unix().max(0) as u64;
                let dir = |b: &mut tar::Builder<_>, p: &str| -> io::Result<()> {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_mtime(now);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty())
                };
                dir(&mut b, volume_of(&prefix))?;
                dir(&mut b, &prefix)?;
                for (key, size) in small {
                    tar_cancel.check()?;
                    let reader = src.open(&key).map_err(|e| io::Error::other(e.to_string()))?;
                    let mut hashed = HashReader::new(io::Read::take(reader, size));
                    let mut h = tar::Header::new_gnu();
                    h.set_mode(0o644);
                    h.set_mtime(now);
                    h.set_size(size);
                    b.append_data(&mut h, format!("{prefix}/{key}"), &mut hashed)?;
                    let (sha, n) = hashed.finish()?;
                    if n != size {
                        return Err(io::Error::other(format!("{key} changed while it was read; run again")));
                    }
                    if let Ok(mut r) = recorded.lock() {
                        r.push(SnapshotObject {
                            key,
                            size,
                            sha256: sha,
                            blob: None,
                            stored_size: None,
                        });
                    }
                }
                b.into_inner().map(drop)
            },
            dest.as_ref(),
            &artifact_path,
            &enc,
            &ctx.cancel,
            Arc::new(AtomicU64::new(0)),
        )?;
        let small_objects = std::mem::take(&mut *small_objects.lock().map_err(|_| Error::internal("poisoned"))?);
        ctx.reporter.emit(&Event::ObjectsCopied {
            step: ctx.step_id.clone(),
            copied: copied.len() as u64,
            already_present: (blobs.len() - copied.len()) as u64,
            bytes_copied: bytes.load(Ordering::Relaxed),
            small_objects: small_objects.len() as u64,
            server_side,
        });
        objects.extend(small_objects);
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((written, objects))
    })
    .await?;
    drop(progress);
    let (written, objects) = outcome;
    let mut done = super::outcome(&ctx, name, path, written, &volume);
    done.objects = objects;
    Ok(done)
}

/// A writer made `Sync` (the OpenPGP writer requires it of its sink); never contended.
struct SyncWrite<W>(Mutex<W>);

impl<W: Write> Write for SyncWrite<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .get_mut()
            .map_err(|_| io::Error::other("poisoned"))?
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0
            .get_mut()
            .map_err(|_| io::Error::other("poisoned"))?
            .flush()
    }
}

/// `dtr-registry-x` of `dtr-registry-x/_data`.
fn volume_of(prefix: &str) -> &str {
    prefix.split('/').next().unwrap_or(prefix)
}
