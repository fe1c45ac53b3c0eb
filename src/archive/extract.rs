//! Extracting a tar stream into a folder, safe against a hostile archive, and writing files
//! that a registry will serve only once their content matches its digest.
//!
//! Every member lands under the target or is refused: no absolute name, no `..`, no symbolic
//! link at all (a registry's storage holds none; a link could expose or overwrite files
//! outside the folder, or put unchecked content under a blob's name), no hard link that
//! points outside or to something not yet written, nothing written through anything but a
//! real folder, no device, FIFO or sparse member. Folders are created private (0700) while
//! the extraction runs and get their modes (group and other write cleared) and owners at the
//! end, deepest first, so that nobody else can swap a folder for a link meanwhile. Files are
//! written under a temporary name in their folder, hashed on the way when a digest is
//! expected, made durable (fsync) and only then renamed to their final name; each folder is
//! fsynced once the archive has moved past it. Permission bits (without setuid, setgid,
//! sticky, group and other write) and modification times of files are kept, owners too
//! when running as root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::cancel::Cancel;

/// Why extraction stopped.
#[derive(Debug)]
pub enum Refused {
    /// A member that would land outside the target, or of a kind never restored.
    Hostile(String),
    /// A file whose content does not hash to the digest it must have (or has another size).
    /// Nothing was left under its name.
    Digest {
        path: String,
        want: String,
        got: String,
    },
    /// Reading the archive failed: damaged, cut short, or its decryption failed (a
    /// cancellation included).
    Read(io::Error),
    /// Writing the target failed.
    Write(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Hostile(why) => write!(f, "{why}"),
            Refused::Digest { path, want, got } => {
                write!(f, "{path} is {got}, not {want}")
            }
            Refused::Read(e) => write!(f, "reading the archive: {e}"),
            Refused::Write(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for Refused {
    /// Errors of the target's file system; reading errors are mapped where they happen.
    fn from(e: io::Error) -> Refused {
        Refused::Write(e)
    }
}

fn read(e: io::Error) -> Refused {
    Refused::Read(e)
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// Files checked against a digest before they got their name.
    pub checked: u64,
}

/// Where and how to extract.
pub struct Target<'a> {
    /// An existing folder.
    pub root: &'a Path,
    /// The leading folder of every member (`<volume>/_data`), removed; the members that are
    /// this folder or its parents are skipped, any other member outside it is refused.
    pub strip: &'a str,
    /// The sha256 a file must have, by its path under `root` (`None`: any content).
    pub digest_of: &'a dyn Fn(&str) -> Option<String>,
    pub cancel: &'a Cancel,
}

/// Extracts the tar stream `reader` into `target`. The stream must be the archive itself
/// (decrypted, and guarded by `records::CappedRecords` when it comes from storage).
pub fn extract(reader: impl Read, target: &Target) -> Result<Extracted, Refused> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Extracted::default();
    let mut sync = DirSync::default();
    let as_root = running_as_root();
    let strip: Vec<&str> = target.strip.split('/').filter(|p| !p.is_empty()).collect();
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        target.cancel.check().map_err(read)?;
        if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
            continue; // A comment for the whole archive (git archive writes one).
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let parts = components(&raw)?;
        if parts.len() <= strip.len() && parts.iter().zip(&strip).all(|(a, b)| a == b) {
            continue; // `<volume>/`, `<volume>/_data/`: the target itself.
        }
        if !parts.iter().zip(&strip).all(|(a, b)| a == b) || parts.len() <= strip.len() {
            return Err(Refused::Hostile(format!(
                "the member {raw:?} is outside {}/: refused, nothing written outside the target",
                target.strip
            )));
        }
        let rel = parts[strip.len()..].join("/");
        let dest = target.root.join(&rel);
        let parent = dest.parent().unwrap_or(target.root).to_path_buf();
        make_dirs(target.root, &parent, &mut sync)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o755;
        let owner = if as_root {
            Some((header.uid().unwrap_or(0), header.gid().unwrap_or(0)))
        } else {
            None
        };
        let mtime = header.mtime().ok();
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Refused::Hostile(format!(
                            "the member {raw:?} is a folder where the archive put something else"
                        )));
                    }
                    Err(_) => {
                        fs::DirBuilder::new().mode(0o700).create(&dest)?;
                        out.dirs += 1;
                    }
                }
                sync.enter(target.root, &dest)?;
                sync.set(&dest, mode | 0o700, owner);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                sync.enter(target.root, &parent)?;
                let want = (target.digest_of)(&rel);
                let size = write_file(
                    &mut entry,
                    &dest,
                    &rel,
                    Meta { mode, owner, mtime },
                    want.as_deref(),
                    None,
                    target.cancel,
                )?;
                out.files += 1;
                out.bytes += size;
                out.checked += u64::from(want.is_some());
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(Refused::Hostile(format!(
                    "the member {raw:?} is a symbolic link (to {link:?}): a registry's storage holds none, and restore creates none (a link could reach outside the folder or stand in for a blob)"
                )));
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(read)?.ok_or_else(|| {
                    Refused::Hostile(format!("the hard link {raw:?} has no target"))
                })?;
                let link_raw = link.to_string_lossy().into_owned();
                let link_parts = components(&link_raw)?;
                if link_parts.len() <= strip.len()
                    || !link_parts.iter().zip(&strip).all(|(a, b)| a == b)
                {
                    return Err(Refused::Hostile(format!(
                        "the hard link {raw:?} points to {link_raw:?}, outside {}/: refused",
                        target.strip
                    )));
                }
                // No symbolic link exists under the target (none is ever created), so the
                // path resolves inside it.
                let source = target.root.join(link_parts[strip.len()..].join("/"));
                let meta = fs::symlink_metadata(&source).map_err(|_| {
                    Refused::Hostile(format!(
                        "the hard link {raw:?} points to {link_raw:?}, which the archive has not written"
                    ))
                })?;
                if !meta.is_file() {
                    return Err(Refused::Hostile(format!(
                        "the hard link {raw:?} points to {link_raw:?}, which is not a file"
                    )));
                }
                // A link where a digest is expected is checked like a file.
                if let Some(want) = (target.digest_of)(&rel) {
                    let (got, _) = hash_file(&source)?;
                    if got != want {
                        return Err(Refused::Digest {
                            path: rel,
                            want: format!("sha256:{want}"),
                            got: format!("sha256:{got}"),
                        });
                    }
                    out.checked += 1;
                }
                sync.enter(target.root, &parent)?;
                replace_with(&dest, |tmp| fs::hard_link(&source, tmp))?;
                out.links += 1;
            }
            other => {
                return Err(Refused::Hostile(format!(
                    "the member {raw:?} is a {}: refused (a registry holds files and folders only)",
                    kind_name(other)
                )));
            }
        }
    }
    sync.finish()?;
    Ok(out)
}

/// Writes `source` as the file `rel` under `root` (its folders created), checked against
/// `want` (sha256) and `size` when given, made durable and named only then. Returns its
/// size.
pub fn write_checked(
    root: &Path,
    rel: &str,
    source: &mut dyn Read,
    want: Option<&str>,
    size: Option<u64>,
    cancel: &Cancel,
) -> Result<u64, Refused> {
    let parts = components(rel)?;
    if parts.is_empty() {
        return Err(Refused::Hostile(format!("{rel:?} names no file")));
    }
    let rel = parts.join("/");
    let dest = root.join(&rel);
    let parent = dest.parent().unwrap_or(root).to_path_buf();
    let mut sync = DirSync::default();
    make_dirs(root, &parent, &mut sync)?;
    let meta = Meta {
        mode: 0o644,
        owner: None,
        mtime: None,
    };
    let written = write_file(source, &dest, &rel, meta, want, size, cancel)?;
    sync.enter(root, &parent)?;
    sync.finish()?;
    Ok(written)
}

/// The parts of a member name: refused when absolute or when a part is `..`; `.` and empty
/// parts are dropped.
pub(crate) fn components(name: &str) -> Result<Vec<String>, Refused> {
    let mut out = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Refused::Hostile(format!(
                    "the member {name:?} climbs out with `..`: refused"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refused::Hostile(format!(
                    "the member {name:?} has an absolute name: refused"
                )));
            }
        }
    }
    Ok(out)
}

/// Finishes each folder once the archive has moved past it: fsynced, and (for the folders
/// this extraction created) given its mode and owner. Only the folders between the root and
/// the current one are held: a bounded stack, however many folders the archive has.
#[derive(Default)]
struct DirSync {
    open: Vec<(PathBuf, Option<Finish>)>,
}

/// What a folder gets once finished: its mode and owner (uid, gid).
type Finish = (u32, Option<(u64, u64)>);

impl DirSync {
    /// The archive is now at `dir` (under `root`).
    fn enter(&mut self, root: &Path, dir: &Path) -> io::Result<()> {
        while let Some((top, _)) = self.open.last() {
            if dir.starts_with(top) {
                break;
            }
            self.close()?;
        }
        let mut chain = Vec::new();
        let mut at = dir;
        loop {
            if self.open.last().is_some_and(|(top, _)| top == at) {
                break;
            }
            chain.push((at.to_path_buf(), None));
            if at == root {
                break;
            }
            match at.parent() {
                Some(p) if p.starts_with(root) => at = p,
                _ => break,
            }
        }
        self.open.extend(chain.into_iter().rev());
        Ok(())
    }

    /// The mode and owner `dir` (entered last) gets when it is finished.
    fn set(&mut self, dir: &Path, mode: u32, owner: Option<(u64, u64)>) {
        if let Some((top, m)) = self.open.last_mut()
            && top == dir
        {
            *m = Some((mode & 0o755, owner));
        }
    }

    fn close(&mut self) -> io::Result<()> {
        if let Some((dir, mode)) = self.open.pop() {
            File::open(&dir)?.sync_all()?;
            if let Some((mode, owner)) = mode {
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&dir, Some(uid as u32), Some(gid as u32))?;
                }
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        while !self.open.is_empty() {
            self.close()?;
        }
        Ok(())
    }
}

/// Creates the folders from `root` down to `dir` (private until they are finished), refusing
/// to pass through anything that is not a folder.
fn make_dirs(root: &Path, dir: &Path, sync: &mut DirSync) -> Result<(), Refused> {
    let rel = dir.strip_prefix(root).map_err(|_| {
        Refused::Hostile(format!("{} is outside {}", dir.display(), root.display()))
    })?;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        let parent = at.clone();
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Refused::Hostile(format!(
                    "{} is not a folder (a file written by the archive): refused to write through it",
                    at.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                sync.enter(root, &parent)?;
                fs::DirBuilder::new().mode(0o700).create(&at)?;
                sync.enter(root, &at)?;
                sync.set(&at, 0o755, None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Creates something under a temporary name with `make`, then renames it to `dest`.
fn replace_with(dest: &Path, make: impl FnOnce(&Path) -> io::Result<()>) -> Result<(), Refused> {
    let tmp = temp_name(dest);
    let _ = fs::remove_file(&tmp);
    make(&tmp)?;
    let renamed = refuse_folder(dest).and_then(|()| Ok(fs::rename(&tmp, dest)?));
    // Renaming a name onto another name of the same file does nothing: the temporary stays.
    let _ = fs::remove_file(&tmp);
    renamed
}

/// A file never replaces a folder (that would drop what the folder holds).
fn refuse_folder(dest: &Path) -> Result<(), Refused> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(Refused::Hostile(format!(
            "{} is a folder; the archive would put a file there",
            dest.display()
        ))),
        _ => Ok(()),
    }
}

/// What a file is given besides its content.
struct Meta {
    mode: u32,
    owner: Option<(u64, u64)>,
    mtime: Option<u64>,
}

fn write_file(
    source: &mut dyn Read,
    dest: &Path,
    rel: &str,
    meta: Meta,
    want: Option<&str>,
    want_size: Option<u64>,
    cancel: &Cancel,
) -> Result<u64, Refused> {
    let tmp = temp_name(dest);
    let _ = fs::remove_file(&tmp);
    let result = (|| -> Result<u64, Refused> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut hasher = want.map(|_| Sha256::new());
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            cancel.check().map_err(read)?;
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read(e)),
            };
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            file.write_all(&buf[..n])?;
            size += n as u64;
        }
        if let (Some(h), Some(want)) = (hasher, want) {
            let got = crate::hex::encode(&h.finalize());
            if got != want {
                return Err(Refused::Digest {
                    path: rel.to_owned(),
                    want: format!("sha256:{want}"),
                    got: format!("sha256:{got}"),
                });
            }
        }
        if let Some(n) = want_size.filter(|n| *n != size) {
            return Err(Refused::Digest {
                path: rel.to_owned(),
                want: format!("{n} bytes"),
                got: format!("{size} bytes"),
            });
        }
        file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))?;
        }
        if let Some(t) = meta.mtime {
            file.set_modified(UNIX_EPOCH + Duration::from_secs(t))?;
        }
        file.sync_all()?;
        refuse_folder(dest)?;
        fs::rename(&tmp, dest)?;
        crate::failpoint::hit("restore.file");
        Ok(size)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    crate::archive::HashReader::new(File::open(path)?).finish()
}

/// Whether this process runs as root (its `/proc/self` belongs to its effective user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub(crate) fn kind_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "member of an unsupported kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("dtr-backup-extract-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("target")).unwrap();
        d
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }

    /// An archive with members written by hand (names are set raw, as a hostile writer would).
    fn archive(members: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let block = |out: &mut Vec<u8>, h: &tar::Header, data: &[u8]| {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        };
        for (name, kind, data, link) in members {
            if name.len() > 99 {
                // A GNU long name first, as tar writers do for long paths.
                let mut long = header(tar::EntryType::GNULongName, name.len() as u64 + 1);
                long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
                long.set_cksum();
                block(&mut out, &long, &[name.as_bytes(), b"\0"].concat());
            }
            let mut h = header(*kind, data.len() as u64);
            let raw = h.as_old_mut();
            raw.name = [0; 100];
            let short = &name.as_bytes()[..name.len().min(99)];
            raw.name[..short.len()].copy_from_slice(short);
            if let Some(l) = link {
                raw.linkname = [0; 100];
                raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            block(&mut out, &h, data);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    const DATA: &[u8] = b"layer bytes";

    fn blob_rel(data: &[u8]) -> (String, String) {
        let d = crate::archive::sha256_hex(data);
        (
            format!("docker/registry/v2/blobs/sha256/{}/{d}/data", &d[..2]),
            d,
        )
    }

    fn run(dir: &Path, bytes: &[u8]) -> Result<Extracted, Refused> {
        let digest_of = |rel: &str| {
            rel.strip_suffix("/data")
                .and_then(|r| r.rsplit('/').next())
                .filter(|d| d.len() == 64)
                .map(str::to_owned)
        };
        extract(
            bytes,
            &Target {
                root: &dir.join("target"),
                strip: "vol/_data",
                digest_of: &digest_of,
                cancel: &Cancel::new(),
            },
        )
    }

    /// Every file under `dir`, relative, sorted: what a refused archive may have left.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_registry_tree_lands_under_the_target_checked() {
        let dir = scratch("ok");
        let (blob, _) = blob_rel(DATA);
        let file = format!("vol/_data/{blob}");
        let link = "vol/_data/docker/registry/v2/repositories/r/_layers/sha256/x/link";
        let bytes = archive(&[
            ("vol/", tar::EntryType::Directory, b"", None),
            ("vol/_data/", tar::EntryType::Directory, b"", None),
            (&file, tar::EntryType::Regular, DATA, None),
            (link, tar::EntryType::Regular, b"sha256:x", None),
        ]);
        let got = run(&dir, &bytes).unwrap();
        assert_eq!((got.files, got.checked, got.links), (2, 1, 0));
        let target = dir.join("target");
        assert_eq!(fs::read(target.join(&blob)).unwrap(), DATA);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&target.join(&blob)), 0o644);
        // Folders are private while extracting, then get their modes.
        assert_eq!(mode(&target.join("docker/registry/v2/blobs")), 0o755);
        assert!(!files(&target).iter().any(|f| f.contains(".partial-")));
    }

    #[test]
    fn a_blob_with_the_wrong_content_gets_no_name() {
        let dir = scratch("digest");
        let (blob, digest) = blob_rel(DATA);
        let file = format!("vol/_data/{blob}");
        let bytes = archive(&[(&file, tar::EntryType::Regular, b"damaged bytes", None)]);
        match run(&dir, &bytes) {
            Err(Refused::Digest { want, .. }) => assert_eq!(want, format!("sha256:{digest}")),
            other => panic!("{other:?}"),
        }
        let left = files(&dir.join("target"));
        assert!(
            !left
                .iter()
                .any(|f| f.ends_with("/data") || f.contains(".partial-")),
            "{left:?}"
        );
    }

    #[test]
    fn hostile_members_are_refused_and_nothing_lands_outside() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                archive(&[(
                    "vol/_data/../../escaped",
                    tar::EntryType::Regular,
                    b"x",
                    None,
                )]),
                "`..`",
            ),
            (
                "absolute",
                archive(&[("/dtr-backup-escaped", tar::EntryType::Regular, b"x", None)]),
                "absolute",
            ),
            (
                "outside",
                archive(&[("other/escaped", tar::EntryType::Regular, b"x", None)]),
                "outside vol/_data/",
            ),
            (
                "symlink",
                archive(&[(
                    "vol/_data/docker",
                    tar::EntryType::Symlink,
                    b"",
                    Some("../../.."),
                )]),
                "symbolic link",
            ),
            (
                "absolute-symlink",
                archive(&[(
                    "vol/_data/docker",
                    tar::EntryType::Symlink,
                    b"",
                    Some("/etc"),
                )]),
                "symbolic link",
            ),
            (
                "through-symlink",
                archive(&[
                    ("vol/_data/docker", tar::EntryType::Symlink, b"", Some(".")),
                    ("vol/_data/docker/x", tar::EntryType::Regular, b"x", None),
                ]),
                "symbolic link",
            ),
            (
                "through-file",
                archive(&[
                    ("vol/_data/docker", tar::EntryType::Regular, b"x", None),
                    ("vol/_data/docker/x", tar::EntryType::Regular, b"x", None),
                ]),
                "not a folder",
            ),
            (
                "hardlink",
                archive(&[(
                    "vol/_data/passwd",
                    tar::EntryType::Link,
                    b"",
                    Some("/etc/passwd"),
                )]),
                "absolute",
            ),
            (
                "device",
                archive(&[("vol/_data/sda", tar::EntryType::Block, b"", None)]),
                "block device",
            ),
            (
                "fifo",
                archive(&[("vol/_data/pipe", tar::EntryType::Fifo, b"", None)]),
                "FIFO",
            ),
        ];
        assert!(!Path::new("/dtr-backup-escaped").exists());
        for (name, bytes, why) in cases {
            let dir = scratch(name);
            match run(&dir, &bytes) {
                Err(Refused::Hostile(m)) => assert!(m.contains(why), "{name}: {m}"),
                other => panic!("{name}: {other:?}"),
            }
            // Nothing outside the target; nothing but what the archive legitimately had.
            let left = files(&dir);
            let allowed = if name == "through-file" {
                &["target", "target/docker"][..]
            } else {
                &["target"][..]
            };
            assert_eq!(left, allowed, "{name}");
            let _ = fs::remove_dir_all(&dir);
        }
        assert!(!Path::new("/dtr-backup-escaped").exists());
    }

    #[test]
    fn a_blob_name_reached_by_a_hard_link_is_checked_too() {
        let dir = scratch("hardlink-digest");
        let (blob, _) = blob_rel(DATA);
        let file = format!("vol/_data/{blob}");
        let bytes = archive(&[
            (
                "vol/_data/other",
                tar::EntryType::Regular,
                b"not the layer",
                None,
            ),
            (&file, tar::EntryType::Link, b"", Some("vol/_data/other")),
        ]);
        assert!(matches!(run(&dir, &bytes), Err(Refused::Digest { .. })));
        assert!(!dir.join("target").join(&blob).exists());
    }

    #[test]
    fn a_hard_link_inside_shares_a_written_file() {
        let dir = scratch("hardlink-ok");
        let bytes = archive(&[
            ("vol/_data/a", tar::EntryType::Regular, b"content", None),
            (
                "vol/_data/b",
                tar::EntryType::Link,
                b"",
                Some("vol/_data/a"),
            ),
        ]);
        let got = run(&dir, &bytes).unwrap();
        assert_eq!((got.files, got.links), (1, 1));
        assert_eq!(fs::read(dir.join("target/b")).unwrap(), b"content");
    }
}
