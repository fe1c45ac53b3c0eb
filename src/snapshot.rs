//! The blobs a backup keeps in the plan's blob store (`blob_store`): `blobs.list` in the
//! backup's folder, one line per blob, sorted by digest, each digest once:
//!
//! ```text
//! dtr-backup blobs 1 <store>
//! base <sha256 of the base> <its size>
//! <sha256, 64 hex digits> <size> <stored size>[ new]
//! <sha256> -
//! ```
//!
//! A list grows with the registry (about 90 octets a blob), so a backup does not write it
//! whole every night: it names a *base*, a full list kept once in the blob store
//! (`blobs/<store>/lists/<ab>/<sha256 of the base>`, the same form without a base line),
//! and holds only what differs from it: a line per blob added or changed, `<digest> -` per
//! blob of the base it no longer keeps. The base is the one the previous backup named, while
//! the differences are at most an eighth of the list; otherwise the run writes a new base
//! (the full list, content-addressed, read back once written) and its own lines are the
//! blobs it wrote. A list without a base line is whole (releases before bases wrote those).
//! Readers ([`open`], [`blobs_of`], [`trees_of`]) merge the base with the differences, check
//! the base against its sha256 and a backup's list against its manifest, so nothing above
//! this module sees a base, and a list or base cut short is an error, never fewer blobs.
//!
//! `new` marks the blobs that the backup's own run copied into the store (a record: the run
//! read each back as it wrote it).
//!
//! `<store>` is the blob store's folder (`blobs/<store>/sha256/<ab>/<digest>`), the sizes are
//! the blob's and its stored object's (larger when encrypted). The list is written before the
//! manifest, which records it as an artifact (its size and sha256), and read as a stream: a
//! million blobs never sit in memory as strings. Backups of releases before the list kept
//! the blobs of S3 sources in the manifest's `objects`; [`blobs_of`] reads both.

use std::io::{self, BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};

use crate::archive::HashReader;
use crate::blob_store::BlobStore;
use crate::error::{Error, Result, io};
use crate::manifest::{ArtifactKind, Manifest};
use crate::storage::{ObjectWriter, Store};

/// The list's name in the backup's folder.
pub const FILE: &str = "blobs.list";
/// The list of the repository trees the backup keeps in the blob store (`trees.list`, the
/// same form; header `dtr-backup trees 1 <store>`): each a whole tar archive of one
/// repository's folder, stored once however many backups list it.
pub const TREES_FILE: &str = "trees.list";

pub use crate::blob_store::Listing;
pub use crate::hex::{Sha, parse_sha, sha_hex};

/// The first line of a list of `kind` (the store's id follows).
fn header(kind: Listing) -> &'static str {
    match kind {
        Listing::Blobs => "dtr-backup blobs 1",
        Listing::Trees => "dtr-backup trees 1",
    }
}

/// The artifact kind of the list of `kind`.
fn artifact_of(kind: Listing) -> ArtifactKind {
    match kind {
        Listing::Blobs => ArtifactKind::Blobs,
        Listing::Trees => ArtifactKind::Trees,
    }
}

/// No line of a list is longer (digest, two sizes, separators).
const MAX_LINE: u64 = 160;

/// Where bases are kept in a store's folder.
const BASES: &str = "lists";

/// A backup keeps its differences from its base while they are at most this fraction
/// (1/n) of what it lists.
const REBASE_AT: usize = 8;

/// One blob of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: Sha,
    /// The blob's size.
    pub size: u64,
    /// The size of its object in the blob store.
    pub stored: u64,
    /// Copied into the store by the run that made this backup.
    pub fresh: bool,
}

/// A full list kept in the blob store, which backups' lists name as their base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Base {
    pub sha: Sha,
    pub size: u64,
}

impl Base {
    /// Where it lies: `blobs/<store>/lists/<ab>/<sha256>`.
    pub fn path(&self, store: &BlobStore) -> String {
        let hex = sha_hex(&self.sha);
        format!("{}/{BASES}/{}/{hex}", store.prefix(), &hex[..2])
    }
}

/// A line of a list: a blob it keeps, or (in a list with a base) a blob of the base it does
/// not keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Keep(Blob),
    Drop(Sha),
}

impl Change {
    fn digest(&self) -> Sha {
        match self {
            Change::Keep(b) => b.digest,
            Change::Drop(d) => *d,
        }
    }
}

/// A list being written; published by [`Writer::finish`], discarded when dropped.
pub struct Writer {
    out: io::BufWriter<Hashing>,
    last: Option<Sha>,
    count: u64,
}

struct Hashing {
    inner: Box<dyn ObjectWriter>,
    hasher: Sha256,
    size: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a written list is: its size and sha256 (for the manifest), how many lines of blobs
/// it holds, and the base it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
    pub blobs: u64,
    pub base: Option<Base>,
}

/// A blob's line.
fn line_of(b: &Blob) -> String {
    let mark = if b.fresh { " new" } else { "" };
    format!("{} {} {}{mark}\n", sha_hex(&b.digest), b.size, b.stored)
}

impl Writer {
    /// Starts the whole list at `path` of the objects kept in `blobs`.
    pub fn new(store: &dyn Store, path: &str, blobs: &BlobStore, kind: Listing) -> Result<Writer> {
        Writer::start(store, path, blobs, kind, None)
    }

    fn start(
        store: &dyn Store,
        path: &str,
        blobs: &BlobStore,
        kind: Listing,
        base: Option<&Base>,
    ) -> Result<Writer> {
        let mut w = Writer {
            out: io::BufWriter::with_capacity(
                1 << 16,
                Hashing {
                    inner: store.create(path)?,
                    hasher: Sha256::new(),
                    size: 0,
                },
            ),
            last: None,
            count: 0,
        };
        writeln!(w.out, "{} {}", header(kind), blobs.id)
            .map_err(|e| io(e, "writing the blob list"))?;
        if let Some(b) = base {
            writeln!(w.out, "base {} {}", sha_hex(&b.sha), b.size)
                .map_err(|e| io(e, "writing the blob list"))?;
        }
        Ok(w)
    }

    fn order(&mut self, d: Sha) -> Result<()> {
        if self.last.is_some_and(|l| l >= d) {
            return Err(Error::internal("blob list entries out of order"));
        }
        self.last = Some(d);
        self.count += 1;
        Ok(())
    }

    /// Adds a blob; blobs come in increasing order of digest.
    pub fn push(&mut self, b: &Blob) -> Result<()> {
        self.order(b.digest)?;
        self.out
            .write_all(line_of(b).as_bytes())
            .map_err(|e| io(e, "writing the blob list"))
    }

    fn change(&mut self, c: &Change) -> Result<()> {
        match c {
            Change::Keep(b) => self.push(b),
            Change::Drop(d) => {
                self.order(*d)?;
                writeln!(self.out, "{} -", sha_hex(d)).map_err(|e| io(e, "writing the blob list"))
            }
        }
    }

    /// Publishes the list.
    pub fn finish(self) -> Result<Written> {
        let hashing = self
            .out
            .into_inner()
            .map_err(|e| io(e.into_error(), "writing the blob list"))?;
        let written = Written {
            size: hashing.size,
            sha256: crate::hex::encode(&hashing.hasher.finalize()),
            blobs: self.count,
            base: None,
        };
        hashing.inner.commit()?;
        Ok(written)
    }
}

/// Writes the list of a backup at `path`: `entries` (sorted by digest, each once) as their
/// differences from `previous` (the base of the previous backup, if the store still holds
/// it) while those are few, else against a new base. Returns what was written.
pub fn write(
    dest: &dyn Store,
    path: &str,
    blobs: &BlobStore,
    kind: Listing,
    entries: &[Blob],
    previous: Option<Base>,
) -> Result<Written> {
    let against = previous.and_then(|base| {
        // A base that cannot be read (removed, damaged) is no base: a new one is written.
        differences(dest, blobs, kind, &base, entries)
            .ok()
            .flatten()
            .map(|changes| (base, changes))
    });
    let (base, changes) = match against {
        Some((base, changes)) => (base, Some(changes)),
        None => (store_base(dest, blobs, kind, entries)?, None),
    };
    let mut w = Writer::start(dest, path, blobs, kind, Some(&base))?;
    match changes {
        Some(changes) => {
            for c in &changes {
                w.change(c)?;
            }
        }
        // Against a new base, the list's own lines are what its run wrote (marked `new`),
        // read from `entries` as they are written rather than gathered first: on a full
        // backup that is every blob.
        None => {
            for b in entries.iter().filter(|b| b.fresh) {
                w.change(&Change::Keep(*b))?;
            }
        }
    }
    let mut written = w.finish()?;
    written.base = Some(base);
    Ok(written)
}

/// What `entries` change in the base `base` of `blobs`; `None` when that is more than an
/// [`REBASE_AT`]th of them.
fn differences(
    dest: &dyn Store,
    blobs: &BlobStore,
    kind: Listing,
    base: &Base,
    entries: &[Blob],
) -> Result<Option<Vec<Change>>> {
    let mut old = open_base(dest, blobs, kind, base)?.peekable();
    let limit = entries.len() / REBASE_AT;
    let mut changes = Vec::new();
    let mut new = entries.iter().peekable();
    loop {
        if changes.len() > limit {
            return Ok(None);
        }
        let o = match old.peek() {
            Some(Ok(b)) => Some(*b),
            Some(Err(_)) => {
                return match old.next() {
                    Some(Err(e)) => Err(e),
                    _ => Err(Error::internal("a base list ended twice")),
                };
            }
            None => None,
        };
        match (o, new.peek()) {
            (None, None) => return Ok(Some(changes)),
            (Some(o), None) => {
                changes.push(Change::Drop(o.digest));
                old.next();
            }
            (None, Some(&&n)) => {
                changes.push(Change::Keep(n));
                new.next();
            }
            (Some(o), Some(&&n)) => {
                if o.digest < n.digest {
                    changes.push(Change::Drop(o.digest));
                    old.next();
                } else if o.digest > n.digest {
                    changes.push(Change::Keep(n));
                    new.next();
                } else {
                    // What this run wrote is marked as its own, even where the line is the
                    // base's.
                    if n.fresh || n.size != o.size || n.stored != o.stored {
                        changes.push(Change::Keep(n));
                    }
                    old.next();
                    new.next();
                }
            }
        }
    }
}

/// Keeps `entries` as a base in the store of `blobs`, unless it holds that base already.
fn store_base(
    dest: &dyn Store,
    blobs: &BlobStore,
    kind: Listing,
    entries: &[Blob],
) -> Result<Base> {
    let plain = |b: &Blob| Blob { fresh: false, ..*b };
    // Its name is the sha256 of what it holds: hashed first, written when missing.
    let mut hasher = Sha256::new();
    let first = format!("{} {}\n", header(kind), blobs.id);
    hasher.update(first.as_bytes());
    let mut size = first.len() as u64;
    for b in entries {
        let line = line_of(&plain(b));
        hasher.update(line.as_bytes());
        size += line.len() as u64;
    }
    let sha: Sha = hasher.finalize().into();
    let base = Base { sha, size };
    let path = base.path(blobs);
    // Every backup that names a base depends on it: one already there is used only when it
    // reads whole as named; one written is read back. A damaged one is written again.
    let whole = |dest: &dyn Store| -> Result<()> {
        for b in open_base(dest, blobs, kind, &base)? {
            b?;
        }
        Ok(())
    };
    if dest.size(&path)? == Some(size) && whole(dest).is_ok() {
        return Ok(base);
    }
    let mut w = Writer::new(dest, &path, blobs, kind)?;
    for b in entries {
        w.push(&plain(b))?;
    }
    let written = w.finish()?;
    if written.sha256 != sha_hex(&sha) || written.size != size {
        return Err(Error::internal("a base list hashed otherwise when written"));
    }
    whole(dest).map_err(|e| {
        Error::Verify(format!(
            "the list base {path} does not read back as written ({e}): check the destination's storage, then run the backup again"
        ))
    })?;
    Ok(base)
}

/// The base that the newest complete backup's list of `kind` names, if it is in `blobs` and
/// the store holds it with its size: what a new backup's list is written against.
pub fn previous_base(dest: &dyn Store, blobs: &BlobStore, kind: Listing) -> Option<Base> {
    let listing = crate::manifest::list(dest).ok()?;
    // Sorted by id, oldest first (as `manifest::resolve` reads it).
    let newest = listing.complete.last()?;
    let a = newest
        .artifacts
        .iter()
        .find(|a| a.kind == artifact_of(kind))?;
    let path = format!("{}/{}", newest.backup_id, a.path);
    let lines = Lines::new(BufReader::new(dest.open(&path).ok()?), &path).ok()?;
    let base = lines
        .base
        .filter(|_| lines.store == *blobs && lines.kind == kind)?;
    (dest.size(&base.path(blobs)).ok()?? == base.size).then_some(base)
}

/// The lines of a stored list, read one by one; every line is checked (digest, order,
/// sizes).
struct Lines<R> {
    lines: R,
    store: BlobStore,
    kind: Listing,
    base: Option<Base>,
    /// The line after the header when it is no base line.
    pending: Option<String>,
    last: Option<Sha>,
    what: String,
    line: String,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    /// Reads the header (and base line) of the list `what` from `from`.
    fn new(mut from: R, what: &str) -> Result<Lines<R>> {
        let mut line = String::new();
        read_line(&mut from, &mut line, what)?;
        let (kind, rest) = [Listing::Blobs, Listing::Trees]
            .into_iter()
            .find_map(|k| line.strip_prefix(header(k)).map(|r| (k, r)))
            .unwrap_or((Listing::Blobs, ""));
        let store = Some(rest)
            .and_then(|r| r.strip_prefix(' '))
            .filter(|id| {
                !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .ok_or_else(|| {
                Error::Verify(format!(
                    "{what} is not a blob list of this dtr-backup (its first line is {:?})",
                    line.chars().take(60).collect::<String>()
                ))
            })?
            .to_owned();
        let mut second = String::new();
        let n = read_line(&mut from, &mut second, what)?;
        let (base, pending) = match second.strip_prefix("base ") {
            Some(rest) => {
                let base = rest.split_once(' ').and_then(|(sha, size)| {
                    Some(Base {
                        sha: parse_sha(sha)?,
                        size: size.parse().ok()?,
                    })
                });
                match base {
                    Some(b) => (Some(b), None),
                    None => {
                        return Err(Error::Verify(format!(
                            "{what} line 2: not `base <sha256> <size>`: the list is damaged"
                        )));
                    }
                }
            }
            None if n == 0 => (None, None),
            None => (None, Some(second)),
        };
        Ok(Lines {
            store: BlobStore { id: store },
            kind,
            base,
            pending,
            lines: from,
            last: None,
            what: what.to_owned(),
            line: String::new(),
            number: if base.is_some() { 2 } else { 1 },
        })
    }
}

fn read_line(from: &mut impl BufRead, line: &mut String, what: &str) -> Result<usize> {
    line.clear();
    let n = from
        .take(MAX_LINE)
        .read_line(line)
        .map_err(|e| io(e, format!("reading {what}")))?;
    if n > 0 && !line.ends_with('\n') {
        return Err(Error::Verify(format!(
            "{what} has a line that is too long or unterminated: the list is damaged"
        )));
    }
    line.pop();
    Ok(n)
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Change>;

    fn next(&mut self) -> Option<Result<Change>> {
        self.number += 1;
        if let Some(line) = self.pending.take() {
            return Some(self.parse(&line));
        }
        let mut line = std::mem::take(&mut self.line);
        let got = read_line(&mut self.lines, &mut line, &self.what);
        let parsed = match got {
            Err(e) => Err(e),
            Ok(0) => {
                self.line = line;
                return None;
            }
            Ok(_) => self.parse(&line),
        };
        self.line = line;
        Some(parsed)
    }
}

impl<R> Lines<R> {
    fn bad(&self, why: &str) -> Error {
        Error::Verify(format!("{} line {}: {why}", self.what, self.number))
    }

    fn parse(&mut self, line: &str) -> Result<Change> {
        const FORM: &str = "not `<digest> <size> <stored size>[ new]`";
        let mut fields = line.split(' ');
        let (Some(d), Some(size), stored, mark, None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(self.bad(FORM));
        };
        let digest = parse_sha(d).ok_or_else(|| self.bad("not a sha256 digest"))?;
        if self.last.is_some_and(|l| l >= digest) {
            return Err(self.bad("digests out of order"));
        }
        if size == "-" && stored.is_none() && self.base.is_some() {
            self.last = Some(digest);
            return Ok(Change::Drop(digest));
        }
        let Some(stored) = stored else {
            return Err(self.bad(FORM));
        };
        let fresh = match mark {
            None => false,
            Some("new") => true,
            Some(_) => return Err(self.bad(FORM)),
        };
        let (Ok(size), Ok(stored)) = (size.parse::<u64>(), stored.parse::<u64>()) else {
            return Err(self.bad("a size is not a number"));
        };
        self.last = Some(digest);
        Ok(Change::Keep(Blob {
            digest,
            size,
            stored,
            fresh,
        }))
    }
}

/// What a list holds by itself (without its base), every line checked.
pub struct Summary {
    pub store: BlobStore,
    pub kind: Listing,
    pub base: Option<Base>,
    /// Lines of blobs it keeps (added or changed, against a base), and their sizes.
    pub kept: u64,
    pub bytes: u64,
    /// Lines of blobs of its base it does not keep.
    pub dropped: u64,
}

/// Reads the list `what` from `from` to its end, checking each line (digest, order, sizes).
pub fn summarize(from: impl BufRead, what: &str) -> Result<Summary> {
    let mut lines = Lines::new(from, what)?;
    let mut summary = Summary {
        store: lines.store.clone(),
        kind: lines.kind,
        base: lines.base,
        kept: 0,
        bytes: 0,
        dropped: 0,
    };
    for c in lines.by_ref() {
        match c? {
            Change::Keep(b) => {
                summary.kept += 1;
                summary.bytes += b.size;
            }
            Change::Drop(_) => summary.dropped += 1,
        }
    }
    Ok(summary)
}

/// The lines of a stored list, hashed as they are read.
type HashedLines<'a> = Lines<BufReader<HashReader<Box<dyn Read + Send + Sync + 'a>>>>;

/// Opens the stored list at `path` to be read line by line and hashed.
fn hashed_lines<'a>(store: &'a dyn Store, path: &str) -> Result<HashedLines<'a>> {
    let hashed = HashReader::new(store.open(path)?);
    Lines::new(BufReader::with_capacity(1 << 16, hashed), path)
}

/// The hex sha256 and size of the whole list `lines` was read from, once its lines are read.
fn hashed_whole(lines: &mut HashedLines<'_>) -> Result<(String, u64)> {
    let mut rest = Vec::new();
    lines
        .lines
        .read_to_end(&mut rest)
        .map_err(|e| io(e, format!("reading {}", lines.what)))?;
    Ok(lines.lines.get_ref().so_far())
}

/// The blobs of the base `base` of `blobs`, checked against its sha256 and size at its end.
fn open_base<'a>(
    dest: &'a dyn Store,
    blobs: &BlobStore,
    kind: Listing,
    base: &Base,
) -> Result<BaseBlobs<'a>> {
    let path = base.path(blobs);
    let lines = hashed_lines(dest, &path)?;
    if lines.base.is_some() || lines.kind != kind || lines.store != *blobs {
        return Err(Error::Verify(format!(
            "{path} is not a base list of {} in {}",
            kind.noun(),
            blobs.id
        )));
    }
    Ok(BaseBlobs {
        lines: Some(lines),
        base: *base,
        path,
    })
}

/// The blobs of a base, as [`open_base`] reads them.
struct BaseBlobs<'a> {
    lines: Option<HashedLines<'a>>,
    base: Base,
    path: String,
}

impl Iterator for BaseBlobs<'_> {
    type Item = Result<Blob>;

    fn next(&mut self) -> Option<Result<Blob>> {
        let lines = self.lines.as_mut()?;
        match lines.next() {
            Some(Ok(Change::Keep(b))) => Some(Ok(Blob { fresh: false, ..b })),
            Some(Ok(Change::Drop(_))) => {
                self.lines = None;
                Some(Err(Error::internal(
                    "a base without a base line dropped a blob",
                )))
            }
            Some(Err(e)) => {
                self.lines = None;
                Some(Err(e))
            }
            None => {
                // The end: the base must be the one named.
                let mut lines = self.lines.take()?;
                let (sha, size) = match hashed_whole(&mut lines) {
                    Ok(whole) => whole,
                    Err(e) => return Some(Err(e)),
                };
                if sha != sha_hex(&self.base.sha) || size != self.base.size {
                    return Some(Err(Error::Verify(format!(
                        "{} is {size} bytes hashing to {sha}, not the base it is named for: the blob store is damaged",
                        self.path
                    ))));
                }
                None
            }
        }
    }
}

/// A stored list, read as a stream of the blobs it keeps: its base's, changed by its own
/// lines.
pub struct Reader<'a> {
    /// The blob store the blobs are kept in.
    pub store: BlobStore,
    /// What it lists.
    pub kind: Listing,
    /// The base it names.
    pub base: Option<Base>,
    own: HashedLines<'a>,
    /// Its next line, read ahead; and whether its end was reached (and checked).
    own_next: Option<Change>,
    own_done: bool,
    /// The sha256 (hex) and size its manifest records, checked at its end.
    expect: Option<(String, u64)>,
    from_base: Option<std::iter::Peekable<BaseBlobs<'a>>>,
    failed: bool,
}

/// Opens the list at `path` in `store` (of a run not finished yet: no manifest records it).
pub fn open<'a>(store: &'a dyn Store, path: &str) -> Result<Reader<'a>> {
    open_checked(store, path, None)
}

/// Opens the list at `path` in `store`; with `expect`, the sha256 (hex) and size that the
/// backup's manifest records for it, checked when its end is read.
fn open_checked<'a>(
    store: &'a dyn Store,
    path: &str,
    expect: Option<(String, u64)>,
) -> Result<Reader<'a>> {
    let lines = hashed_lines(store, path)?;
    let (blobs, kind, base) = (lines.store.clone(), lines.kind, lines.base);
    let from_base = match &base {
        Some(b) => Some(open_base(store, &blobs, kind, b)?.peekable()),
        None => None,
    };
    Ok(Reader {
        store: blobs,
        kind,
        base,
        own: lines,
        own_next: None,
        own_done: false,
        expect,
        from_base,
        failed: false,
    })
}

impl Reader<'_> {
    /// The path of its base in the store, if it names one.
    pub fn base_path(&self) -> Option<String> {
        self.base.map(|b| b.path(&self.store))
    }

    /// Its next own line, read ahead; at its end, the check against its manifest.
    fn peek_own(&mut self) -> Result<Option<Change>> {
        if self.own_next.is_none() && !self.own_done {
            match self.own.next() {
                Some(c) => self.own_next = Some(c?),
                None => {
                    self.own_done = true;
                    self.check_own()?;
                }
            }
        }
        Ok(self.own_next)
    }

    fn check_own(&mut self) -> Result<()> {
        let Some((sha, size)) = &self.expect else {
            return Ok(());
        };
        let (got, n) = hashed_whole(&mut self.own)?;
        if got != *sha || n != *size {
            return Err(Error::Verify(format!(
                "{} is {n} bytes hashing to {got}, not the {size} bytes its manifest records: the list is damaged",
                self.own.what
            )));
        }
        Ok(())
    }

    fn merged(&mut self) -> Option<Result<Blob>> {
        loop {
            let from_base = match self.from_base.as_mut().map(|b| b.peek()) {
                Some(Some(Ok(b))) => Some(*b),
                // An error (or the end, whose check may fail) comes from the base itself.
                Some(Some(Err(_))) => return self.from_base.as_mut().and_then(|b| b.next()),
                _ => None,
            };
            let own = match self.peek_own() {
                Ok(o) => o,
                Err(e) => return Some(Err(e)),
            };
            match (from_base, own) {
                // The base's end checks its sha256.
                (_, None) => return self.from_base.as_mut().and_then(|b| b.next()),
                (Some(b), Some(c)) if b.digest < c.digest() => {
                    return self.from_base.as_mut().and_then(|b| b.next());
                }
                (Some(b), Some(c)) if b.digest == c.digest() => {
                    self.own_next = None;
                    self.from_base.as_mut().and_then(|b| b.next());
                    if let Change::Keep(x) = c {
                        return Some(Ok(x));
                    }
                }
                (_, Some(c)) => {
                    self.own_next = None;
                    return Some(match c {
                        Change::Keep(x) => Ok(x),
                        Change::Drop(d) => Err(Error::Verify(format!(
                            "the list drops {}, which its base does not list: the list is damaged",
                            sha_hex(&d)
                        ))),
                    });
                }
            }
        }
    }
}

impl Iterator for Reader<'_> {
    type Item = Result<Blob>;

    fn next(&mut self) -> Option<Result<Blob>> {
        if self.failed {
            return None;
        }
        let next = self.merged();
        if matches!(next, Some(Err(_))) {
            self.failed = true;
        }
        next
    }
}

/// One blob a backup keeps, with where its object lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub blob: Blob,
    /// The object's path under the plan's root (`blobs/<store>/sha256/<ab>/<digest>`).
    pub path: String,
    /// The stored size is known (manifests of releases before the list may lack it).
    pub stored_known: bool,
}

/// The list artifact of a backup, if it has one.
pub fn list_artifact(m: &Manifest) -> Option<&crate::manifest::Artifact> {
    m.artifacts.iter().find(|a| a.kind == ArtifactKind::Blobs)
}

/// Every repository tree the backup `m` keeps in the blob store (none for backups without
/// a `trees.list`).
pub fn trees_of<'a>(
    store: &'a dyn Store,
    m: &'a Manifest,
) -> Result<Box<dyn Iterator<Item = Result<Kept>> + 'a>> {
    match m.artifacts.iter().find(|a| a.kind == ArtifactKind::Trees) {
        Some(a) => read_list(store, m, a, Listing::Trees),
        None => Ok(Box::new(std::iter::empty())),
    }
}

/// The objects the list artifact `a` of the backup `m` names, which must list `kind`.
fn read_list<'a>(
    store: &'a dyn Store,
    m: &Manifest,
    a: &crate::manifest::Artifact,
    kind: Listing,
) -> Result<Box<dyn Iterator<Item = Result<Kept>> + 'a>> {
    let path = format!("{}/{}", m.backup_id, a.path);
    let reader = open_checked(store, &path, Some((a.sha256.clone(), a.size)))?;
    if reader.kind != kind {
        return Err(Error::Verify(format!(
            "{path} is not a list of {}",
            kind.noun()
        )));
    }
    let objects = reader.store.clone();
    Ok(Box::new(reader.map(move |b| {
        b.map(|blob| Kept {
            path: kind.path(&objects, &blob.digest),
            blob,
            stored_known: true,
        })
    })))
}

/// The bases in the blob store that the lists of the backup `m` name (retention keeps them
/// while a kept backup does).
pub fn bases_of(store: &dyn Store, m: &Manifest) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for kind in [Listing::Blobs, Listing::Trees] {
        let Some(a) = m.artifacts.iter().find(|a| a.kind == artifact_of(kind)) else {
            continue;
        };
        let path = format!("{}/{}", m.backup_id, a.path);
        let lines = Lines::new(BufReader::new(store.open(&path)?), &path)?;
        if let Some(b) = lines.base {
            out.push(b.path(&lines.store));
        }
    }
    Ok(out)
}

/// Whether the backup `m` keeps blobs in the blob store.
pub fn has_blobs(m: &Manifest) -> bool {
    list_artifact(m).is_some() || m.objects.iter().any(|o| o.blob.is_some())
}

/// Every blob the backup `m` keeps in the blob store, in the order of its list (by digest)
/// or of its manifest's objects.
pub fn blobs_of<'a>(
    store: &'a dyn Store,
    m: &'a Manifest,
) -> Result<Box<dyn Iterator<Item = Result<Kept>> + 'a>> {
    if let Some(a) = list_artifact(m) {
        return read_list(store, m, a, Listing::Blobs);
    }
    Ok(Box::new(m.objects.iter().filter_map(|o| {
        let path = o.blob.clone()?;
        Some(match parse_sha(&o.sha256) {
            Some(digest) => Ok(Kept {
                blob: Blob {
                    digest,
                    size: o.size,
                    stored: o.stored_size.unwrap_or(0),
                    fresh: false,
                },
                path,
                stored_known: o.stored_size.is_some(),
            }),
            None => Err(Error::Verify(format!(
                "the manifest of {} lists {} with sha256 {:?}, not a digest",
                m.backup_id, o.key, o.sha256
            ))),
        })
    })))
}

/// Where a blob lies in a registry tree.
pub fn registry_key(digest: &Sha) -> String {
    let hex = sha_hex(digest);
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    fn blob(n: u8, size: u64) -> Blob {
        Blob {
            digest: [n; 32],
            size,
            stored: size + 60,
            fresh: n.is_multiple_of(2),
        }
    }

    #[test]
    fn a_list_reads_back_as_written_and_damage_is_named() {
        let store = MemoryStore::new();
        let bs = BlobStore {
            id: "p-0123abcd".into(),
        };
        let mut w = Writer::new(&store, "b1/blobs.list", &bs, Listing::Blobs).unwrap();
        for b in [blob(1, 10), blob(2, 0), blob(0xab, 1 << 40)] {
            w.push(&b).unwrap();
        }
        assert!(w.push(&blob(2, 5)).is_err(), "out of order is refused");
        let written = w.finish().unwrap();
        assert_eq!(written.blobs, 3);
        let bytes = store.get("b1/blobs.list").unwrap().unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(written.sha256, crate::archive::sha256_hex(&bytes));
        let r = open(&store, "b1/blobs.list").unwrap();
        assert_eq!(r.store, bs);
        assert_eq!(r.base, None);
        let back: Vec<Blob> = r.collect::<Result<_>>().unwrap();
        assert_eq!(back, vec![blob(1, 10), blob(2, 0), blob(0xab, 1 << 40)]);

        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (damaged, says) in [
            (
                format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1]),
                "out of order",
            ),
            (format!("{}\n{} x\n", lines[0], lines[1]), "not `<digest>"),
            (
                format!("{}\nzz{}\n", lines[0], &lines[1][2..]),
                "not a sha256",
            ),
            (format!("{}\n{}", lines[0], "a".repeat(500)), "too long"),
            ("tar archive\n".to_owned(), "not a blob list"),
        ] {
            store.put("L", damaged.as_bytes()).unwrap();
            let got = open(&store, "L").and_then(|r| r.collect::<Result<Vec<_>>>());
            match got {
                Err(Error::Verify(m)) => assert!(m.contains(says), "{says}: {m}"),
                other => panic!("{says}: {other:?}"),
            }
        }
    }

    fn read(store: &MemoryStore, path: &str) -> Vec<Blob> {
        open(store, path).unwrap().collect::<Result<_>>().unwrap()
    }

    #[test]
    fn a_list_holds_its_differences_from_the_previous_base_until_they_are_many() {
        let store = MemoryStore::new();
        let bs = BlobStore { id: "plain".into() };
        let put = |path: &str, entries: &[Blob], base: Option<Base>| {
            write(&store, path, &bs, Listing::Blobs, entries, base).unwrap()
        };
        let old: Vec<Blob> = (1..=100u8).map(|n| blob(n, u64::from(n))).collect();
        // The first list writes a base: the full list, in the store, named by its sha256.
        let first = put("b1/blobs.list", &old, None);
        let base = first.base.unwrap();
        assert_eq!(first.blobs, 50, "its own lines: what its run wrote");
        let base_bytes = store.get(&base.path(&bs)).unwrap().unwrap();
        assert_eq!(crate::archive::sha256_hex(&base_bytes), sha_hex(&base.sha));
        assert_eq!(read(&store, "b1/blobs.list"), old);

        // A few blobs added, one gone, one changed: only those are written.
        let mut new: Vec<Blob> = old
            .iter()
            .filter(|b| b.digest[0] != 7)
            .map(|b| Blob { fresh: false, ..*b })
            .collect();
        new.push(Blob {
            digest: [0xf0; 32],
            size: 5,
            stored: 65,
            fresh: true,
        });
        new[0].stored += 1;
        new.sort_by_key(|b| b.digest);
        let previous = previous_base_of(&store, &bs, "b1/blobs.list");
        assert_eq!(previous, Some(base));
        let second = put("b2/blobs.list", &new, previous);
        assert_eq!(second.base, Some(base), "the same base");
        assert_eq!(second.blobs, 3);
        let text = String::from_utf8(store.get("b2/blobs.list").unwrap().unwrap()).unwrap();
        assert!(
            text.contains(&format!("{} -\n", sha_hex(&[7; 32]))),
            "{text}"
        );
        assert_eq!(read(&store, "b2/blobs.list"), new);
        // The first list reads as it was.
        assert_eq!(read(&store, "b1/blobs.list"), old);

        // Changes beyond an eighth of the list: a new base.
        let many: Vec<Blob> = (101..=200u8).map(|n| blob(n, 1)).collect();
        let third = put("b3/blobs.list", &many, Some(base));
        assert_ne!(third.base, Some(base));
        assert_eq!(read(&store, "b3/blobs.list"), many);

        // A base that was damaged is found out by every list that names it.
        let mut bytes = base_bytes.clone();
        let i = bytes.len() - 3;
        bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
        store.put(&base.path(&bs), &bytes).unwrap();
        let err = open(&store, "b2/blobs.list")
            .and_then(|r| r.collect::<Result<Vec<_>>>())
            .unwrap_err();
        assert!(
            err.to_string().contains("not the base it is named for"),
            "{err}"
        );
        // And a new list is not written against it.
        let fourth = put("b4/blobs.list", &new, Some(base));
        assert_ne!(fourth.base, Some(base));
        assert_eq!(read(&store, "b4/blobs.list"), new);
        // A list whose content is that base's writes it again: the lists that name it read
        // whole again.
        let fifth = put("b5/blobs.list", &old, Some(base));
        assert_eq!(fifth.base, Some(base));
        assert_eq!(store.get(&base.path(&bs)).unwrap().unwrap(), base_bytes);
        assert_eq!(read(&store, "b2/blobs.list"), new);

        // A list cut short at a line's end is refused against what its manifest records,
        // never read as fewer blobs.
        let whole = store.get("b2/blobs.list").unwrap().unwrap();
        let expect = (crate::archive::sha256_hex(&whole), whole.len() as u64);
        let end = whole[..whole.len() - 1]
            .iter()
            .rposition(|&c| c == b'\n')
            .unwrap()
            + 1;
        store.put("b2/blobs.list", &whole[..end]).unwrap();
        let err = open_checked(&store, "b2/blobs.list", Some(expect))
            .and_then(|r| r.collect::<Result<Vec<_>>>())
            .unwrap_err();
        assert!(err.to_string().contains("its manifest records"), "{err}");
    }

    /// The base the list at `path` names, if the store holds it.
    fn previous_base_of(store: &MemoryStore, bs: &BlobStore, path: &str) -> Option<Base> {
        let lines = Lines::new(BufReader::new(store.open(path).unwrap()), path).unwrap();
        let base = lines.base?;
        (store.size(&base.path(bs)).unwrap() == Some(base.size)).then_some(base)
    }

    #[test]
    fn digests_parse_and_print() {
        let hex = "0f".repeat(32);
        let d = parse_sha(&hex).unwrap();
        assert_eq!(d, [0x0f; 32]);
        assert_eq!(sha_hex(&d), hex);
        assert!(parse_sha(&"0F".repeat(32)).is_none());
        assert!(parse_sha("0f").is_none());
        assert_eq!(
            registry_key(&d),
            format!("docker/registry/v2/blobs/sha256/0f/{hex}/data")
        );
    }
}
