//! Incremental image content, whatever the source: the registry's blobs go to the plan's
//! blob store (`blob_store`), each once; a backup lists the ones it keeps (`snapshot`).
//!
//! A source says which blobs it has (digest and size, sorted) and opens one by digest;
//! [`keep`] learns what the store holds (one listing), copies only what it lacks (each blob
//! checked against its digest on the way, encrypted on its own, both cores at work), makes
//! them durable with one flush, and writes the backup's list. A blob the store holds but
//! whose object cannot hold its content (cut short by a crash before the flush) is copied
//! again. A blob listed by the source but gone when it is read (garbage collection since
//! the listing) is reported by name and left out: verification then says whether the
//! backup's metadata needs it.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use xxhash_rust::xxh3::Xxh3Default;

use crate::archive::pipe::Copying;
use crate::blob_store::BlobStore;
use crate::cancel::Cancel;
use crate::crypto::{Encryption, Session};
use crate::error::{Error, Result, io};
use crate::events::Event;
use crate::manifest::{Artifact, ArtifactKind};
use crate::snapshot::{self, Blob, Sha};
use crate::steps::{Ctx, FileRef, Outcome, blocking};
use crate::storage::{Store, ioprio};

/// One blob a source holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub digest: Sha,
    pub size: u64,
}

/// Where the blobs come from.
pub trait BlobSource: Send + Sync + 'static {
    /// Every blob the source holds, sorted by digest, each once; and what lies among them
    /// that is no blob (reported, not kept).
    fn list(&self, cancel: &Cancel) -> Result<(Vec<Listed>, Vec<String>)>;
    /// Opens the blob `digest` for reading; `None` when it is gone.
    fn open(&self, digest: &Sha) -> io::Result<Option<Box<dyn Read + Send + '_>>>;
    /// Where the blob `digest` is, for messages.
    fn describe(&self, digest: &Sha) -> String;
}

/// What [`keep`] did.
#[derive(Debug, Default)]
pub struct Kept {
    /// The list written: its size and sha256, for the manifest.
    pub list: Option<snapshot::Written>,
    /// Blobs copied into the store by this run, and their bytes.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Blobs the store held already.
    pub reused: u64,
    /// Blobs listed by the source but gone when read, by where they were.
    pub gone: Vec<String>,
}

/// The blobs of `source` into the blob store and the backup's list into `done` (an images
/// step's outcome, with its archive already): the second half of an incremental images step.
pub async fn back_up_blobs(ctx: &Ctx, source: impl BlobSource, done: &mut Outcome) -> Result<()> {
    let list_path = ctx.backup_path(snapshot::FILE);
    let progress = ctx.progress(None);
    let counter = progress.bytes.clone();
    let (stores, enc, cancel, path) = (
        ctx.stores.clone(),
        ctx.secrets.encryption.clone(),
        ctx.cancel.clone(),
        list_path.clone(),
    );
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (kept, odd) = blocking(move || {
        let (listed, odd) = source.list(&cancel)?;
        let kept = keep(
            &listed,
            &source,
            stores.backups.as_ref(),
            &enc,
            &path,
            workers,
            &counter,
            &cancel,
        )?;
        Ok((kept, odd))
    })
    .await?;
    drop(progress);
    for o in odd.iter().take(20) {
        ctx.warn(format!(
            "{o} is not a registry blob: left out of the backup"
        ));
    }
    for g in &kept.gone {
        ctx.warn(format!(
            "the blob {g} was listed but is gone (garbage collection during the backup): left out; verification says whether the metadata references it"
        ));
    }
    ctx.reporter.emit(&Event::Log {
        step: ctx.step_id.clone(),
        message: format!(
            "blobs: {} copied ({} bytes), {} already in the blob store",
            kept.copied, kept.copied_bytes, kept.reused
        ),
    });
    let list = kept
        .list
        .ok_or_else(|| Error::internal("the blob list was not written"))?;
    done.artifacts.push(Artifact {
        kind: ArtifactKind::Blobs,
        path: snapshot::FILE.to_owned(),
        size: list.size,
        sha256: list.sha256,
        encrypted: false,
    });
    done.files.push(FileRef::new(list_path, list.size));
    Ok(())
}

/// Whether a stored object of `stored` octets can hold a blob of `size` (an encrypted one
/// carries at least its random prefix and its integrity check).
pub(super) fn plausible(stored: u64, size: u64, encrypted: bool) -> bool {
    if encrypted {
        stored >= size + 18 + 22
    } else {
        stored == size
    }
}

/// Keeps every blob of `listed` (sorted by digest, each once) in the blob store of `enc` in
/// `dest`, and writes the backup's list at `list_path`. `workers` blobs are copied at once;
/// `bytes` counts what is read, for progress.
#[allow(clippy::too_many_arguments)]
pub fn keep(
    listed: &[Listed],
    source: &dyn BlobSource,
    dest: &dyn Store,
    enc: &Encryption,
    list_path: &str,
    workers: usize,
    bytes: &AtomicU64,
    cancel: &Cancel,
) -> Result<Kept> {
    let store = BlobStore::for_encryption(dest, enc)?;
    let encrypted = enc.is_encrypted();
    // What the store holds: one listing, by digest.
    let held = store.held(dest, snapshot::Listing::Blobs)?;
    let stored_size = |d: &Sha| {
        held.binary_search_by(|(h, _)| h.cmp(d))
            .ok()
            .map(|i| held[i].1)
    };
    // The blobs the store lacks, largest first: the cores finish together instead of one
    // copying the last large blob alone.
    let mut order: Vec<usize> = (0..listed.len())
        .filter(|&i| {
            let b = &listed[i];
            stored_size(&b.digest).is_none_or(|s| !plausible(s, b.size, encrypted))
        })
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(listed[i].size));

    // One session for the run (one key derivation), `workers` blobs at once.
    let session = Session::new(enc).map_err(|e| io(e, "starting the encryption"))?;
    // Each object is read back as soon as it is published, by a thread of its own, while the
    // next ones are encrypted: reading the device overlaps the ciphers' work.
    let (written, to_read) = mpsc::sync_channel::<(String, Stored)>(workers.max(1) * 8);
    // While the copy runs, the read-back steps aside for its writes (`storage::ioprio`).
    let copying = AtomicBool::new(true);
    let local = dest.on_local_disk();
    let (done, bad) = std::thread::scope(|outer| {
        let copying = &copying;
        let reader = outer.spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut bad = Vec::new();
            let mut class = Class::Default;
            for (path, stored) in to_read {
                class = class.next(local, copying.load(Ordering::Acquire));
                match read_back(dest, &path, stored, &mut buf, cancel) {
                    Ok(None) => {}
                    Ok(Some(what)) => bad.push((path, what)),
                    // Cancelled: the copy stops too.
                    Err(_) => break,
                }
            }
            bad
        });
        // Each copied blob's index and stored size; `None` for one gone from the source.
        let done = super::on_threads(&order, workers, 1 << 20, |&i, buf| {
            cancel.check().map_err(|e| io(e, "copying blobs"))?;
            let copied = copy(
                &listed[i], source, dest, &store, &session, buf, bytes, cancel,
            )?;
            Ok((
                i,
                copied.map(|(path, stored)| {
                    // The reader is gone only when cancelled.
                    let _ = written.send((path, stored));
                    stored.size
                }),
            ))
        });
        copying.store(false, Ordering::Release);
        drop(written);
        (done, reader.join().unwrap_or_default())
    });
    drop(order);
    let mut done = done?;
    if cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    if !bad.is_empty() {
        // Removed, so that the next run writes them again instead of trusting them.
        for (path, _) in &bad {
            dest.delete(path)?;
        }
        let what: Vec<String> = bad.into_iter().map(|(_, w)| w).collect();
        return Err(not_as_written(&what));
    }
    // Durable before the list names them.
    dest.sync_many(&store.prefix())?;
    // By index: every blob the store lacked, with what its copy stored (`None`: gone).
    done.sort_unstable_by_key(|&(i, _)| i);

    let mut kept = Kept::default();
    let mut entries = Vec::with_capacity(listed.len());
    let mut lacked = done.iter().peekable();
    for (i, b) in listed.iter().enumerate() {
        let (stored, fresh_now) = match lacked.next_if(|(j, _)| *j == i) {
            Some(&(_, Some(stored))) => {
                kept.copied += 1;
                kept.copied_bytes += b.size;
                (stored, true)
            }
            // Gone from the source: not in this backup.
            Some(&(_, None)) => {
                kept.gone.push(source.describe(&b.digest));
                continue;
            }
            None => {
                kept.reused += 1;
                (stored_size(&b.digest).unwrap_or(0), false)
            }
        };
        entries.push(Blob {
            digest: b.digest,
            size: b.size,
            stored,
            fresh: fresh_now,
        });
    }
    drop(done);
    kept.gone.sort();
    let base = snapshot::previous_base(dest, &store, snapshot::Listing::Blobs);
    kept.list = Some(snapshot::write(
        dest,
        list_path,
        &store,
        snapshot::Listing::Blobs,
        &entries,
        base,
    )?);
    Ok(kept)
}

/// Copies one blob into the store; `None` when the source no longer has it. Returns the
/// stored object's path and what it holds.
#[allow(clippy::too_many_arguments)]
fn copy(
    b: &Listed,
    source: &dyn BlobSource,
    dest: &dyn Store,
    store: &BlobStore,
    session: &Session,
    buf: &mut [u8],
    bytes: &AtomicU64,
    cancel: &Cancel,
) -> Result<Option<(String, Stored)>> {
    let what = source.describe(&b.digest);
    let Some(reader) = source
        .open(&b.digest)
        .map_err(|e| io(e, format!("opening {what}")))?
    else {
        return Ok(None);
    };
    let digest = snapshot::sha_hex(&b.digest);
    let target = store.path(&digest);
    let mut reader = Noting::new(reader);
    let mut object = Counted::new(dest.create_many(&target, b.size)?);
    let failed = |reader: &Noting<_>, e| {
        if reader.failed {
            io(e, format!("reading {what}"))
        } else {
            io(e, format!("writing {target}"))
        }
    };
    // Hashed, checked and encrypted in one pass, straight from the source's reads.
    let mut sealed = session
        .digesting(Copying(&mut object))
        .map_err(|e| io(e, format!("encrypting {what}")))?;
    let mut read = 0u64;
    loop {
        if read > 0 {
            crate::failpoint::hit("blob.middle");
        }
        cancel.check().map_err(|e| io(e, "copying blobs"))?;
        // What the listing says is left, and one octet more to see a blob that grew; a small
        // blob's message then grows its buffer to the blob, not to a whole chunk. Past the
        // listed size, whole reads, to tell how long it is.
        let max = match b.size.checked_sub(read) {
            Some(left) => usize::try_from(left + 1)
                .unwrap_or(usize::MAX)
                .min(buf.len()),
            None => buf.len(),
        };
        let n = sealed
            .read_from(&mut reader, max, buf)
            .map_err(|e| failed(&reader, e))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let (_, sha, size) = sealed.finish().map_err(|e| failed(&reader, e))?;
    let sha = crate::hex::encode(&sha);
    if sha != digest || size != b.size {
        // Dropping the object discards it: nothing lands under the digest's name.
        return Err(Error::source(format!(
            "{what} is {size} bytes hashing to sha256:{sha}, not the {} bytes of its digest: the registry storage is damaged or the blob changed while it was read; run `docker/registry garbage-collect --dry-run` or restore that blob, then back up again",
            b.size
        )));
    }
    let stored = object.commit()?;
    crate::failpoint::hit("blob.committed");
    Ok(Some((target, stored)))
}

/// A reader that notes whether one of its reads failed: the source's failure, told apart
/// from the destination's when both happen inside one call.
struct Noting<R> {
    inner: R,
    failed: bool,
}

impl<R> Noting<R> {
    fn new(inner: R) -> Self {
        Noting {
            inner,
            failed: false,
        }
    }
}

impl<R: Read> Read for Noting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        self.failed |= r.is_err();
        r
    }
}

/// What an object holds once written: its size and a check of its octets (XXH3-128, a
/// fast hash to find octets the storage changed or lost, not a defence against tampering:
/// that is the digest's and the integrity protection's work), to compare with what is read
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stored {
    pub size: u64,
    pub check: u128,
}

/// Counts and checks what goes into an object (behind a mutex: the cipher's writer must be
/// `Sync`).
pub(super) struct Counted {
    inner: Mutex<Box<dyn crate::storage::ObjectWriter>>,
    n: u64,
    check: Xxh3Default,
}

impl Counted {
    pub(super) fn new(object: Box<dyn crate::storage::ObjectWriter>) -> Counted {
        Counted {
            inner: Mutex::new(object),
            n: 0,
            check: Xxh3Default::new(),
        }
    }

    /// Publishes the object under its name; returns what it holds.
    pub(super) fn commit(self) -> Result<Stored> {
        let stored = Stored {
            size: self.n,
            check: self.check.digest128(),
        };
        self.inner
            .into_inner()
            .map_err(|_| Error::internal("an object writer was poisoned"))?
            .commit()?;
        Ok(stored)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = self
            .inner
            .get_mut()
            .map_err(|_| io::Error::other("a blob writer was poisoned"))?;
        let n = inner.write(buf)?;
        self.check.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner
            .get_mut()
            .map_err(|_| io::Error::other("a blob writer was poisoned"))?
            .flush()
    }
}

/// The read-back's I/O class over a run (`storage::ioprio`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    /// As it started.
    Default,
    /// Idle, while the copy runs: its writes take the device first.
    Idle,
    /// Back to the default once the copy was done (or idle refused): not changed again.
    Settled,
}

impl Class {
    /// The class to read the next object at: idle while the copy runs, when the store's files
    /// are read through this machine's schedulers; the default once the copy is done, so that
    /// what is left of the read-back waits for nobody.
    fn next(self, local: bool, copying: bool) -> Class {
        match self {
            Class::Default if local && copying => {
                if ioprio::idle_io() {
                    Class::Idle
                } else {
                    Class::Settled
                }
            }
            Class::Idle if !copying => {
                ioprio::default_io();
                Class::Settled
            }
            other => other,
        }
    }
}

/// Reads the object at `path` back from `dest`, whole, and compares it with what was written:
/// `Ok(None)` when it matches, `Ok(Some(what))` when it does not (or cannot be read).
pub(super) fn read_back(
    dest: &dyn Store,
    path: &str,
    want: Stored,
    buf: &mut [u8],
    cancel: &Cancel,
) -> Result<Option<String>> {
    let mut reader = match dest.open(path) {
        Ok(r) => r,
        Err(e) => return Ok(Some(format!("{path} cannot be read back: {e}"))),
    };
    let mut check = Xxh3Default::new();
    let mut n = 0u64;
    loop {
        cancel.check().map_err(|e| io(e, "reading back"))?;
        match reader.read(buf) {
            Ok(0) => break,
            Ok(k) => {
                check.update(&buf[..k]);
                n += k as u64;
                crate::failpoint::hit("blob.read-back");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok(Some(format!("{path} cannot be read back: {e}"))),
        }
    }
    Ok(if n != want.size {
        Some(format!(
            "{path} reads back as {n} bytes, {} written",
            want.size
        ))
    } else if check.digest128() != want.check {
        Some(format!(
            "{path} reads back with other octets than were written"
        ))
    } else {
        None
    })
}

/// The error for objects that did not read back as written, after they were removed.
pub(super) fn not_as_written(bad: &[String]) -> Error {
    Error::Verify(format!(
        "{} object(s) of the blob store read back differently from what was written, so they were removed and the backup is not complete: {}; check the destination's storage (disk, filesystem, network mount or S3 gateway), then run the backup again (it writes them again)",
        bad.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto;
    use crate::secret::Secret;
    use crate::storage::memory::MemoryStore;
    use std::collections::BTreeMap;

    struct Blobs(Mutex<BTreeMap<Sha, Vec<u8>>>);

    impl BlobSource for Blobs {
        fn list(&self, _: &Cancel) -> Result<(Vec<Listed>, Vec<String>)> {
            Ok((Vec::new(), Vec::new()))
        }
        fn open(&self, d: &Sha) -> io::Result<Option<Box<dyn Read + Send + '_>>> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(d)
                .cloned()
                .map(|v| Box::new(io::Cursor::new(v)) as Box<dyn Read + Send>))
        }
        fn describe(&self, d: &Sha) -> String {
            snapshot::registry_key(d)
        }
    }

    fn source(contents: &[&[u8]]) -> (Blobs, Vec<Listed>) {
        let mut map = BTreeMap::new();
        for c in contents {
            let d = snapshot::parse_sha(&crate::archive::sha256_hex(c)).unwrap();
            map.insert(d, c.to_vec());
        }
        let listed = map
            .iter()
            .map(|(d, v)| Listed {
                digest: *d,
                size: v.len() as u64,
            })
            .collect();
        (Blobs(Mutex::new(map)), listed)
    }

    fn read_list(store: &MemoryStore, path: &str) -> Vec<Blob> {
        snapshot::open(store, path)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap()
    }

    #[test]
    fn only_what_the_store_lacks_is_copied_and_a_gone_blob_is_named() {
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("blobs"));
        let n = AtomicU64::new(0);
        let cancel = Cancel::new();
        let (src, listed) = source(&[b"one", b"two", b"three"]);
        let first = keep(&listed, &src, &dest, &enc, "b1/blobs.list", 2, &n, &cancel).unwrap();
        assert_eq!((first.copied, first.reused), (3, 0));
        assert_eq!(read_list(&dest, "b1/blobs.list").len(), 3);

        // One more blob, and one listed that is gone when read.
        let (src, mut listed) = source(&[b"one", b"two", b"three", b"four"]);
        let ghost = Listed {
            digest: [0xee; 32],
            size: 5,
        };
        listed.push(ghost);
        listed.sort_by_key(|l| l.digest);
        let before = n.load(Ordering::Relaxed);
        let second = keep(&listed, &src, &dest, &enc, "b2/blobs.list", 2, &n, &cancel).unwrap();
        assert_eq!((second.copied, second.reused), (1, 3));
        assert_eq!(
            n.load(Ordering::Relaxed) - before,
            4,
            "only `four` was read"
        );
        assert_eq!(second.gone.len(), 1);
        assert!(second.gone[0].contains(&"ee".repeat(32)));
        let list = read_list(&dest, "b2/blobs.list");
        assert_eq!(list.len(), 4);
        // Only what this run copied is marked as its own.
        assert_eq!(list.iter().filter(|b| b.fresh).count(), 1);
        assert!(list.iter().all(|b| b.digest != ghost.digest));

        // Each stored blob decrypts to its content.
        let dec = crypto::Decryption::Passphrase(Secret::for_test("blobs"));
        let store = BlobStore::for_encryption(&dest, &enc).unwrap();
        for b in &list {
            let stored = dest
                .get(&store.path(&snapshot::sha_hex(&b.digest)))
                .unwrap()
                .unwrap();
            assert_eq!(stored.len() as u64, b.stored);
            let mut plain = Vec::new();
            crypto::decrypt(&stored[..], &dec)
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(
                crate::archive::sha256_hex(&plain),
                snapshot::sha_hex(&b.digest)
            );
        }
    }

    #[test]
    fn an_object_that_reads_back_otherwise_is_removed_and_fails_the_run() {
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("read back"));
        let (src, listed) = source(&[b"one", b"two", b"three"]);
        let run = |list: &str| {
            keep(
                &listed,
                &src,
                &dest,
                &enc,
                list,
                2,
                &AtomicU64::new(0),
                &Cancel::new(),
            )
        };
        // Storage that changes what it acknowledged.
        dest.damage_commits(Some("blobs"));
        let err = run("a/blobs.list").unwrap_err();
        assert!(matches!(err, Error::Verify(_)), "{err:?}");
        assert!(err.to_string().contains("read back differently"), "{err}");
        assert_eq!(
            dest.log()
                .iter()
                .filter(|l| l.starts_with("delete blobs/"))
                .count(),
            3,
            "each damaged object is removed: {:?}",
            dest.log()
        );
        assert!(!dest.paths().iter().any(|p| p.contains("/sha256/")));
        assert!(
            dest.get("a/blobs.list").unwrap().is_none(),
            "no list names them"
        );

        // Once the storage keeps what it is given, the next run writes them again.
        dest.damage_commits(None);
        let kept = run("b/blobs.list").unwrap();
        assert_eq!((kept.copied, kept.reused), (3, 0));
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused_and_not_stored() {
        let encryptions = [
            Encryption::None,
            Encryption::Passphrase(Secret::for_test("digest")),
        ];
        let big: Vec<u8> = (0..(5 << 19)).map(|i| (i % 251) as u8).collect();
        let mut big_changed = big.clone();
        big_changed[3 << 19] ^= 1;
        for enc in &encryptions {
            // Listed with another size; other octets of the same size; one octet changed
            // past the first MiB; longer than listed.
            for case in ["size", "octets", "past the first MiB", "grew"] {
                let dest = MemoryStore::new();
                let right: &[u8] = if case == "past the first MiB" {
                    &big
                } else {
                    b"right"
                };
                let (src, mut listed) = source(&[right]);
                let digest = listed[0].digest;
                let served = match case {
                    "size" => {
                        listed[0].size = 99;
                        right.to_vec()
                    }
                    "octets" => b"wrong".to_vec(),
                    "past the first MiB" => big_changed.clone(),
                    _ => b"right, and more".to_vec(),
                };
                src.0.lock().unwrap().insert(digest, served.clone());
                let err = keep(
                    &listed,
                    &src,
                    &dest,
                    enc,
                    "b/blobs.list",
                    1,
                    &AtomicU64::new(0),
                    &Cancel::new(),
                )
                .unwrap_err();
                let what = format!("{enc:?}, {case}");
                assert!(matches!(err, Error::Source(_)), "{what}: {err:?}");
                let told = format!(
                    "is {} bytes hashing to sha256:{}",
                    served.len(),
                    crate::archive::sha256_hex(&served)
                );
                assert!(err.to_string().contains(&told), "{what}: {err}");
                assert_eq!(stored_objects(&dest), 0, "{what}");
                assert!(dest.get("b/blobs.list").unwrap().is_none(), "{what}");
            }
        }
    }

    /// A source whose blob fails after its first octets.
    struct Failing;

    impl BlobSource for Failing {
        fn list(&self, _: &Cancel) -> Result<(Vec<Listed>, Vec<String>)> {
            Ok((Vec::new(), Vec::new()))
        }
        fn open(&self, _: &Sha) -> io::Result<Option<Box<dyn Read + Send + '_>>> {
            let good = io::Cursor::new(vec![1u8; 100]);
            let bad = FailingRead;
            Ok(Some(Box::new(good.chain(bad))))
        }
        fn describe(&self, _: &Sha) -> String {
            "the failing blob".into()
        }
    }

    struct FailingRead;

    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("the disk went away"))
        }
    }

    #[test]
    fn a_source_that_fails_while_read_is_named_as_the_source() {
        let (_, listed) = source(&[b"whatever"]);
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("failing"));
        let err = keep(
            &listed,
            &Failing,
            &dest,
            &enc,
            "b/blobs.list",
            1,
            &AtomicU64::new(0),
            &Cancel::new(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("reading the failing blob") && text.contains("the disk went away"),
            "{text}"
        );
        assert_eq!(stored_objects(&dest), 0);
    }

    /// A memory store that says whether its files are read through this machine's
    /// schedulers, notes the I/O class of the thread that opens each blob object, and holds
    /// the copy of every blob after the first until the first was opened: the read-back then
    /// meets a copy that still runs.
    struct Watched {
        inner: MemoryStore,
        local: bool,
        classes: Mutex<Vec<String>>,
        opened: (Mutex<bool>, std::sync::Condvar),
        created: AtomicU64,
    }

    impl Watched {
        fn new(local: bool) -> Watched {
            Watched {
                inner: MemoryStore::new(),
                local,
                classes: Mutex::new(Vec::new()),
                opened: (Mutex::new(false), std::sync::Condvar::new()),
                created: AtomicU64::new(0),
            }
        }
    }

    impl Store for Watched {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn create(&self, path: &str) -> Result<Box<dyn crate::storage::ObjectWriter>> {
            self.inner.create(path)
        }
        fn create_many(
            &self,
            path: &str,
            size: u64,
        ) -> Result<Box<dyn crate::storage::ObjectWriter>> {
            if path.contains("/sha256/") && self.created.fetch_add(1, Ordering::SeqCst) > 0 {
                let (lock, cv) = &self.opened;
                let held = lock.lock().unwrap();
                let _ = cv
                    .wait_timeout_while(held, std::time::Duration::from_secs(20), |o| !*o)
                    .unwrap();
            }
            self.inner.create_many(path, size)
        }
        fn put(&self, path: &str, bytes: &[u8]) -> Result<()> {
            self.inner.put(path, bytes)
        }
        fn put_new(&self, path: &str, bytes: &[u8]) -> Result<bool> {
            self.inner.put_new(path, bytes)
        }
        fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
            self.inner.get(path)
        }
        fn open(&self, path: &str) -> Result<Box<dyn Read + Send + Sync>> {
            if path.contains("/sha256/") {
                self.classes.lock().unwrap().push(ioprio::probe::class());
                let (lock, cv) = &self.opened;
                *lock.lock().unwrap() = true;
                cv.notify_all();
            }
            self.inner.open(path)
        }
        fn size(&self, path: &str) -> Result<Option<u64>> {
            self.inner.size(path)
        }
        fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
            self.inner.list_dirs(prefix)
        }
        fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
            self.inner.list_sized(prefix)
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
        fn on_local_disk(&self) -> bool {
            self.local
        }
    }

    /// Keeps three blobs, one at a time, in a `Watched` store: the I/O classes of the
    /// read-back's opens.
    fn read_back_classes(local: bool) -> Vec<String> {
        // A known class to start from, whatever the test runner's is.
        ioprio::probe::best_effort();
        let dest = Watched::new(local);
        let enc = Encryption::Passphrase(Secret::for_test("classes"));
        let (src, listed) = source(&[b"a blob", b"another blob", b"a third blob, longer"]);
        let kept = keep(
            &listed,
            &src,
            &dest,
            &enc,
            "b/blobs.list",
            1,
            &AtomicU64::new(0),
            &Cancel::new(),
        )
        .unwrap();
        assert_eq!(kept.copied, 3);
        // The thread that ran the copy keeps its class.
        assert_eq!(ioprio::probe::class(), "best-effort: prio 4");
        let classes = dest.classes.into_inner().unwrap();
        assert_eq!(classes.len(), 3, "{classes:?}");
        classes
    }

    /// On a store read through this machine's schedulers, the read-back steps aside while
    /// the copy runs (the first blob is read back while the second waits to be written).
    #[test]
    fn the_read_back_of_a_local_store_is_idle_while_the_copy_runs() {
        let classes = read_back_classes(true);
        assert_eq!(classes[0], "idle", "{classes:?}");
    }

    /// A remote store's reads are requests, some made by threads it starts: its read-back
    /// keeps its class.
    #[test]
    fn the_read_back_of_a_remote_store_keeps_its_class() {
        let classes = read_back_classes(false);
        assert!(
            classes.iter().all(|c| c == "best-effort: prio 4"),
            "{classes:?}"
        );
    }

    /// Objects under a blob store's `sha256/` (not its key check).
    fn stored_objects(dest: &MemoryStore) -> usize {
        let all = dest.list("blobs").unwrap();
        all.iter().filter(|p| p.contains("/sha256/")).count()
    }

    #[test]
    fn a_stored_object_too_short_for_its_blob_is_copied_again() {
        let dest = MemoryStore::new();
        let (src, listed) = source(&[b"content"]);
        let run = |list: &str| {
            keep(
                &listed,
                &src,
                &dest,
                &Encryption::None,
                list,
                1,
                &AtomicU64::new(0),
                &Cancel::new(),
            )
            .unwrap()
        };
        assert_eq!(run("a/blobs.list").copied, 1);
        let path = format!("blobs/plain/sha256/{}", {
            let d = snapshot::sha_hex(&listed[0].digest);
            format!("{}/{d}", &d[..2])
        });
        dest.put(&path, b"").unwrap();
        assert_eq!(run("b/blobs.list").copied, 1);
        assert_eq!(dest.get(&path).unwrap().unwrap(), b"content");
    }
}
