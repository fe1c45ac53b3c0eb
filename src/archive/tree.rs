//! A folder tree as a tar stream, laid out for restore: `<prefix>/<path in tree>`.
//!
//! Symlinks are stored as symlinks, never followed (the `tar` crate follows them by default in
//! `append_dir_all`, which would copy whatever they point at). Entries are sorted, so two
//! backups of the same tree list the same members in the same order.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::archive::MemberSink;
use crate::cancel::Cancel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// Sockets, fifos, devices: skipped (a registry tree has none).
    Other,
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// Path relative to the tree's root.
    pub rel: PathBuf,
    pub kind: Kind,
    pub size: u64,
    /// What its tar header records, as the scan saw it.
    pub stat: Stat,
    /// What else the scan saw, which changes whenever the entry does.
    pub seen: Seen,
}

/// What tells that a file is the one seen before, unchanged: its inode, its change time
/// (set by the kernel at every change, never by a program) and its modification time, to
/// the nanosecond. Not in the tar header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub ino: u64,
    pub ctime: i64,
    pub ctime_nsec: i64,
    pub mtime_nsec: i64,
}

impl Seen {
    pub fn of(st: &rustix::fs::Stat) -> Seen {
        Seen {
            ino: st.st_ino,
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
        }
    }
}

/// The fields of a tar header that come from a file's metadata (`HeaderMode::Complete`),
/// taken once at the scan: the archive of a tree records the tree as it was listed, so
/// that two archives of the same listing are the same octets even while a file grows or
/// a folder gains an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mtime: u64,
    /// `st_mode`, as the tar crate records it.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Stat {
    pub fn of(st: &rustix::fs::Stat) -> Stat {
        Stat {
            mtime: u64::try_from(st.st_mtime).unwrap_or(0),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    /// A GNU header of this metadata, of the `kind` and `size` given.
    fn header(&self, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(self.mtime);
        h.set_uid(u64::from(self.uid));
        h.set_gid(u64::from(self.gid));
        h.set_mode(self.mode);
        h.set_entry_type(kind);
        h.set_size(size);
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.set_device_major(0);
            gnu.set_device_minor(0);
        }
        h
    }
}

/// The entries of a tree, read once before archiving (for progress and ETA).
#[derive(Clone, Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub entries: Vec<Entry>,
    /// Sum of file sizes.
    pub total: u64,
}

/// Lists `root` depth-first, sorted by name, without following symlinks.
pub fn scan(root: &Path) -> io::Result<Tree> {
    scan_except(root, &[])
}

/// The same, leaving out the folders `skip` (paths relative to `root`) and all they hold.
pub fn scan_except(root: &Path, skip: &[&Path]) -> io::Result<Tree> {
    scan_where(root, &mut |rel, kind| {
        kind == Kind::Dir && skip.contains(&rel)
    })
}

/// The same, leaving out every entry for which `skip` (its path relative to `root`, its
/// kind) says so, and all it holds.
pub fn scan_where(root: &Path, skip: &mut dyn FnMut(&Path, Kind) -> bool) -> io::Result<Tree> {
    // The root as named, through a symlink if it is one (`images.path` may be); below it,
    // symlinks are entries, never followed.
    let fd = rustix::fs::open(
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut found = Found {
        entries: Vec::new(),
        total: 0,
        skip,
    };
    found.walk(fd, &PathBuf::new())?;
    let Found {
        mut entries, total, ..
    } = found;
    // Parents before children, siblings by name.
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(Tree {
        root: root.to_path_buf(),
        entries,
        total,
    })
}

/// Opens the folder `name` (relative to `at`) for listing, without following a symlink (a
/// folder replaced by one since it was looked at: `ELOOP`).
fn open_dir(
    at: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// What a scan has found so far.
struct Found<'a> {
    entries: Vec<Entry>,
    total: u64,
    skip: &'a mut dyn FnMut(&Path, Kind) -> bool,
}

impl Found<'_> {
    /// Adds what the folder `dir` (at `rel`) holds, and what its folders hold. Entries are
    /// read and opened relative to their folder, so a deep tree's path is not walked again
    /// for each of them.
    fn walk(&mut self, dir: std::os::fd::OwnedFd, rel: &Path) -> io::Result<()> {
        use rustix::fs::{AtFlags, FileType};
        let mut listing = rustix::fs::Dir::new(dir)?;
        let mut children = Vec::new();
        while let Some(e) = listing.read() {
            let e = e?;
            let name = e.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let stat = rustix::fs::statat(listing.fd()?, name, AtFlags::SYMLINK_NOFOLLOW)?;
            children.push((name.to_owned(), stat));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, stat) in children {
            use std::os::unix::ffi::OsStrExt;
            let child = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::Symlink => Kind::Symlink,
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                _ => Kind::Other,
            };
            if (self.skip)(&child, kind) {
                continue;
            }
            let size = if kind == Kind::File {
                u64::try_from(stat.st_size).unwrap_or(0)
            } else {
                0
            };
            self.total += size;
            self.entries.push(Entry {
                rel: child.clone(),
                kind,
                size,
                stat: Stat::of(&stat),
                seen: Seen::of(&stat),
            });
            if kind == Kind::Dir {
                let sub = open_dir(listing.fd()?, name.as_c_str())?;
                self.walk(sub, &child)?;
            }
        }
        Ok(())
    }
}

/// Copies the `size` bytes of a member's data from `from` into `out` in 1 MiB reads (straight
/// into the OpenPGP framing's buffer when encrypting), checking for cancellation at each, and
/// pads to the tar block size. Returns the bytes read, which are
/// fewer than `size` if the source ended early (a file that shrank, a truncated archive).
///
/// (`tar::Builder::append_data` copies through an 8 KiB buffer: two more copies and many
/// more system calls per byte, on the path that carries the image content.)
fn copy_member(
    from: &mut dyn Read,
    size: u64,
    out: &mut dyn MemberSink,
    buf: &mut [u8],
    cancel: &Cancel,
) -> io::Result<u64> {
    let mut done = 0u64;
    while done < size {
        if done > 0 {
            crate::failpoint::hit("tar.member");
        }
        cancel.check()?;
        let want = buf
            .len()
            .min(usize::try_from(size - done).unwrap_or(usize::MAX));
        let n = match out.read_from(from, want, buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        done += n as u64;
    }
    let pad = (512 - (done % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..pad])?;
    Ok(done)
}

/// Writes `tree` as a tar stream into `out`, every member under `prefix` (e.g.
/// `dtr-registry-a1640e1c15b6/_data`). The folders of `prefix` come first.
pub fn write_tar<W: MemberSink>(
    tree: &Tree,
    prefix: &str,
    out: W,
    cancel: &Cancel,
) -> io::Result<W> {
    write_entries(&tree.root, &tree.entries, prefix, true, out, cancel)
}

/// Writes `entries` of the tree at `root` as a whole tar stream, every member under
/// `prefix`; with `parents`, the folders of `prefix` first.
pub fn write_entries<W: MemberSink>(
    root: &Path,
    entries: &[Entry],
    prefix: &str,
    parents: bool,
    out: W,
    cancel: &Cancel,
) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    // As large as the largest file, at most 1 MiB: a tree of small files (a repository's
    // links) does not allocate a megabyte each time.
    let largest = entries.iter().map(|e| e.size).max().unwrap_or(0);
    let mut buf = vec![0u8; largest.clamp(512, 1 << 20) as usize];
    let root_stat = Stat::of(&rustix::fs::stat(root)?);
    // Folders as GNU tar writes them: the name ends with `/`.
    let dir = |b: &mut tar::Builder<W>, stat: &Stat, name: &Path| -> io::Result<()> {
        let mut h = stat.header(tar::EntryType::Directory, 0);
        let mut name = name.as_os_str().to_owned();
        name.push("/");
        append_header(b, &mut h, Path::new(&name))
    };
    let mut acc = PathBuf::new();
    for part in Path::new(prefix).components().filter(|_| parents) {
        acc.push(part);
        dir(&mut b, &root_stat, &acc)?;
    }
    for e in entries {
        cancel.check()?;
        let src = root.join(&e.rel);
        let name = Path::new(prefix).join(&e.rel);
        match e.kind {
            Kind::Dir => dir(&mut b, &e.stat, &name)?,
            Kind::Symlink => b.append_path_with_name(&src, &name)?,
            Kind::File => {
                // As listed: a file that grew since is archived as it was (its first
                // `size` octets); one that shrank is an error.
                let mut file = fs::File::open(&src)?;
                let size = e.size;
                let mut h = e.stat.header(tar::EntryType::Regular, size);
                // The header (with GNU long-name records where needed) from the tar crate,
                // which writes no data and no padding for an empty reader; then the data.
                append_header(&mut b, &mut h, &name)?;
                let read = copy_member(&mut file, size, b.get_mut(), &mut buf, cancel)?;
                if read != size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} shrank while it was read ({read} of {size} bytes); run the backup again",
                            src.display(),
                        ),
                    ));
                }
            }
            Kind::Other => {}
        }
    }
    b.into_inner()
}

/// The length of a tar header's name field.
const NAME_FIELD: usize = 100;

/// Appends the header `h` of a member named `name` that carries no data: the octets that
/// `tar::Builder::append_data(h, name, io::empty())` writes (a GNU long-name record first
/// for a name over 100 octets), without its cost per member (the name walked component by
/// component, and an error message formatted for every long name). A name that is not a
/// plain relative path of ASCII components goes through the tar crate itself.
fn append_header<W: Write>(
    b: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_os_str().as_bytes();
    let long = bytes.len() > NAME_FIELD;
    if !plain_name(bytes) || (long && !plain_name(&bytes[..NAME_FIELD])) {
        return b.append_data(h, name, io::empty());
    }
    let out = b.get_mut();
    if long {
        let mut record = tar::Header::new_gnu();
        record.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        record.set_mode(0o644);
        record.set_uid(0);
        record.set_gid(0);
        record.set_mtime(0);
        // The name and its NUL, as GNU tar counts it.
        record.set_size(bytes.len() as u64 + 1);
        record.set_entry_type(tar::EntryType::GNULongName);
        record.set_cksum();
        out.write_all(record.as_bytes())?;
        out.write_all(bytes)?;
        let pad = (512 - (bytes.len() + 1) % 512) % 512;
        out.write_all(&[0u8; 513][..pad + 1])?;
    }
    // The name, cut to the field when a record above holds it whole.
    let field = &mut h.as_old_mut().name;
    let n = bytes.len().min(NAME_FIELD);
    field[..n].copy_from_slice(&bytes[..n]);
    field[n..].fill(0);
    h.set_cksum();
    out.write_all(h.as_bytes())
}

/// Whether `name` is written into a tar header as its own octets: ASCII without NUL,
/// relative, and every component (but for one trailing `/`) neither empty, `.` nor `..`.
fn plain_name(name: &[u8]) -> bool {
    let body = name.strip_suffix(b"/").unwrap_or(name);
    !body.is_empty()
        && name.iter().all(|&c| c.is_ascii() && c != 0)
        && body
            .split(|&c| c == b'/')
            .all(|part| !part.is_empty() && part != b"." && part != b"..")
}

/// A tar stream of the folders of `prefix` alone (`a/`, `a/b/`, ...): the archive of a
/// tree that holds nothing yet.
pub fn folders<W: std::io::Write>(prefix: &str, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    let now = crate::clock::now_unix().max(0) as u64;
    let mut acc = String::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        acc.push_str(part);
        acc.push('/');
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(now);
        h.set_size(0);
        b.append_data(&mut h, &acc, io::empty())?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members of a tar stream: name and content.
    pub(super) fn members(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    pub(super) fn names(tar_bytes: &[u8]) -> Vec<String> {
        members(tar_bytes).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn headers_are_the_octets_the_tar_crate_writes() {
        let cut = |at: usize, tail: &str| format!("{}{tail}", "r".repeat(at));
        let names = [
            "a".to_owned(),
            "a/b/".to_owned(),
            "x".repeat(99),
            "x".repeat(100),
            "x".repeat(101),
            format!("{}/", "d".repeat(99)),
            format!("{}/", "d".repeat(100)),
            cut(99, "/link"),
            cut(99, "/.hidden/link"),
            cut(98, "/../x"),
            cut(98, "/./x"),
            cut(120, "/_layers/sha256/ab/link"),
            "a//b".to_owned(),
            "./a".to_owned(),
            format!("{}/é", "e".repeat(99)),
            "x".repeat(1023),
            "x".repeat(1024),
            format!(
                "dtr-registry-0123456789ab/_data/docker/registry/v2/repositories/small/repo7/_layers/sha256/{}/link",
                "ab".repeat(32)
            ),
        ];
        let stat = Stat {
            mtime: 1_700_000_000,
            mode: 0o100644,
            uid: 1000,
            gid: 1000,
        };
        for name in &names {
            let kind = if name.ends_with('/') {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            };
            let ours = {
                let mut b = tar::Builder::new(Vec::new());
                append_header(&mut b, &mut stat.header(kind, 0), Path::new(name)).unwrap();
                b.into_inner().unwrap()
            };
            let theirs = {
                let mut b = tar::Builder::new(Vec::new());
                match b.append_data(&mut stat.header(kind, 0), name, io::empty()) {
                    Ok(()) => b.into_inner().unwrap(),
                    // Refused by the tar crate: refused here too.
                    Err(_) => {
                        let mut b = tar::Builder::new(Vec::new());
                        assert!(
                            append_header(&mut b, &mut stat.header(kind, 0), Path::new(name))
                                .is_err()
                        );
                        continue;
                    }
                }
            };
            assert_eq!(ours, theirs, "{name}");
        }
        assert!(plain_name(b"a/b/") && !plain_name(b"a/./b") && !plain_name(b"/a"));
    }

    #[test]
    fn member_data_is_exact_under_long_names_and_odd_sizes() {
        let dir = std::env::temp_dir().join(format!("dtr-backup-data-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let deep = dir.join("d".repeat(120)).join("e".repeat(60));
        fs::create_dir_all(&deep).unwrap();
        let big: Vec<u8> = (0..(3 << 20) + 513).map(|i| (i % 251) as u8).collect();
        fs::write(deep.join("data"), &big).unwrap();
        fs::write(dir.join("small"), b"abc").unwrap();
        fs::write(dir.join("empty"), b"").unwrap();

        let tree = scan(&dir).unwrap();
        let tar_bytes = write_tar(&tree, "v/_data", Vec::new(), &Cancel::new()).unwrap();
        let got = members(&tar_bytes);
        let find = |suffix: &str| {
            got.iter()
                .find(|(n, _)| n.ends_with(suffix))
                .unwrap_or_else(|| panic!("{suffix} missing from {:?}", names(&tar_bytes)))
                .1
                .clone()
        };
        assert_eq!(find(&format!("{}/data", "e".repeat(60))), big);
        assert_eq!(find("/small"), b"abc");
        assert_eq!(find("/empty"), b"");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_are_kept_not_followed_and_layout_is_prefixed() {
        let dir = std::env::temp_dir().join(format!("dtr-backup-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("docker/registry/v2/blobs")).unwrap();
        fs::write(dir.join("docker/registry/v2/blobs/data"), b"hello").unwrap();
        let outside = dir.with_extension("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("big"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("docker/link")).unwrap();

        let tree = scan(&dir).unwrap();
        assert_eq!(tree.total, 5);
        let tar_bytes =
            write_tar(&tree, "dtr-registry-x/_data", Vec::new(), &Cancel::new()).unwrap();
        assert!(
            tar_bytes.len() < 20_000,
            "the symlink target must not be archived"
        );
        let names = names(&tar_bytes);
        // Folders as GNU tar names them, with a trailing `/`.
        assert_eq!(names[0], "dtr-registry-x/");
        assert_eq!(names[1], "dtr-registry-x/_data/");
        assert!(names.contains(&"dtr-registry-x/_data/docker/registry/v2/".to_owned()));
        assert!(names.contains(&"dtr-registry-x/_data/docker/registry/v2/blobs/data".to_owned()));
        assert!(names.contains(&"dtr-registry-x/_data/docker/link".to_owned()));

        // A root named through a symlink (`images.path` may be one) is the folder it names.
        let named = dir.with_extension("named");
        let _ = fs::remove_file(&named);
        std::os::unix::fs::symlink(&dir, &named).unwrap();
        let through = scan(&named).unwrap();
        assert_eq!(
            through.entries.iter().map(|e| &e.rel).collect::<Vec<_>>(),
            tree.entries.iter().map(|e| &e.rel).collect::<Vec<_>>()
        );
        fs::remove_file(&named).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn cancelled_archive_stops() {
        let cancel = Cancel::new();
        cancel.cancel();
        let tree = Tree {
            root: std::env::temp_dir(),
            entries: vec![Entry {
                rel: "x".into(),
                kind: Kind::File,
                size: 1,
                stat: Stat::default(),
                seen: Seen::default(),
            }],
            total: 1,
        };
        let err = write_tar(&tree, "v/_data", Vec::new(), &cancel).unwrap_err();
        assert!(crate::cancel::is_cancellation(&err), "{err}");
    }
}

/// Re-roots a tar stream: members `from` and `from/...` become `to` and `to/...`; the folders
/// of `to` that lie above it come first. Symlinks stay symlinks; hard-link targets move too.
pub fn reroot<R: Read, W: MemberSink>(
    input: R,
    from: &str,
    to: &str,
    out: W,
    cancel: &Cancel,
) -> io::Result<W> {
    let mut archive = tar::Archive::new(super::records::CappedRecords::new(input));
    let mut b = tar::Builder::new(out);
    let mut buf = vec![0u8; 1 << 20];
    let mut wrote_parents = false;
    let map = |p: &str| -> Option<String> {
        let p = p.trim_end_matches('/');
        if p == from {
            Some(to.to_owned())
        } else {
            p.strip_prefix(from)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(|rest| format!("{to}/{rest}"))
        }
    };
    for entry in archive.entries()? {
        cancel.check()?;
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let new_path = map(&path).ok_or_else(|| {
            io::Error::other(format!("unexpected member {path:?} outside {from}/"))
        })?;
        // The size from the PAX record where there is one (Go's tar writer, and so Docker's
        // archive endpoint, puts sizes of 8 GiB and more there, with 0 in the header); the
        // other PAX records go across.
        let pax = carried_pax(&mut entry)?;
        let size = entry.size();
        let mut header = entry.header().clone();
        header.set_size(size);
        if !wrote_parents {
            let mut acc = PathBuf::new();
            for part in Path::new(to)
                .parent()
                .into_iter()
                .flat_map(Path::components)
            {
                acc.push(part);
                let mut h = header.clone();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", acc.display()), io::empty())?;
            }
            wrote_parents = true;
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        match header.entry_type() {
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                b.append_link(&mut header, &new_path, target)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let target = map(&target).ok_or_else(|| {
                    io::Error::other(format!("hard link {path:?} points outside {from}/"))
                })?;
                b.append_link(&mut header, &new_path, target)?;
            }
            tar::EntryType::Directory => {
                b.append_data(&mut header, format!("{new_path}/"), io::empty())?;
            }
            _ => {
                // As in `write_tar`: the header from the tar crate, then the data.
                b.append_data(&mut header, &new_path, io::empty())?;
                let read = copy_member(&mut entry, size, b.get_mut(), &mut buf, cancel)?;
                if read != size {
                    return Err(io::Error::other(format!(
                        "the archive ends inside {path:?} ({read} of {size} bytes)"
                    )));
                }
            }
        }
    }
    b.into_inner()
}

/// The PAX records of a member that a re-rooted copy keeps: all but `path`, `linkpath` (the
/// names are written anew), `size` (the header carries it, base-256 above 8 GiB: a PAX size
/// would also apply to a GNU long-name header written between) and GNU sparse records. A malformed record is an error, not a dropped one.
fn carried_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let Some(records) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for r in records {
        let r = r?;
        let key = r
            .key()
            .map_err(|e| io::Error::other(format!("a PAX record's key is not UTF-8: {e}")))?;
        // GNU sparse records (`GNU.sparse.name` among them) would bring the old name back;
        // Go's writer, whose archives this re-roots, writes no sparse members.
        if key != "path" && key != "linkpath" && key != "size" && !key.starts_with("GNU.sparse.") {
            out.push((key.to_owned(), r.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod reroot_tests {
    use super::tests::{members, names};
    use super::*;

    #[test]
    fn members_move_under_the_new_root() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "storage", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        let long = format!(
            "storage/docker/registry/v2/blobs/sha256/ab/{}/data",
            "a".repeat(64)
        );
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "storage/link", "/elsewhere").unwrap();
        let input = b.into_inner().unwrap();

        let out = reroot(
            &input[..],
            "storage",
            "dtr-registry-x/_data",
            Vec::new(),
            &Cancel::new(),
        )
        .unwrap();
        let names = names(&out);
        // Folders as GNU tar names them, with a trailing `/`.
        assert_eq!(names[0], "dtr-registry-x/");
        assert_eq!(names[1], "dtr-registry-x/_data/");
        assert!(
            names[2].ends_with("/data")
                && names[2].starts_with("dtr-registry-x/_data/docker/registry/v2/")
        );
        assert_eq!(names[3], "dtr-registry-x/_data/link");
        assert_eq!(members(&out)[2].1, b"abc", "member data is carried over");

        // An input cut inside a member's data (2 of its 3 bytes; then come a symlink header
        // and the two end blocks) is an error, not a shorter member.
        let cut = &input[..input.len() - 1024 - 512 - 512 + 2];
        let err = reroot(cut, "storage", "x/_data", Vec::new(), &Cancel::new())
            .expect_err("a truncated input must fail");
        assert!(err.to_string().contains("ends inside"), "{err}");
    }

    /// As Go's tar writer writes a member of 8 GiB or more: the size in a PAX `size` record,
    /// 0 in the header's size field (and here a PAX `path` and an xattr record too).
    #[test]
    fn a_size_in_a_pax_record_is_carried_with_the_data() {
        use std::io::Write;
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let long = format!(
            "storage/docker/registry/v2/blobs/sha256/ab/{}/data",
            "a".repeat(64)
        );
        let mut b = tar::Builder::new(Vec::new());
        let size = data.len().to_string();
        b.append_pax_extensions([
            ("size", size.as_bytes()),
            ("path", long.as_bytes()),
            ("SCHILY.xattr.user.k", &b"v"[..]),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("storage/short").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let raw = b.get_mut();
        raw.extend_from_slice(h.as_bytes());
        raw.write_all(&data).unwrap();
        raw.extend_from_slice(&vec![0u8; (512 - data.len() % 512) % 512]);
        let input = b.into_inner().unwrap();
        assert_eq!(members(&input)[0].1, data, "the input is what Go writes");

        let out = reroot(&input[..], "storage", "v/_data", Vec::new(), &Cancel::new()).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut found = None;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy().ends_with("/data") {
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let xattr: Vec<(String, Vec<u8>)> = e
                    .pax_extensions()
                    .unwrap()
                    .into_iter()
                    .flatten()
                    .map(|r| r.unwrap())
                    .map(|r| (r.key().unwrap().to_owned(), r.value_bytes().to_vec()))
                    .filter(|(k, _)| k.starts_with("SCHILY"))
                    .collect();
                let mut got = Vec::new();
                e.read_to_end(&mut got).unwrap();
                found = Some((name, got, xattr));
            }
        }
        let (name, got, xattr) = found.expect("the blob is in the output");
        assert_eq!(name, format!("v/_data{}", &long["storage".len()..]));
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        assert_eq!(xattr, [("SCHILY.xattr.user.k".to_owned(), b"v".to_vec())]);
    }
}
