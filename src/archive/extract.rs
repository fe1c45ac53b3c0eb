//! Extracting a tar stream into a folder, safe against a hostile archive, and writing files
//! that a registry will serve only once their content matches its digest.
//!
//! Every member lands under the target or is refused: no absolute name, no `..`, nothing
//! through a symbolic link, no symbolic or hard link that points outside, no device, FIFO or
//! sparse member. Files are written under a temporary name in their folder, hashed on the way
//! when a digest is expected, made durable (fsync) and only then renamed to their final
//! name; the folders written into are fsynced at the end. Permission bits are kept (setuid,
//! setgid and sticky bits are not), ownership too when running as root, and modification
//! times.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::cancel::Cancel;

/// Why extraction stopped.
#[derive(Debug)]
pub enum Refused {
    /// A member that would land outside the target, or of a kind never restored.
    Hostile(String),
    /// A file whose content does not hash to the digest it must have. Nothing was left
    /// under its name.
    Digest {
        path: String,
        want: String,
        got: String,
    },
    /// Reading the archive or writing the target failed (a cancellation included).
    Io(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Hostile(why) => write!(f, "{why}"),
            Refused::Digest { path, want, got } => {
                write!(f, "{path} hashes to sha256:{got}, not to sha256:{want}")
            }
            Refused::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Refused {
        Refused::Io(e)
    }
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
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    let root_as_root = running_as_root();
    let strip: Vec<&str> = target.strip.split('/').filter(|p| !p.is_empty()).collect();
    for entry in archive.entries()? {
        let mut entry = entry?;
        target.cancel.check()?;
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
        make_dirs(target.root, &parent, &mut touched)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o777;
        let owner = if root_as_root {
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
                        fs::create_dir(&dest)?;
                        out.dirs += 1;
                    }
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&dest, Some(uid as u32), Some(gid as u32))?;
                }
                touched.insert(parent);
                touched.insert(dest);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let want = (target.digest_of)(&rel);
                let size = write_file(
                    &mut entry,
                    &dest,
                    &rel,
                    mode,
                    owner,
                    mtime,
                    want.as_deref(),
                    target.cancel,
                )?;
                out.files += 1;
                out.bytes += size;
                out.checked += u64::from(want.is_some());
                touched.insert(parent);
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| Refused::Hostile(format!("the link {raw:?} has no target")))?;
                let link = link.to_string_lossy().into_owned();
                if link.starts_with('/') || !stays_inside(&rel, &link) {
                    return Err(Refused::Hostile(format!(
                        "the symbolic link {raw:?} points to {link:?}, outside the target: refused"
                    )));
                }
                replace_with(&dest, |tmp| std::os::unix::fs::symlink(&link, tmp))?;
                out.links += 1;
                touched.insert(parent);
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| Refused::Hostile(format!("the link {raw:?} has no target")))?;
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
                // A link shares the content checked when its source was written; a link
                // where a digest is expected must be checked like a file.
                if let Some(want) = (target.digest_of)(&rel) {
                    let (got, _) = hash_file(&source)?;
                    if got != want {
                        return Err(Refused::Digest {
                            path: rel,
                            want,
                            got,
                        });
                    }
                    out.checked += 1;
                }
                replace_with(&dest, |tmp| fs::hard_link(&source, tmp))?;
                out.links += 1;
                touched.insert(parent);
            }
            other => {
                return Err(Refused::Hostile(format!(
                    "the member {raw:?} is a {}: refused (a registry holds files, folders and links only)",
                    kind_name(other)
                )));
            }
        }
    }
    for dir in touched {
        File::open(&dir)?.sync_all()?;
    }
    Ok(out)
}

/// Writes `source` as the file `rel` under `root` (its folders created), checked against
/// `want` when given, made durable and named only then. Returns its size.
pub fn write_checked(
    root: &Path,
    rel: &str,
    source: &mut dyn Read,
    want: Option<&str>,
    cancel: &Cancel,
) -> Result<u64, Refused> {
    let parts = components(rel)?;
    if parts.is_empty() {
        return Err(Refused::Hostile(format!("{rel:?} names no file")));
    }
    let rel = parts.join("/");
    let dest = root.join(&rel);
    let parent = dest.parent().unwrap_or(root).to_path_buf();
    let mut touched = BTreeSet::new();
    make_dirs(root, &parent, &mut touched)?;
    let size = write_file(source, &dest, &rel, 0o644, None, None, want, cancel)?;
    touched.insert(parent);
    for dir in touched {
        File::open(&dir)?.sync_all()?;
    }
    Ok(size)
}

/// The parts of a member name: refused when absolute or when a part is `..`; `.` and empty
/// parts are dropped.
fn components(name: &str) -> Result<Vec<String>, Refused> {
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

/// Whether the relative link `link`, placed at `rel`, resolves inside the target (lexically:
/// symbolic links are never followed while extracting).
fn stays_inside(rel: &str, link: &str) -> bool {
    let mut depth: Vec<&str> = rel.split('/').collect();
    depth.pop();
    for part in link.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            p => depth.push(p),
        }
    }
    true
}

/// Creates the folders from `root` down to `dir`, refusing to pass through anything that is
/// not a real folder (a symbolic link written earlier, say).
fn make_dirs(root: &Path, dir: &Path, touched: &mut BTreeSet<PathBuf>) -> Result<(), Refused> {
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
                    "{} is not a folder (a link or a file written by the archive): refused to write through it",
                    at.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at)?;
                touched.insert(parent);
                touched.insert(at.clone());
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
    if let Err(e) = refuse_folder(dest).and_then(|()| Ok(fs::rename(&tmp, dest)?)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// A file or link never replaces a folder (that would drop what the folder holds).
fn refuse_folder(dest: &Path) -> Result<(), Refused> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(Refused::Hostile(format!(
            "{} is a folder; the archive would put a file there",
            dest.display()
        ))),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_file(
    source: &mut dyn Read,
    dest: &Path,
    rel: &str,
    mode: u32,
    owner: Option<(u64, u64)>,
    mtime: Option<u64>,
    want: Option<&str>,
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
            cancel.check()?;
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
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
                    want: want.to_owned(),
                    got,
                });
            }
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))?;
        }
        if let Some(t) = mtime {
            file.set_modified(UNIX_EPOCH + Duration::from_secs(t))?;
        }
        file.sync_all()?;
        refuse_folder(dest)?;
        fs::rename(&tmp, dest)?;
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

fn kind_name(t: tar::EntryType) -> &'static str {
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
            (
                "vol/_data/docker/alias",
                tar::EntryType::Symlink,
                b"",
                Some("registry/v2"),
            ),
        ]);
        let got = run(&dir, &bytes).unwrap();
        assert_eq!((got.files, got.checked, got.links), (2, 1, 1));
        let target = dir.join("target");
        assert_eq!(fs::read(target.join(&blob)).unwrap(), DATA);
        assert_eq!(
            fs::read_link(target.join("docker/alias")).unwrap(),
            Path::new("registry/v2")
        );
        let mode = fs::metadata(target.join(&blob))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(!files(&target).iter().any(|f| f.contains(".partial-")));
    }

    #[test]
    fn a_blob_with_the_wrong_content_gets_no_name() {
        let dir = scratch("digest");
        let (blob, digest) = blob_rel(DATA);
        let file = format!("vol/_data/{blob}");
        let bytes = archive(&[(&file, tar::EntryType::Regular, b"damaged bytes", None)]);
        match run(&dir, &bytes) {
            Err(Refused::Digest { want, .. }) => assert_eq!(want, digest),
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
                "outside the target",
            ),
            (
                "absolute-symlink",
                archive(&[(
                    "vol/_data/docker",
                    tar::EntryType::Symlink,
                    b"",
                    Some("/etc"),
                )]),
                "outside the target",
            ),
            (
                "through-symlink",
                archive(&[
                    ("vol/_data/docker", tar::EntryType::Symlink, b"", Some(".")),
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
            // Nothing outside the target; no file written (a harmless link inside may be).
            let left = files(&dir);
            assert!(
                left.iter().all(|f| f == "target" || f == "target/docker"),
                "{name}: {left:?}"
            );
            let _ = fs::remove_dir_all(&dir);
        }
        assert!(!Path::new("/dtr-backup-escaped").exists());
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
