//! Repository trees: what a registry keeps besides its blobs (`repositories/<name>/_layers`,
//! `_manifests`, `_uploads`: links, tags, upload state) is small per file but grows with the
//! registry (a link per layer per repository). Kept whole in every backup, a registry of a
//! hundred thousand blobs would write a hundred megabytes of links every night. So each
//! repository's folder is a tar archive of its own, compressed (gzip), stored in the blob
//! store under the sha256 of that archive (`blobs/<store>/trees/<ab>/<digest>`), once however many backups
//! list it: a repository that did not change costs a read of its (small) files and nothing
//! written. The backup's `trees.list` lists the trees it keeps; its images archive holds the
//! rest (the folders above the repositories).
//!
//! A repository's folder is the path before the first component that starts with `_`
//! (`repositories/library/alpine` for `repositories/library/alpine/_layers/...`).
//!
//! Each core reads one repository at a time, listed right before it is read and dropped
//! after, so memory is bound by the largest repositories in hand, not by the registry; a
//! repository that changes while it is read (a push, an upload finishing) is listed and read
//! again. A tree this run stores is read back at once and compared with what was written.

use super::blobs::{Counted, not_as_written, read_back};
use super::known::{self, Known};
use crate::archive::HashWriter;
use crate::archive::tree::{self, Entry};
use crate::blob_store::BlobStore;
use crate::cancel::Cancel;
use crate::crypto::{self, Encryption, Session};
use crate::error::{Error, Result, io};
use crate::snapshot::{self, Blob, Listing};
use crate::storage::Store;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Where repositories are, in a registry tree.
pub const REPOSITORIES: &str = "docker/registry/v2/repositories";

/// The repository folder that `rel` (a path in a registry tree) belongs to, if any.
fn repository_of(rel: &Path) -> Option<PathBuf> {
    let rest = rel.strip_prefix(REPOSITORIES).ok()?;
    let mut key = PathBuf::from(REPOSITORIES);
    for c in rest.components() {
        let Component::Normal(name) = c else {
            return None;
        };
        if name.to_string_lossy().starts_with('_') {
            return Some(key);
        }
        key.push(name);
    }
    None
}

/// Whether the entry `rel` of a registry tree is the first of a repository's own content
/// (`repositories/<name>/_layers`, ...): left out of the images archive, its repository
/// (returned) kept as a tree.
pub fn starts_a_tree(rel: &Path) -> Option<PathBuf> {
    let name = rel.file_name()?.to_string_lossy();
    if !name.starts_with('_') {
        return None;
    }
    let parent = rel.parent()?;
    (repository_of(rel).as_deref() == Some(parent)).then(|| parent.to_path_buf())
}

/// What [`keep`] did.
pub struct Kept {
    pub list: snapshot::Written,
    pub copied: u64,
    pub reused: u64,
    /// Repositories read more than once because they changed while they were read.
    pub reread: u64,
    /// Repositories not read: listed as the last run recorded them (`known`).
    pub trusted: u64,
    /// What to record for the next run (`known::save`): each names a tree that is durable
    /// in the store already.
    pub records: Vec<Known>,
}

/// How often a repository that changes while it is read (a push, an upload finishing) is
/// read before the run gives up.
const ATTEMPTS: u32 = 3;

/// Why keeping one tree did not succeed.
enum Failed {
    /// The repository changed between the listing and the reading, or between two readings:
    /// read it again.
    Changed(String),
    /// Anything else.
    Error(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        Failed::Error(e)
    }
}

/// Whether `e`, met reading a repository's files, says that they changed since the listing
/// (a file removed or shorter than listed, a folder replaced).
fn changed(e: &io::Error) -> bool {
    !crate::cancel::is_cancellation(e)
        && (matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
        ) || matches!(
            // A folder replaced by a symlink or a file since it was looked at.
            e.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR)
        ))
}

/// The entries of the repository `key` as they are now, sorted (none when it is gone).
fn scan(root: &Path, key: &Path) -> std::result::Result<Vec<Entry>, Failed> {
    let folder = root.join(key);
    // The repository's own folder is the tree's first member (not the images archive's: a
    // header per repository there would be written again by every backup).
    let own = match rustix::fs::lstat(&folder) {
        Ok(st) => Entry {
            rel: key.to_path_buf(),
            kind: tree::Kind::Dir,
            size: 0,
            stat: tree::Stat::of(&st),
            seen: tree::Seen::of(&st),
        },
        Err(rustix::io::Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => {
            return Err(Failed::Error(io(
                e.into(),
                format!("reading the repository {}", key.display()),
            )));
        }
    };
    let tree = match tree::scan(&folder) {
        Ok(t) => t,
        // Something in it went while it was listed: the repository is changing, unless it
        // is gone as a whole (deleted since the repositories were listed).
        Err(e) if changed(&e) => {
            return match std::fs::symlink_metadata(&folder) {
                Err(gone) if gone.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                _ => Err(Failed::Changed(e.to_string())),
            };
        }
        Err(e) => {
            return Err(Failed::Error(io(
                e,
                format!("reading the repository {}", key.display()),
            )));
        }
    };
    Ok(std::iter::once(own)
        .chain(
            tree.entries
                .into_iter()
                .map(|mut e| {
                    e.rel = key.join(&e.rel);
                    e
                })
                .filter(|e| repository_of(&e.rel).as_deref() == Some(key)),
        )
        .collect())
}

/// Whether a stored tree of `stored` octets can be whole: a gzip stream of a tar (at least
/// its header and trailer), in an OpenPGP message when encrypted (its random prefix and
/// integrity check). Trees stored before they were compressed are larger, and pass too.
fn plausible(stored: u64, encrypted: bool) -> bool {
    let gzip = 18 + 2;
    stored >= if encrypted { gzip + 18 + 22 } else { gzip }
}

/// Keeps the tree of each repository of `repos` (folders of the registry tree at `root`,
/// every member under `prefix`) in the blob store of `enc` in `dest`, unless it is there;
/// writes the list at `list_path`. A repository that changed while it was read is listed
/// again and read again. `workers` repositories are kept at once.
#[allow(clippy::too_many_arguments)]
pub fn keep(
    root: &Path,
    repos: &[PathBuf],
    prefix: &str,
    dest: &dyn Store,
    enc: &Encryption,
    list_path: &str,
    known: &[Known],
    workers: usize,
    cancel: &Cancel,
) -> Result<Kept> {
    let store = BlobStore::for_encryption(dest, enc)?;
    let held = store.held(dest, Listing::Trees)?;
    let session = Session::new(enc).map_err(|e| io(e, "starting the encryption"))?;
    let one = One {
        root,
        prefix,
        dest,
        store: &store,
        held: &held,
        known,
        encrypted: enc.is_encrypted(),
        session: &session,
        hold: HELD,
        now: crate::clock::now_unix,
        cancel,
    };
    // Repositories are many and small (a file per link): `workers` at once, each taking the
    // next; memory is bound by the largest ones in hand.
    let done = super::on_threads(repos, workers, 1 << 16, |key, buf| {
        one.keep_repository(key, buf)
    })?;
    cancel
        .check()
        .map_err(|e| io(e, "keeping repository trees"))?;
    let (mut copied, mut reused, mut reread, mut trusted) = (0, 0, 0, 0);
    let mut listed: Vec<Blob> = Vec::with_capacity(repos.len());
    let mut records = Vec::with_capacity(repos.len());
    for d in done {
        if d.fresh {
            copied += 1;
        } else {
            reused += 1;
        }
        reread += u64::from(d.again);
        trusted += u64::from(d.trusted);
        records.extend(d.record);
        listed.push(d.blob);
    }
    dest.sync_many(&format!("{}/trees", store.prefix()))?;
    listed.sort_unstable_by_key(|b| b.digest);
    listed.dedup_by_key(|b| b.digest);
    let base = snapshot::previous_base(dest, &store, Listing::Trees);
    Ok(Kept {
        list: snapshot::write(dest, list_path, &store, Listing::Trees, &listed, base)?,
        copied,
        reused,
        reread,
        trusted,
        records,
    })
}

/// The largest tree held in memory between its hashing and its writing (one per core).
const HELD: usize = 4 << 20;

/// Holds what is written while it stays within `cap` octets, then nothing (and says so).
struct UpTo {
    bytes: Vec<u8>,
    cap: usize,
    over: bool,
}

impl UpTo {
    fn new(cap: usize) -> UpTo {
        UpTo {
            bytes: Vec::new(),
            cap,
            over: false,
        }
    }

    /// Everything written, unless it grew over the cap.
    fn held(&self) -> Option<&[u8]> {
        (!self.over).then_some(&self.bytes[..])
    }
}

impl io::Write for UpTo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.over {
            if self.bytes.len() + buf.len() > self.cap {
                self.over = true;
                self.bytes = Vec::new();
            } else {
                self.bytes.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What keeping one repository's tree did.
struct Done {
    /// The list's line.
    blob: Blob,
    /// Whether this run stored it.
    fresh: bool,
    /// How many times it was read again (it changed while read).
    again: u32,
    /// Whether its files were left unread, its listing the same as the last run's.
    trusted: bool,
    /// What to record for the next run.
    record: Option<Known>,
}

/// What keeping one tree needs.
struct One<'a> {
    root: &'a Path,
    prefix: &'a str,
    dest: &'a dyn Store,
    store: &'a BlobStore,
    /// The trees in the store, sorted by digest.
    held: &'a [(snapshot::Sha, u64)],
    /// What the last run recorded, sorted by signature.
    known: &'a [Known],
    encrypted: bool,
    session: &'a Session,
    /// The largest tree held in memory between its hashing and its writing.
    hold: usize,
    /// The time, in Unix seconds.
    now: fn() -> i64,
    cancel: &'a Cancel,
}

impl One<'_> {
    /// Keeps the tree of the repository `key`, listed and read again when it changes while
    /// read.
    fn keep_repository(&self, key: &Path, buf: &mut [u8]) -> Result<Done> {
        self.cancel
            .check()
            .map_err(|e| io(e, "keeping repository trees"))?;
        let mut attempt = 1;
        loop {
            // Before the scan: a change after this is too recent to record.
            let now = (self.now)();
            match scan(self.root, key).and_then(|entries| self.keep_listed(key, &entries, now, buf))
            {
                Ok(mut done) => {
                    done.again = attempt - 1;
                    return Ok(done);
                }
                Err(Failed::Changed(_)) if attempt < ATTEMPTS => {
                    // A moment for the change to finish (an upload moving into place).
                    std::thread::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)));
                    attempt += 1;
                }
                Err(Failed::Changed(why)) => {
                    return Err(Error::source(format!(
                        "the repository {} changed each of the {ATTEMPTS} times it was read ({why}): a push or a garbage collection is running; run the backup again when it is done",
                        key.display()
                    )));
                }
                Err(Failed::Error(e)) => return Err(e),
            }
        }
    }

    /// Keeps the tree of the listing `entries` of the repository `key`, made at `now`:
    /// the one the last run recorded for the same listing when the store holds it, else
    /// read.
    fn keep_listed(
        &self,
        key: &Path,
        entries: &[Entry],
        now: i64,
        buf: &mut [u8],
    ) -> std::result::Result<Done, Failed> {
        let signature = (!entries.is_empty()).then(|| known::signature(self.prefix, entries));
        if let Some(k) = signature.and_then(|s| known::lookup(self.known, s))
            && let Some(stored) = self.stored(&k.digest)
        {
            let blob = Blob {
                digest: k.digest,
                size: k.size,
                stored,
                fresh: false,
            };
            return Ok(Done {
                blob,
                fresh: false,
                again: 0,
                trusted: true,
                record: Some(*k),
            });
        }
        let (blob, fresh) = self.keep(key, entries, buf)?;
        let record = signature
            .filter(|_| known::settled(entries, now))
            .map(|signature| Known {
                signature,
                digest: blob.digest,
                size: blob.size,
            });
        Ok(Done {
            blob,
            fresh,
            again: 0,
            trusted: false,
            record,
        })
    }

    /// What the store holds of the tree `digest`: its stored size, when it can be whole.
    fn stored(&self, digest: &snapshot::Sha) -> Option<u64> {
        let i = self.held.binary_search_by(|(d, _)| d.cmp(digest)).ok()?;
        plausible(self.held[i].1, self.encrypted).then_some(self.held[i].1)
    }

    /// Keeps the tree of `entries` (the repository `key`): its archive's digest first (its
    /// files are small; read once more only when the store lacks it). Returns the list's line
    /// and whether this run stored it.
    fn keep(
        &self,
        key: &Path,
        entries: &[Entry],
        buf: &mut [u8],
    ) -> std::result::Result<(Blob, bool), Failed> {
        let read = |e: io::Error| {
            if changed(&e) {
                Failed::Changed(e.to_string())
            } else {
                Failed::Error(io(e, format!("reading the repository {}", key.display())))
            }
        };
        // Hashed, and held in memory when small (most are): a tree the store lacks is then
        // written from what was hashed, without reading its files again.
        let hashed = tree::write_entries(
            self.root,
            entries,
            self.prefix,
            false,
            HashWriter::new(UpTo::new(self.hold)),
            self.cancel,
        )
        .map_err(read)?;
        let (tar, sha, size) = hashed.finish();
        let digest = snapshot::parse_sha(&sha).ok_or_else(|| Error::internal("a digest"))?;
        if let Some(stored) = self.stored(&digest) {
            let blob = Blob {
                digest,
                size,
                stored,
                fresh: false,
            };
            return Ok((blob, false));
        }
        let target = Listing::Trees.path(self.store, &digest);
        let mut object = Counted::new(self.dest.create_many(&target, size)?);
        let again = {
            let sealed = crypto::encrypt_in(&mut object, self.session)
                .map_err(|e| io(e, format!("encrypting {target}")))?;
            // Compressed before it is encrypted: a tree is mostly 512-octet headers and the
            // padding of small files. Its name stays the sha256 of the tar.
            let mut zipped = GzEncoder::new(sealed, Compression::fast());
            let again = match tar.held() {
                Some(bytes) => {
                    io::Write::write_all(&mut zipped, bytes)
                        .map_err(|e| io(e, format!("writing {target}")))?;
                    sha.clone()
                }
                // Too large to hold: read again, and hashed again to find a change since.
                None => {
                    let written = tree::write_entries(
                        self.root,
                        entries,
                        self.prefix,
                        false,
                        HashWriter::new(&mut zipped),
                        self.cancel,
                    )
                    .map_err(read)?;
                    written.finish().1
                }
            };
            let sealed = zipped
                .finish()
                .map_err(|e| io(e, format!("writing {target}")))?;
            sealed
                .finish()
                .map_err(|e| io(e, format!("writing {target}")))?;
            again
        };
        if again != sha {
            // Dropping the object discards it.
            return Err(Failed::Changed(format!(
                "its archive was {sha} and then {again}"
            )));
        }
        let stored = object.commit()?;
        crate::failpoint::hit("tree.committed");
        // Read back at once, as blobs are: removed when it differs from what was written.
        if let Some(what) = read_back(self.dest, &target, stored, buf, self.cancel)? {
            self.dest.delete(&target)?;
            return Err(Failed::Error(not_as_written(&[what])));
        }
        let blob = Blob {
            digest,
            size,
            stored: stored.size,
            fresh: true,
        };
        Ok((blob, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::storage::memory::MemoryStore;
    use std::fs;

    const PREFIX: &str = "dtr-registry-0123456789ab/_data";

    /// A fresh folder, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("dtr-backup-trees-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A registry tree with the repositories `names`, each with a layer link and a tag.
    fn registry(root: &Path, names: &[&str]) {
        for name in names {
            let repo = root.join(REPOSITORIES).join(name);
            let layer = repo.join("_layers/sha256").join("ab".repeat(32));
            fs::create_dir_all(&layer).unwrap();
            fs::write(layer.join("link"), format!("sha256:{}", "ab".repeat(32))).unwrap();
            let tag = repo.join("_manifests/tags/latest/current");
            fs::create_dir_all(&tag).unwrap();
            fs::write(tag.join("link"), format!("sha256:{}", "cd".repeat(32))).unwrap();
        }
    }

    fn repos(names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| Path::new(REPOSITORIES).join(n))
            .collect()
    }

    fn listing(root: &Path, key: &Path) -> Vec<Entry> {
        match scan(root, key) {
            Ok(entries) => entries,
            Err(_) => panic!("{} cannot be listed", key.display()),
        }
    }

    /// A `One` as `keep` makes it, for an encrypted store that holds no tree, with no record
    /// of a last run.
    fn one_for<'a>(
        root: &'a Path,
        dest: &'a MemoryStore,
        store: &'a BlobStore,
        session: &'a Session,
        cancel: &'a Cancel,
    ) -> One<'a> {
        One {
            root,
            prefix: PREFIX,
            dest,
            store,
            held: &[],
            known: &[],
            encrypted: true,
            session,
            hold: HELD,
            now: crate::clock::now_unix,
            cancel,
        }
    }

    fn listed(store: &MemoryStore, path: &str) -> Vec<Blob> {
        let reader = snapshot::open(store, path).unwrap();
        assert_eq!(reader.kind, Listing::Trees);
        reader.collect::<Result<_>>().unwrap()
    }

    #[test]
    fn an_unchanged_repository_is_stored_once_and_each_tree_is_a_whole_archive() {
        let dir = Scratch::new("kept");
        let names = ["library/alpine", "library/alpine/sub", "team/app"];
        registry(dir.path(), &names);
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("trees"));
        let cancel = Cancel::new();
        let all = repos(&names);
        let first = keep(
            dir.path(),
            &all,
            PREFIX,
            &dest,
            &enc,
            "b1/trees.list",
            &[],
            2,
            &cancel,
        )
        .unwrap();
        assert_eq!((first.copied, first.reused, first.reread), (3, 0, 0));

        // One repository gains a tag: only its tree is stored again.
        let tag = dir
            .path()
            .join(REPOSITORIES)
            .join("team/app/_manifests/tags/v2/current");
        fs::create_dir_all(&tag).unwrap();
        fs::write(tag.join("link"), "sha256:x").unwrap();
        let second = keep(
            dir.path(),
            &all,
            PREFIX,
            &dest,
            &enc,
            "b2/trees.list",
            &[],
            2,
            &cancel,
        )
        .unwrap();
        assert_eq!((second.copied, second.reused), (1, 2));
        let (one, two) = (
            listed(&dest, "b1/trees.list"),
            listed(&dest, "b2/trees.list"),
        );
        assert_eq!((one.len(), two.len()), (3, 3));
        assert_eq!(two.iter().filter(|b| b.fresh).count(), 1);

        // Each tree decrypts to a tar of its own repository's content, whose sha256 is its
        // name; a nested repository's content is in its own tree only.
        let dec = crypto::Decryption::Passphrase(Secret::for_test("trees"));
        let store = BlobStore::for_encryption(&dest, &enc).unwrap();
        let mut names_seen = Vec::new();
        for b in &two {
            let sealed = dest
                .get(&Listing::Trees.path(&store, &b.digest))
                .unwrap()
                .unwrap();
            let mut plain = Vec::new();
            let zipped = crypto::decrypt(&sealed[..], &dec).unwrap();
            assert!(
                (sealed.len() as u64) < b.size,
                "stored compressed: {} of {}",
                sealed.len(),
                b.size
            );
            io::Read::read_to_end(&mut crate::archive::unzipped(zipped).unwrap(), &mut plain)
                .unwrap();
            assert_eq!(
                crate::archive::sha256_hex(&plain),
                snapshot::sha_hex(&b.digest)
            );
            assert_eq!(plain.len() as u64, b.size);
            let mut tar = tar::Archive::new(&plain[..]);
            let names: Vec<String> = tar
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect();
            let rel = |n: &String| PathBuf::from(n.strip_prefix(&format!("{PREFIX}/")).expect(n));
            // The repository's own folder first, then its content.
            let own = rel(&names[0]);
            assert!(names[0].ends_with('/'), "{names:?}");
            let repo: std::collections::BTreeSet<_> = names[1..]
                .iter()
                .map(|n| repository_of(&rel(n)).expect(n))
                .collect();
            assert_eq!(repo.into_iter().collect::<Vec<_>>(), [own], "{names:?}");
            names_seen.extend(names);
        }
        for name in names {
            assert!(
                names_seen.iter().any(|n| n.ends_with(&format!(
                    "repositories/{name}/_manifests/tags/latest/current/link"
                ))),
                "{name}: {names_seen:?}"
            );
        }
    }

    #[test]
    fn a_tree_that_reads_back_otherwise_is_removed_and_fails_the_run() {
        let dir = Scratch::new("read-back");
        registry(dir.path(), &["a", "b"]);
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("trees"));
        let run = |list: &str| {
            keep(
                dir.path(),
                &repos(&["a", "b"]),
                PREFIX,
                &dest,
                &enc,
                list,
                &[],
                2,
                &Cancel::new(),
            )
        };
        dest.damage_commits(Some("blobs"));
        let Err(err) = run("b1/trees.list") else {
            panic!("a damaged tree was kept");
        };
        assert!(matches!(err, Error::Verify(_)), "{err:?}");
        assert!(err.to_string().contains("read back differently"), "{err}");
        assert!(
            !dest.paths().iter().any(|p| p.contains("/trees/")),
            "{:?}",
            dest.log()
        );
        assert!(dest.get("b1/trees.list").unwrap().is_none());

        dest.damage_commits(None);
        let kept = run("b2/trees.list").unwrap();
        assert_eq!((kept.copied, kept.reused), (2, 0));
    }

    #[test]
    fn a_file_that_grows_while_it_is_read_is_archived_as_listed() {
        let dir = Scratch::new("grows");
        registry(dir.path(), &["a"]);
        let key = Path::new(REPOSITORIES).join("a");
        let upload = dir.path().join(&key).join("_uploads/u1");
        fs::create_dir_all(&upload).unwrap();
        fs::write(upload.join("data"), b"first part").unwrap();
        let entries = listing(dir.path(), &key);
        let cancel = Cancel::new();
        let archive = || {
            tree::write_entries(dir.path(), &entries, PREFIX, false, Vec::new(), &cancel).unwrap()
        };
        let before = archive();
        // The upload goes on: its data grows, its folder gains an entry, times move.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(100);
        let mut data = fs::OpenOptions::new()
            .append(true)
            .open(upload.join("data"))
            .unwrap();
        io::Write::write_all(&mut data, b", second part").unwrap();
        data.set_modified(later).unwrap();
        fs::write(upload.join("hashstate"), b"x").unwrap();
        fs::File::open(&upload)
            .unwrap()
            .set_modified(later)
            .unwrap();
        // The same listing gives the same octets: the digest of a pass and of the next agree.
        assert_eq!(archive(), before);
        let mut tar = tar::Archive::new(&before[..]);
        let data = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("_uploads/u1/data"))
            .map(|mut e| {
                let mut v = Vec::new();
                io::Read::read_to_end(&mut e, &mut v).unwrap();
                v
            });
        assert_eq!(data.as_deref(), Some(&b"first part"[..]));
    }

    #[test]
    fn a_repository_that_changed_since_its_listing_is_read_again() {
        let dir = Scratch::new("changed");
        registry(dir.path(), &["a"]);
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("trees"));
        let cancel = Cancel::new();
        let store = BlobStore::for_encryption(&dest, &enc).unwrap();
        let session = Session::new(&enc).unwrap();
        let one = one_for(dir.path(), &dest, &store, &session, &cancel);
        let key = Path::new(REPOSITORIES).join("a");
        let entries = listing(dir.path(), &key);
        // A file listed, then removed (an upload finished): the repository changed.
        fs::remove_file(
            dir.path()
                .join(&key)
                .join("_manifests/tags/latest/current/link"),
        )
        .unwrap();
        assert!(matches!(
            one.keep(&key, &entries, &mut [0u8; 4096]),
            Err(Failed::Changed(_))
        ));
        assert!(
            dest.paths().iter().all(|p| !p.contains("/trees/")),
            "nothing stored"
        );
        // Listed again, it is kept as it is now.
        let (blob, fresh) = match one.keep(&key, &listing(dir.path(), &key), &mut [0u8; 4096]) {
            Ok(kept) => kept,
            Err(_) => panic!("a repository read again is kept"),
        };
        assert!(fresh);
        assert!(
            dest.paths()
                .iter()
                .any(|p| p.ends_with(&snapshot::sha_hex(&blob.digest)))
        );
        // A repository removed since the listing of repositories is an empty tree.
        fs::remove_dir_all(dir.path().join(&key)).unwrap();
        assert!(listing(dir.path(), &key).is_empty());
        // An interruption is not a change.
        let stop = Cancel::new();
        stop.cancel();
        assert!(!changed(&stop.check().unwrap_err()));
        assert!(changed(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(changed(&io::Error::from_raw_os_error(libc::ELOOP)));
        assert!(!changed(&io::Error::from_raw_os_error(libc::EACCES)));
    }

    #[test]
    fn a_tree_too_large_to_hold_is_read_again_into_the_same_object() {
        let dir = Scratch::new("hold");
        registry(dir.path(), &["a"]);
        let enc = Encryption::Passphrase(Secret::for_test("trees"));
        let dec = crypto::Decryption::Passphrase(Secret::for_test("trees"));
        let cancel = Cancel::new();
        let session = Session::new(&enc).unwrap();
        let key = Path::new(REPOSITORIES).join("a");
        let entries = listing(dir.path(), &key);
        // Held (the default), and not held (read a second time): the same tree.
        let mut plain = Vec::new();
        for hold in [HELD, 0] {
            let dest = MemoryStore::new();
            let store = BlobStore::for_encryption(&dest, &enc).unwrap();
            let one = One {
                hold,
                ..one_for(dir.path(), &dest, &store, &session, &cancel)
            };
            let Ok((blob, true)) = one.keep(&key, &entries, &mut [0u8; 4096]) else {
                panic!("the tree is stored (hold {hold})");
            };
            let stored = dest
                .get(&Listing::Trees.path(&store, &blob.digest))
                .unwrap()
                .unwrap();
            let mut tar = Vec::new();
            let zipped = crypto::decrypt(&stored[..], &dec).unwrap();
            io::Read::read_to_end(&mut flate2::read::GzDecoder::new(zipped), &mut tar).unwrap();
            assert_eq!(
                crate::archive::sha256_hex(&tar),
                snapshot::sha_hex(&blob.digest)
            );
            assert_eq!(tar.len() as u64, blob.size);
            plain.push(tar);
        }
        assert_eq!(plain[0], plain[1]);
        assert!(UpTo::new(4).held().is_some_and(<[u8]>::is_empty));
        let mut over = UpTo::new(4);
        io::Write::write_all(&mut over, b"12345").unwrap();
        assert!(over.held().is_none());
    }

    #[test]
    fn a_repository_listed_as_the_last_run_saw_it_is_not_read_again() {
        fn later() -> i64 {
            crate::clock::now_unix() + 3600
        }
        let dir = Scratch::new("known");
        registry(dir.path(), &["a"]);
        let dest = MemoryStore::new();
        let enc = Encryption::Passphrase(Secret::for_test("trees"));
        let cancel = Cancel::new();
        let store = BlobStore::for_encryption(&dest, &enc).unwrap();
        let session = Session::new(&enc).unwrap();
        let key = Path::new(REPOSITORIES).join("a");
        let one = |held, known, now| One {
            held,
            known,
            now,
            ..one_for(dir.path(), &dest, &store, &session, &cancel)
        };
        let mut buf = [0u8; 4096];
        // Files changed just now are read, and not recorded.
        let fresh = one(&[], &[], crate::clock::now_unix)
            .keep_repository(&key, &mut buf)
            .unwrap();
        assert!(fresh.record.is_none() && !fresh.trusted);
        // Once they have settled, the listing is recorded with its tree.
        let first = one(&[], &[], later)
            .keep_repository(&key, &mut buf)
            .unwrap();
        let record = first.record.expect("a settled listing is recorded");
        assert_eq!(record.digest, fresh.blob.digest);
        let held = store.held(&dest, Listing::Trees).unwrap();
        let recorded = [record];

        let second = one(&held, &recorded, later)
            .keep_repository(&key, &mut buf)
            .unwrap();
        assert!(second.trusted && !second.fresh);
        assert_eq!(
            (second.blob.digest, second.blob.size),
            (record.digest, record.size)
        );
        assert_eq!(second.record, Some(record), "carried to the next run");

        // Not when the store no longer holds that tree: read and stored again.
        let gone = one(&[], &recorded, later)
            .keep_repository(&key, &mut buf)
            .unwrap();
        assert!(!gone.trusted && gone.fresh);

        // A link rewritten with other content of the same size: read, a new tree.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let link = dir
            .path()
            .join(&key)
            .join("_manifests/tags/latest/current/link");
        fs::write(&link, format!("sha256:{}", "ef".repeat(32))).unwrap();
        let third = one(&held, &recorded, later)
            .keep_repository(&key, &mut buf)
            .unwrap();
        assert!(!third.trusted && third.fresh);
        assert_ne!(third.blob.digest, record.digest);
    }

    #[test]
    fn a_repository_is_the_folder_before_the_first_underscore() {
        let r = |p: &str| repository_of(Path::new(p)).map(|k| k.display().to_string());
        assert_eq!(
            r("docker/registry/v2/repositories/library/alpine/_layers/sha256/ab/link").as_deref(),
            Some("docker/registry/v2/repositories/library/alpine")
        );
        assert_eq!(
            r("docker/registry/v2/repositories/a/b/c/_manifests").as_deref(),
            Some("docker/registry/v2/repositories/a/b/c")
        );
        assert_eq!(r("docker/registry/v2/repositories/library/alpine"), None);
        assert_eq!(r("docker/registry/v2/blobs/sha256/ab"), None);
    }

    #[test]
    fn a_tree_starts_at_the_first_underscore_below_the_repositories() {
        let s = |p: &str| starts_a_tree(Path::new(p)).map(|k| k.display().to_string());
        let repo = Some("docker/registry/v2/repositories/a/b".to_owned());
        assert_eq!(s("docker/registry/v2/repositories/a/b/_layers"), repo);
        assert_eq!(s("docker/registry/v2/repositories/a/b/_uploads"), repo);
        assert_eq!(
            s("docker/registry/v2/repositories/a/b/_layers/sha256"),
            None
        );
        assert_eq!(s("docker/registry/v2/repositories/a/b/_layers/_x"), None);
        assert_eq!(s("docker/registry/v2/repositories/a/b/c"), None);
        assert_eq!(s("docker/registry/v2/_x"), None);
    }
}
