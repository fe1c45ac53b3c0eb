//! Repositories known unchanged since the last run. A repository's tree is named by the
//! sha256 of its archive, which takes reading each of its files (a link per layer, per
//! manifest, per tag). The last run also recorded, for each repository, a signature of its
//! listing (every entry's name, kind, size and header fields, its inode and its change and
//! modification times to the nanosecond, and the archive's prefix) with the tree it gave.
//! A repository whose listing has the same signature now holds the same files: its tree is
//! the one recorded, if the blob store still holds it, and its files are not read (as
//! restic trusts a file's metadata). A change time is set by the kernel at every change of
//! a file, never by a program.
//!
//! A listing with a change too recent to be told apart from one right after the scan (the
//! racy case of git's index) is not recorded. The record is `trees.cache` in the state
//! folder, replaced by each run that keeps trees; it is only a shortcut: without it, or
//! when it cannot be read, every repository is read. Removing it makes the next run read
//! every repository.

use std::os::unix::ffi::OsStrExt;

use sha2::{Digest, Sha256};

use crate::archive::tree::{Entry, Kind};
use crate::error::Result;
use crate::snapshot::Sha;
use crate::storage::Store;

/// Its name in the state folder.
pub const FILE: &str = "trees.cache";

/// The first line of the file; a new form of signature or tree gets a new number, which
/// leaves older records unused.
const MAGIC: &[u8] = b"dtr-backup trees cache 1\n";

/// A record: the signature (16 octets), the tree's sha256 (32) and its size (8).
const RECORD: usize = 16 + 32 + 8;

/// A change within this many seconds before the scan is not recorded: a file changed again
/// right after the scan could show the same times.
const SETTLED_SECS: i64 = 2;

/// One repository as the last run saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub signature: u128,
    pub digest: Sha,
    pub size: u64,
}

/// The records of the last run, sorted by signature; and why there are none, when the file
/// could not be used.
pub fn load(state: &dyn Store) -> (Vec<Known>, Option<String>) {
    let bytes = match state.get(FILE) {
        Ok(Some(b)) => b,
        Ok(None) => return (Vec::new(), None),
        Err(e) => return (Vec::new(), Some(format!("{FILE} cannot be read ({e})"))),
    };
    match parse(&bytes) {
        Some(records) => (records, None),
        None => (
            Vec::new(),
            Some(format!(
                "{}/{FILE} is not a record this version reads: every repository is read, and it is written anew",
                state.describe()
            )),
        ),
    }
}

fn parse(bytes: &[u8]) -> Option<Vec<Known>> {
    let body = bytes.strip_prefix(MAGIC)?;
    if body.len() % RECORD != 0 {
        return None;
    }
    let records: Vec<Known> = body
        .chunks_exact(RECORD)
        .map(|r| Known {
            signature: u128::from_le_bytes(r[..16].try_into().unwrap_or_default()),
            digest: r[16..48].try_into().unwrap_or_default(),
            size: u64::from_le_bytes(r[48..].try_into().unwrap_or_default()),
        })
        .collect();
    records
        .windows(2)
        .all(|w| w[0].signature < w[1].signature)
        .then_some(records)
}

/// Replaces the record with `records` (this run's repositories).
pub fn save(state: &dyn Store, mut records: Vec<Known>) -> Result<()> {
    records.sort_unstable_by_key(|k| k.signature);
    records.dedup_by_key(|k| k.signature);
    let mut bytes = Vec::with_capacity(MAGIC.len() + records.len() * RECORD);
    bytes.extend_from_slice(MAGIC);
    for k in &records {
        bytes.extend_from_slice(&k.signature.to_le_bytes());
        bytes.extend_from_slice(&k.digest);
        bytes.extend_from_slice(&k.size.to_le_bytes());
    }
    state.replace(FILE, &bytes)
}

/// The record with `signature`, if any.
pub fn lookup(records: &[Known], signature: u128) -> Option<&Known> {
    records
        .binary_search_by_key(&signature, |k| k.signature)
        .ok()
        .map(|i| &records[i])
}

/// The signature of a repository's listing, archived under `prefix`.
pub fn signature(prefix: &str, entries: &[Entry]) -> u128 {
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(prefix.as_bytes());
    h.update([0]);
    for e in entries {
        h.update(e.rel.as_os_str().as_bytes());
        h.update([
            0,
            match e.kind {
                Kind::Dir => 1,
                Kind::File => 2,
                Kind::Symlink => 3,
                Kind::Other => 4,
            },
        ]);
        for n in [e.size, e.stat.mtime, e.seen.ino] {
            h.update(n.to_le_bytes());
        }
        for n in [e.stat.mode, e.stat.uid, e.stat.gid] {
            h.update(n.to_le_bytes());
        }
        for n in [e.seen.ctime, e.seen.ctime_nsec, e.seen.mtime_nsec] {
            h.update(n.to_le_bytes());
        }
    }
    let d = h.finalize();
    u128::from_le_bytes(d[..16].try_into().unwrap_or_default())
}

/// Whether every change to `entries` is older than `SETTLED_SECS` at `now` (Unix seconds,
/// taken before the scan): only then is the listing recorded.
pub fn settled(entries: &[Entry], now: i64) -> bool {
    entries.iter().all(|e| e.seen.ctime < now - SETTLED_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tree::{Seen, Stat};
    use crate::storage::memory::MemoryStore;

    fn entry(rel: &str, ctime: i64) -> Entry {
        Entry {
            rel: rel.into(),
            kind: Kind::File,
            size: 71,
            stat: Stat::default(),
            seen: Seen {
                ino: 7,
                ctime,
                ctime_nsec: 5,
                mtime_nsec: 0,
            },
        }
    }

    #[test]
    fn a_record_reads_back_and_anything_else_is_set_aside() {
        let state = MemoryStore::new();
        assert_eq!(load(&state), (Vec::new(), None));
        let a = Known {
            signature: 9,
            digest: [1; 32],
            size: 1024,
        };
        let b = Known {
            signature: 3,
            digest: [2; 32],
            size: 2048,
        };
        save(&state, vec![a, b, a]).unwrap();
        let (records, note) = load(&state);
        assert_eq!((records.clone(), note), (vec![b, a], None));
        assert_eq!(lookup(&records, 9), Some(&a));
        assert_eq!(lookup(&records, 4), None);

        let mut bytes = state.get(FILE).unwrap().unwrap();
        bytes.pop();
        state.put(FILE, &bytes).unwrap();
        let (records, note) = load(&state);
        assert!(records.is_empty());
        assert!(note.unwrap().contains("every repository is read"));
        state.put(FILE, b"dtr-backup trees cache 0\n").unwrap();
        assert!(load(&state).0.is_empty() && load(&state).1.is_some());
    }

    #[test]
    fn the_signature_follows_every_field_and_the_prefix() {
        let base = vec![entry("r/_layers/link", 100)];
        let sig = signature("v/_data", &base);
        assert_eq!(sig, signature("v/_data", &base.clone()));
        assert_ne!(sig, signature("w/_data", &base));
        let changes: [fn(&mut Entry); 11] = [
            |e| e.rel = "r/_layers/lonk".into(),
            |e| e.kind = Kind::Symlink,
            |e| e.size += 1,
            |e| e.stat.mtime += 1,
            |e| e.stat.mode ^= 1,
            |e| e.stat.uid += 1,
            |e| e.stat.gid += 1,
            |e| e.seen.ino += 1,
            |e| e.seen.ctime += 1,
            |e| e.seen.ctime_nsec += 1,
            |e| e.seen.mtime_nsec += 1,
        ];
        for change in &changes {
            let mut changed = base.clone();
            change(&mut changed[0]);
            assert_ne!(signature("v/_data", &changed), sig);
        }
        let mut more = base.clone();
        more.push(entry("r/_layers/other", 100));
        assert_ne!(signature("v/_data", &more), sig);
    }

    #[test]
    fn only_a_listing_changed_long_enough_ago_is_recorded() {
        let now = 1_000_000;
        assert!(settled(&[entry("a", now - 3)], now));
        assert!(!settled(&[entry("a", now - 3), entry("b", now - 1)], now));
        assert!(!settled(&[entry("a", now + 5)], now));
    }
}
