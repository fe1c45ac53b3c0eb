//! The blobs a backup keeps in the plan's blob store (`blob_store`): `blobs.list` in the
//! backup's folder, one line per blob, sorted by digest, each digest once:
//!
//! ```text
//! dtr-backup blobs 1 <store>
//! <sha256, 64 hex digits> <size> <stored size>[ new]
//! ```
//!
//! `new` marks the blobs that the backup's own run copied into the store (apply reads those
//! back before it publishes the backup).
//!
//! `<store>` is the blob store's folder (`blobs/<store>/sha256/<ab>/<digest>`), the sizes are
//! the blob's and its stored object's (larger when encrypted). The list is written before the
//! manifest, which records it as an artifact (its size and sha256), and read as a stream: a
//! million blobs never sit in memory as strings. Backups of releases before the list kept
//! the blobs of S3 sources in the manifest's `objects`; [`blobs_of`] reads both.

use std::io::{self, BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};

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

/// No line of a list is longer (digest, two sizes, separators).
const MAX_LINE: u64 = 160;

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

/// What a written list is: its size and sha256 (for the manifest), and how many blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
    pub blobs: u64,
}

impl Writer {
    /// Starts the list at `path` of the objects kept in `blobs`.
    pub fn new(store: &dyn Store, path: &str, blobs: &BlobStore, kind: Listing) -> Result<Writer> {
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
        Ok(w)
    }

    /// Adds a blob; blobs come in increasing order of digest.
    pub fn push(&mut self, b: &Blob) -> Result<()> {
        if self.last.is_some_and(|l| l >= b.digest) {
            return Err(Error::internal("blob list entries out of order"));
        }
        self.last = Some(b.digest);
        self.count += 1;
        let mark = if b.fresh { " new" } else { "" };
        writeln!(
            self.out,
            "{} {} {}{mark}",
            sha_hex(&b.digest),
            b.size,
            b.stored
        )
        .map_err(|e| io(e, "writing the blob list"))
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
        };
        hashing.inner.commit()?;
        Ok(written)
    }
}

/// A stored list, read line by line; every line is checked (digest, order, sizes).
pub struct Reader<R> {
    lines: R,
    /// The blob store the blobs are kept in.
    pub store: BlobStore,
    /// What it lists.
    pub kind: Listing,
    last: Option<Sha>,
    what: String,
    line: String,
    number: u64,
}

impl<R: BufRead> Reader<R> {
    /// Reads the header of the list `what` from `from`.
    pub fn new(mut from: R, what: &str) -> Result<Reader<R>> {
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
            })?;
        Ok(Reader {
            store: BlobStore {
                id: store.to_owned(),
            },
            kind,
            lines: from,
            last: None,
            what: what.to_owned(),
            line: String::new(),
            number: 1,
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

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Blob>;

    fn next(&mut self) -> Option<Result<Blob>> {
        let mut line = std::mem::take(&mut self.line);
        let got = read_line(&mut self.lines, &mut line, &self.what);
        self.number += 1;
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

impl<R> Reader<R> {
    fn bad(&self, why: &str) -> Error {
        Error::Verify(format!("{} line {}: {why}", self.what, self.number))
    }

    fn parse(&mut self, line: &str) -> Result<Blob> {
        let mut fields = line.split(' ');
        let (Some(d), Some(size), Some(stored), mark, None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(self.bad("not `<digest> <size> <stored size>[ new]`"));
        };
        let fresh = match mark {
            None => false,
            Some("new") => true,
            Some(_) => return Err(self.bad("not `<digest> <size> <stored size>[ new]`")),
        };
        let digest = parse_sha(d).ok_or_else(|| self.bad("not a sha256 digest"))?;
        if self.last.is_some_and(|l| l >= digest) {
            return Err(self.bad("digests out of order"));
        }
        let (Ok(size), Ok(stored)) = (size.parse::<u64>(), stored.parse::<u64>()) else {
            return Err(self.bad("a size is not a number"));
        };
        self.last = Some(digest);
        Ok(Blob {
            digest,
            size,
            stored,
            fresh,
        })
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
    let reader = Reader::new(BufReader::with_capacity(1 << 16, store.open(&path)?), &path)?;
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
        let r = Reader::new(&bytes[..], "b1/blobs.list").unwrap();
        assert_eq!(r.store, bs);
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
            let got =
                Reader::new(damaged.as_bytes(), "L").and_then(|r| r.collect::<Result<Vec<_>>>());
            match got {
                Err(Error::Verify(m)) => assert!(m.contains(says), "{says}: {m}"),
                other => panic!("{says}: {other:?}"),
            }
        }
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
