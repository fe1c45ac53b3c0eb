//! Image content of a stored backup back into a folder, which then holds the registry root
//! (`<folder>/docker/registry/v2/...`, the layout of `images.path`): the images artifact is
//! decrypted and extracted (`archive::extract`: nothing outside the folder, files named only
//! once durable), and the blobs a snapshot keeps in the blob store are decrypted into place.
//!
//! Every blob is checked against its digest before it gets its name; so is every other object
//! of a snapshot (images in S3 record the sha256 of each). The caller verifies the backup's
//! integrity before (`verify::check_backup`); reading each artifact to its end here checks it
//! again, so that content changed in between fails the restore.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;

use crate::archive::extract::{self, Refused, Target};
use crate::archive::records::CappedRecords;
use crate::archive::{HashReader, pipe, retar};
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::error::{Error, Result, io};
use crate::manifest::{ArtifactKind, Manifest};
use crate::snapshot;
use crate::storage::Store;

/// What a restore wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    pub files: u64,
    pub bytes: u64,
    /// Files checked against a digest before they got their name.
    pub checked: u64,
}

fn blob_file() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^docker/registry/v2/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})/data$")
            .expect("valid regex")
    })
}

/// The digest a blob's data file must hash to, from its path.
pub fn blob_digest(rel: &str) -> Option<String> {
    blob_file().captures(rel).map(|c| c[2].to_owned())
}

/// The blob digests present under `root` (a registry root): what a registry started on it
/// can serve.
pub fn blobs_in(root: &Path) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let dir = root.join("docker/registry/v2/blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for p in prefixes {
        let p = p?;
        for d in std::fs::read_dir(p.path())? {
            let d = d?;
            let name = d.file_name().to_string_lossy().into_owned();
            if crate::hex::is_sha256(&name) && d.path().join("data").is_file() {
                out.insert(name);
            }
        }
    }
    Ok(out)
}

/// Reads every blob under `root` back from disk and hashes it: the digests that do not match
/// (with what they hash to), and how many were read.
pub fn rehash_blobs(root: &Path, cancel: &Cancel) -> io::Result<(usize, Vec<String>)> {
    let mut bad = Vec::new();
    let digests = blobs_in(root)?;
    for d in &digests {
        cancel.check()?;
        let file = root.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{d}/data",
            &d[..2]
        ));
        let (got, _) = crate::archive::HashReader::new(std::fs::File::open(&file)?).finish()?;
        if got != *d {
            bad.push(format!("sha256:{d} (reads back as {got})"));
        }
    }
    Ok((digests.len(), bad))
}

/// A refusal of the archive or of a digest, or an archive that cannot be read to its end, is
/// the backup failing its checks (exit 5); the target's own errors are a failed run.
fn refused(what: &str, r: Refused) -> Error {
    match r {
        Refused::Write(e) => io(e, format!("restoring {what}")),
        Refused::Read(e) if crate::cancel::is_cancellation(&e) => Error::Interrupted,
        other => Error::Verify(format!(
            "{what}: {other}; the backup is damaged or was tampered with: restore another one (`dtr-backup backups list`)"
        )),
    }
}

/// Where restored image content goes: a folder (extracted there), or a tar stream that
/// another side extracts (a Docker volume through the archive upload).
pub trait Sink {
    /// The stored tar stream of an images artifact, its members under `strip`.
    fn archive(
        &mut self,
        reader: &mut dyn Read,
        strip: &str,
        digest_of: &dyn Fn(&str) -> Option<String>,
        cancel: &Cancel,
    ) -> std::result::Result<extract::Extracted, Refused>;
    /// One object of the blob store, of `size` bytes that must hash to `want`.
    fn object(
        &mut self,
        key: &str,
        data: &mut dyn Read,
        want: &str,
        size: u64,
        cancel: &Cancel,
    ) -> std::result::Result<u64, Refused>;
    /// Whether the restored content holds the file `key`.
    fn has(&self, key: &str) -> bool;
    /// Whether the object `key` (of `size` bytes, sha256 `want`) is already in place and is
    /// not to be read (recorded as restored).
    fn keep(&mut self, _key: &str, _want: &str, _size: u64) -> bool {
        false
    }
}

struct Folder<'a>(&'a Path);

impl Sink for Folder<'_> {
    fn archive(
        &mut self,
        reader: &mut dyn Read,
        strip: &str,
        digest_of: &dyn Fn(&str) -> Option<String>,
        cancel: &Cancel,
    ) -> std::result::Result<extract::Extracted, Refused> {
        extract::extract(
            reader,
            &Target {
                root: self.0,
                strip,
                digest_of,
                cancel,
            },
        )
    }

    fn object(
        &mut self,
        key: &str,
        data: &mut dyn Read,
        want: &str,
        size: u64,
        cancel: &Cancel,
    ) -> std::result::Result<u64, Refused> {
        extract::write_checked(self.0, key, data, Some(want), Some(size), cancel)
    }

    fn has(&self, key: &str) -> bool {
        self.0.join(key).is_file()
    }
}

/// Members passed on through the checks of `retar` to `to`: a tar stream, objects in a bucket.
pub struct Checked<M> {
    pub to: M,
    pub seen: retar::Seen,
}

impl<M: retar::Members> Sink for Checked<M> {
    fn archive(
        &mut self,
        reader: &mut dyn Read,
        strip: &str,
        digest_of: &dyn Fn(&str) -> Option<String>,
        cancel: &Cancel,
    ) -> std::result::Result<extract::Extracted, Refused> {
        let before = self.seen.out.clone();
        retar::retar(
            reader,
            &mut self.seen,
            &mut self.to,
            &retar::Retar {
                strip,
                digest_of,
                cancel,
            },
        )?;
        let now = &self.seen.out;
        Ok(extract::Extracted {
            files: now.files - before.files,
            dirs: now.dirs - before.dirs,
            links: now.links - before.links,
            bytes: now.bytes - before.bytes,
            checked: now.checked - before.checked,
        })
    }

    fn object(
        &mut self,
        key: &str,
        data: &mut dyn Read,
        want: &str,
        size: u64,
        cancel: &Cancel,
    ) -> std::result::Result<u64, Refused> {
        cancel.check().map_err(Refused::Read)?;
        let parts = extract::components(key)?;
        if parts.is_empty() {
            return Err(Refused::Hostile(format!("{key:?} names no file")));
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(crate::clock::now_unix().max(0) as u64);
        self.seen.file(
            &mut self.to,
            &parts.join("/"),
            &h,
            size,
            data,
            Some(want),
            true,
        )?;
        Ok(size)
    }

    fn has(&self, key: &str) -> bool {
        self.seen.holds(key)
    }

    fn keep(&mut self, key: &str, want: &str, size: u64) -> bool {
        if !self.to.kept(key, size) {
            return false;
        }
        self.seen.kept(key, want, size);
        true
    }
}

/// Restores the image content of `manifest` (stored in `store`, the plan's root) into
/// `target`, an existing empty folder.
pub fn to_folder(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    target: &Path,
    cancel: &Cancel,
) -> Result<Restored> {
    restore_into(store, manifest, dec, &mut Folder(target), cancel)
}

/// Writes the image content of `manifest` as a tar stream to `out`, every member under the
/// folder `prefix` (a staging folder that the receiving side moves into place once the
/// stream is whole). The stream ends early, with an error, at the first thing that fails its
/// checks: the receiving side must then discard `prefix`.
pub fn to_tar<W: Write>(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    prefix: &str,
    out: W,
    cancel: &Cancel,
) -> Result<(W, Restored)> {
    // Once something failed, nothing more reaches `out`: not even the end-of-archive blocks
    // that a dropped tar writer adds, which would make the partial stream look whole.
    let open = std::rc::Rc::new(std::cell::Cell::new(true));
    let gate = Gate {
        inner: out,
        open: open.clone(),
    };
    let emit = retar::Emitter::new(gate, prefix).map_err(|e| io(e, "writing the tar stream"))?;
    let mut sink = Checked {
        to: emit,
        seen: retar::Seen::default(),
    };
    match restore_into(store, manifest, dec, &mut sink, cancel) {
        Ok(restored) => {
            let gate = sink.to.finish().map_err(|r| refused("the tar stream", r))?;
            Ok((gate.inner, restored))
        }
        Err(e) => {
            open.set(false);
            drop(sink);
            Err(e)
        }
    }
}

/// A writer that refuses every write once closed.
struct Gate<W> {
    inner: W,
    open: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.open.get() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was stopped",
            ));
        }
        self.inner.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn restore_into(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    sink: &mut dyn Sink,
    cancel: &Cancel,
) -> Result<Restored> {
    let volume = manifest.dtr.volume.clone().ok_or_else(|| {
        Error::Verify(format!(
            "the manifest of {} names no image-content folder (dtr.volume)",
            manifest.backup_id
        ))
    })?;
    // Objects of a snapshot carry their sha256; the other trees only their blobs' digests.
    let recorded: BTreeMap<&str, &str> = manifest
        .objects
        .iter()
        .map(|o| (o.key.as_str(), o.sha256.as_str()))
        .collect();
    // A blob's name is its digest: that is what its content must hash to, whatever else a
    // manifest says.
    let digest_of =
        |rel: &str| blob_digest(rel).or_else(|| recorded.get(rel).map(|s| (*s).to_owned()));
    let mut done = Restored::default();
    let images = manifest
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Images);
    for a in images {
        let path = format!("{}/{}", manifest.backup_id, a.path);
        // Two threads: one reads the stored octets (hashing them: the backup may have
        // changed since it was verified) and decrypts them, the other extracts. Decryption
        // checks the integrity protection at the end of the stream, before anything is
        // published.
        let (mut tx, mut rx) = pipe::pipe();
        let stored = store.open(&path)?;
        let (encrypted, dec2, what) = (a.encrypted, dec.cloned(), path.clone());
        let producer = std::thread::spawn(move || -> Result<Option<(String, u64)>> {
            if encrypted {
                // The integrity protection covers it: no hash of its own to compute.
                let mut plain = open_plain(stored, true, dec2.as_ref(), &what)?;
                pipe::pump(&mut plain, &mut tx).map_err(|e| unreadable(&what, e))?;
                tx.close().map_err(|e| unreadable(&what, e))?;
                return Ok(None);
            }
            let mut stored = HashReader::new(stored);
            {
                let mut plain = open_plain(Box::new(&mut stored), encrypted, dec2.as_ref(), &what)?;
                pipe::pump(&mut plain, &mut tx).map_err(|e| unreadable(&what, e))?;
            }
            tx.close().map_err(|e| unreadable(&what, e))?;
            stored
                .finish()
                .map(Some)
                .map_err(|e| io(e, format!("reading {what}")))
        });
        let strip = format!("{volume}/_data");
        let extracted = sink.archive(&mut CappedRecords::new(&mut rx), &strip, &digest_of, cancel);
        // The rest of the stream (end-of-archive blocks), so that the reader gets to the end.
        if extracted.is_ok() {
            let _ = std::io::copy(&mut rx, &mut io::sink());
        }
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(Error::internal("the reading thread panicked")));
        // An interruption stops both sides: it is not the backup failing its checks.
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        // What the extraction refused comes first; when the archive merely ended early, the
        // reader's error says why.
        let got = match extracted {
            Ok(got) => got,
            Err(Refused::Read(e)) => {
                produced?;
                return Err(refused(&path, Refused::Read(e)));
            }
            Err(other) => return Err(refused(&path, other)),
        };
        if let Some((sha, size)) = produced?
            && (sha != a.sha256 || size != a.size)
        {
            return Err(Error::Verify(format!(
                "{path} is {size} bytes with sha256 {sha}, the manifest records {} bytes with {}: it changed since it was written",
                a.size, a.sha256
            )));
        }
        done.files += got.files;
        done.bytes += got.bytes;
        done.checked += got.checked;
    }
    let encrypted = manifest.encryption != "none";
    // Each repository's tree: a whole tar archive of its own, extracted as the images
    // archive is, its digest checked at its end (and its integrity protection, encrypted).
    let strip = format!("{volume}/_data");
    for kept in snapshot::trees_of(store, manifest)? {
        let kept = kept?;
        cancel
            .check()
            .map_err(|e| io(e, "restoring repositories"))?;
        let stored = store.open(&kept.path)?;
        let plain = open_plain(stored, encrypted, dec, &kept.path)?;
        // Trees are stored compressed (those of earlier releases as they are).
        let plain = crate::archive::unzipped(plain).map_err(|e| unreadable(&kept.path, e))?;
        let mut hashed = HashReader::new(plain);
        let got = sink
            .archive(
                &mut CappedRecords::new(&mut hashed),
                &strip,
                &digest_of,
                cancel,
            )
            .map_err(|r| {
                if cancel.is_cancelled() {
                    Error::Interrupted
                } else {
                    refused(&kept.path, r)
                }
            })?;
        let (sha, size) = hashed.finish().map_err(|e| unreadable(&kept.path, e))?;
        if sha != snapshot::sha_hex(&kept.blob.digest) || size != kept.blob.size {
            return Err(Error::Verify(format!(
                "{} is {size} bytes with sha256 {sha}, not the tree its name says: the backup is damaged",
                kept.path
            )));
        }
        done.files += got.files;
        done.bytes += got.bytes;
        done.checked += got.checked;
    }
    for kept in snapshot::blobs_of(store, manifest)? {
        let kept = kept?;
        cancel.check().map_err(|e| io(e, "restoring blobs"))?;
        let key = snapshot::registry_key(&kept.blob.digest);
        let want = snapshot::sha_hex(&kept.blob.digest);
        let (blob, size) = (&kept.path, kept.blob.size);
        if sink.keep(&key, &want, size) {
            done.files += 1;
            done.bytes += size;
            continue;
        }
        let stored = store.open(blob)?;
        let mut plain = open_plain(stored, encrypted, dec, blob)?;
        let size = sink
            .object(&key, &mut plain, &want, size, cancel)
            .map_err(|r| {
                if cancel.is_cancelled() {
                    Error::Interrupted
                } else {
                    refused(blob, r)
                }
            })?;
        drain(&mut plain, blob)?;
        done.files += 1;
        done.bytes += size;
        done.checked += 1;
    }
    // Every object of a snapshot is back (the archive's too, not only the blob store's).
    if let Some(o) = manifest.objects.iter().find(|o| !sink.has(&o.key)) {
        return Err(Error::Verify(format!(
            "{} is listed in the manifest of {} but was not in the backup",
            o.key, manifest.backup_id
        )));
    }
    Ok(done)
}

fn open_plain<'a>(
    stored: Box<dyn Read + Send + Sync + 'a>,
    encrypted: bool,
    dec: Option<&Decryption>,
    what: &str,
) -> Result<Box<dyn Read + Send + Sync + 'a>> {
    if !encrypted {
        return Ok(stored);
    }
    let dec = dec.ok_or_else(|| {
        Error::crypto(format!(
            "{what} is encrypted to recipients and the plan has no verify.key: set it to the secret key that decrypts the backup"
        ))
    })?;
    crypto::decrypt(stored, dec).map_err(|e| {
        Error::Verify(format!(
            "{what} does not decrypt: {e}; check the passphrase or key, or restore another backup"
        ))
    })
}

/// A stored artifact that cannot be read (decrypted) to its end: the backup fails its checks.
fn unreadable(what: &str, e: io::Error) -> Error {
    if crate::cancel::is_cancellation(&e) {
        Error::Interrupted
    } else {
        Error::Verify(format!(
            "{what} cannot be read to its end: {e}; the backup is damaged: restore another one (`dtr-backup backups list`)"
        ))
    }
}

fn drain(plain: &mut dyn Read, what: &str) -> Result<()> {
    crate::archive::copy_large(plain, &mut io::sink())
        .map(drop)
        .map_err(|e| unreadable(what, e))
}
