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
use crate::archive::extract::Refused;
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
        let bytes = AtomicU64::new(0);
        let copied = super::on_threads(&missing, parallel, 0, |(key, digest), _| {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            let target = blob_store.path(digest);
            let (size, stored) = if server_side {
                copy_on_server(source.as_ref(), dest.as_ref(), &target, key)
            } else {
                copy_blob(source.as_ref(), dest.as_ref(), &target, key, digest, &enc, &ctx.cancel)
            }?;
            bytes.fetch_add(size, Ordering::Relaxed);
            counter.fetch_add(size, Ordering::Relaxed);
            objects_done.fetch_add(1, Ordering::Relaxed);
            Ok((digest.clone(), size, stored))
        })?;

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

/// The restore side: image content back as objects under the bucket and prefix DTR's storage
/// uses (`images.bucket`, `images.prefix`). Each file goes up as its own object, visible
/// under its key only once its content matched its digest (a multipart upload completed
/// after the check). A hard link of the archive becomes a server-side copy. On a restore
/// that resumes its own interrupted work (`resumed`), blobs already there with their size
/// are kept: a blob's key is its digest, and it was completed only once checked.
/// Objects up to this size are put in one request.
const SMALL_OBJECT: u64 = 8 << 20;

pub struct S3Objects {
    pub store: Arc<dyn Store>,
    /// The objects under the prefix when the restore (re)started, with their sizes.
    pub existing: BTreeMap<String, u64>,
    pub resumed: bool,
}

impl S3Objects {
    /// Whether the blob `rel` of `size` bytes is kept as the interrupted restore wrote it.
    fn kept_blob(&self, rel: &str, size: u64) -> bool {
        self.resumed
            && super::restore::blob_digest(rel).is_some()
            && self.existing.get(rel) == Some(&size)
    }
}

impl crate::archive::retar::Members for S3Objects {
    fn dir(&mut self, _rel: &str, _header: &tar::Header) -> std::result::Result<(), Refused> {
        Ok(()) // A bucket has no folders.
    }

    fn file(
        &mut self,
        rel: &str,
        _header: &tar::Header,
        size: u64,
        data: &mut dyn io::Read,
        want: Option<&str>,
    ) -> std::result::Result<String, Refused> {
        use crate::archive::retar::copy_checked;
        if self.kept_blob(rel, size) {
            return copy_checked(data, size, &mut io::sink(), rel, want);
        }
        // Most objects of a registry are small (links, manifests): one request each, the
        // bytes checked in memory first. Larger ones stream as a multipart upload that is
        // completed only after the check.
        if size <= SMALL_OBJECT {
            let mut bytes = Vec::with_capacity(size as usize);
            let sha = copy_checked(data, size, &mut bytes, rel, want)?;
            self.store.put(rel, &bytes).map_err(s3_refused)?;
            return Ok(sha);
        }
        let mut object = self.store.create(rel).map_err(s3_refused)?;
        let sha = copy_checked(data, size, &mut object, rel, want)?;
        object.commit().map_err(s3_refused)?;
        Ok(sha)
    }

    fn link(&mut self, rel: &str, to: &str) -> std::result::Result<(), Refused> {
        match self.store.server_copy() {
            Some(copy) => copy.copy_in(&copy.absolute(to), rel).map_err(s3_refused),
            // Not an S3 store (unit tests): the bytes once more.
            None => {
                let mut from = self.store.open(to).map_err(s3_refused)?;
                let mut object = self.store.create(rel).map_err(s3_refused)?;
                io::copy(&mut from, &mut object).map_err(Refused::Write)?;
                object.commit().map_err(s3_refused)
            }
        }
    }

    fn kept(&self, rel: &str, size: u64) -> bool {
        self.kept_blob(rel, size)
    }
}

fn s3_refused(e: Error) -> Refused {
    Refused::Write(io::Error::other(e.to_string()))
}

/// Restores the image content of `m` as objects into `dest` (the store at DTR's bucket and
/// prefix), whose objects when the restore (re)started are `existing`. A backup that fails
/// its checks half-way leaves nothing of this run: the objects it wrote are deleted again.
pub fn restore_objects(
    backups: &dyn Store,
    m: &manifest::Manifest,
    dec: Option<&crypto::Decryption>,
    dest: Arc<dyn Store>,
    existing: BTreeMap<String, u64>,
    resumed: bool,
    cancel: &crate::cancel::Cancel,
) -> Result<super::restore::Restored> {
    let mut sink = super::restore::Checked {
        to: S3Objects {
            store: dest.clone(),
            existing: existing.clone(),
            resumed,
        },
        seen: crate::archive::retar::Seen::default(),
    };
    let restored = super::restore::restore_into(backups, m, dec, &mut sink, cancel);
    if let Err(Error::Verify(_)) = &restored {
        for key in sink.seen.files() {
            if !existing.contains_key(key) {
                let _ = dest.delete(key);
            }
        }
    }
    restored
}
