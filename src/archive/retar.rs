//! Re-emitting a stored tar stream as a new tar stream under another root, with the same
//! refusals as extraction (`extract.rs`): for targets that take a tar archive and extract it
//! themselves (Docker's archive upload into a volume). Every member is checked before it is
//! passed on; every file whose digest is known is hashed on the way and the stream stops with
//! [`Refused::Digest`] at the end of the first that does not match, so the receiving side
//! gets a truncated archive and fails; what it extracted lies under `prefix`, a staging
//! folder that nothing serves.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::extract::{Extracted, Refused, components, kind_name};
use crate::cancel::Cancel;

/// Where checked members go: a tar stream ([`Emitter`]), objects in a bucket.
pub trait Members {
    /// A folder (`rel` without a trailing `/`).
    fn dir(&mut self, rel: &str, header: &tar::Header) -> Result<(), Refused>;
    /// A file of `size` bytes read from `data`: passed on with [`copy_checked`], and made
    /// visible under its name only once it matched `want`. Returns its sha256.
    fn file(
        &mut self,
        rel: &str,
        header: &tar::Header,
        size: u64,
        data: &mut dyn Read,
        want: Option<&str>,
    ) -> Result<String, Refused>;
    /// A hard link `rel` to the file `to`, already passed on and checked.
    fn link(&mut self, rel: &str, to: &str) -> Result<(), Refused>;
    /// Whether the file `rel` of `size` bytes is already there and need not be read at all
    /// (a blob that a resumed restore wrote before it was interrupted).
    fn kept(&self, _rel: &str, _size: u64) -> bool {
        false
    }
}

/// Copies `size` bytes of `data` to `out`, hashing them; refuses content that does not hash
/// to `want` or is short. Returns the sha256.
pub fn copy_checked(
    data: &mut dyn Read,
    size: u64,
    out: &mut dyn Write,
    rel: &str,
    want: Option<&str>,
) -> Result<String, Refused> {
    let mut hasher = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let got = match data.read(&mut buf[..n]) {
            Ok(0) => {
                return Err(Refused::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{rel} ends {left} bytes early"),
                )));
            }
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Refused::Read(e)),
        };
        hasher.update(&buf[..got]);
        out.write_all(&buf[..got]).map_err(Refused::Write)?;
        left -= got as u64;
    }
    let got = crate::hex::encode(&hasher.finalize());
    matches(rel, want, &got)?;
    Ok(got)
}

/// Refuses the member `rel` whose sha256 `got` is not the `want`ed one.
fn matches(rel: &str, want: Option<&str>, got: &str) -> Result<(), Refused> {
    match want {
        Some(want) if got != want => Err(Refused::Digest {
            path: rel.to_owned(),
            want: format!("sha256:{want}"),
            got: format!("sha256:{got}"),
        }),
        _ => Ok(()),
    }
}

/// How stored members are read.
pub struct Retar<'a> {
    /// The leading folder of every stored member (`<volume>/_data`), removed, as in
    /// `extract::Target::strip`.
    pub strip: &'a str,
    /// The sha256 a file must have, by its path under the root (`None`: any content).
    pub digest_of: &'a dyn Fn(&str) -> Option<String>,
    pub cancel: &'a Cancel,
}

/// What has been passed on so far, for the checks that span members: no writing through a
/// file, no folder where a file was, hard links only to files already passed on.
#[derive(Default)]
pub struct Seen {
    /// Files passed on, with their sha256.
    files: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
    pub out: Extracted,
}

impl Seen {
    /// Refuses `rel` when one of its folders was passed on as a file (writing through it).
    fn through_file(&self, rel: &str) -> Result<(), Refused> {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let parent = &rel[..at + i];
            if self.files.contains_key(parent) {
                return Err(Refused::Hostile(format!(
                    "the member {rel:?} is written through the file {parent:?}: refused"
                )));
            }
            at += i + 1;
        }
        Ok(())
    }

    /// Whether the file `rel` was passed on.
    pub fn holds(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }

    /// The files passed on (or kept), by path.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Records the file `rel`, with its sha256, as there without passing it on.
    pub fn kept(&mut self, rel: &str, sha256: &str, size: u64) {
        self.out.files += 1;
        self.out.bytes += size;
        self.files.insert(rel.to_owned(), sha256.to_owned());
    }

    /// Passes the folder `rel` on once.
    pub fn dir(
        &mut self,
        to: &mut dyn Members,
        rel: &str,
        header: &tar::Header,
    ) -> Result<(), Refused> {
        self.through_file(rel)?;
        if self.files.contains_key(rel) {
            return Err(Refused::Hostile(format!(
                "the member {rel:?} is a folder where the archive put something else"
            )));
        }
        if !self.dirs.insert(rel.to_owned()) {
            return Ok(());
        }
        to.dir(rel, header)?;
        self.out.dirs += 1;
        Ok(())
    }

    /// Passes the file `rel` on, its folders first when `parents` (objects of a blob
    /// store come without their folders).
    #[allow(clippy::too_many_arguments)]
    pub fn file(
        &mut self,
        to: &mut dyn Members,
        rel: &str,
        header: &tar::Header,
        size: u64,
        data: &mut dyn Read,
        want: Option<&str>,
        parents: bool,
    ) -> Result<(), Refused> {
        self.through_file(rel)?;
        if self.dirs.contains(rel) {
            return Err(Refused::Hostile(format!(
                "the member {rel:?} is a file where the archive put a folder"
            )));
        }
        if parents {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_mtime(header.mtime().unwrap_or(0));
            let mut at = 0;
            while let Some(i) = rel[at..].find('/') {
                self.dir(to, &rel[..at + i], &h)?;
                at += i + 1;
            }
        }
        let sha = to.file(rel, header, size, data, want)?;
        self.out.files += 1;
        self.out.bytes += size;
        self.out.checked += u64::from(want.is_some());
        self.files.insert(rel.to_owned(), sha);
        crate::failpoint::hit("restore.file");
        Ok(())
    }

    fn link(
        &mut self,
        to: &mut dyn Members,
        rel: &str,
        target: &str,
        want: Option<&str>,
    ) -> Result<(), Refused> {
        self.through_file(rel)?;
        let Some(sha) = self.files.get(target).cloned() else {
            return Err(Refused::Hostile(format!(
                "the hard link {rel:?} points to {target:?}, which the archive has not written"
            )));
        };
        matches(rel, want, &sha)?;
        to.link(rel, target)?;
        self.out.links += 1;
        self.out.checked += u64::from(want.is_some());
        self.files.insert(rel.to_owned(), sha);
        Ok(())
    }
}

/// A tar stream being written, every member under a prefix (a staging folder).
pub struct Emitter<W: Write> {
    builder: tar::Builder<W>,
    prefix: String,
}

impl<W: Write> Emitter<W> {
    /// Starts the stream with the prefix folder, private.
    pub fn new(out: W, prefix: &str) -> io::Result<Emitter<W>> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        h.set_mtime(0);
        builder.append_data(&mut h, format!("{prefix}/"), io::empty())?;
        Ok(Emitter {
            builder,
            prefix: prefix.to_owned(),
        })
    }

    /// Ends the archive (its two zero blocks) and returns the writer.
    pub fn finish(self) -> Result<W, Refused> {
        self.builder.into_inner().map_err(Refused::Write)
    }
}

/// Copies into a tar entry whose header already gave the size: hashes what it reads, and
/// fails a member that ends before `left` bytes were read (the tar writer would pass the
/// short member on, and every member after it would be read out of place).
struct Checked<'a, R> {
    data: R,
    left: u64,
    rel: &'a str,
    hasher: Sha256,
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends {} bytes early", self.rel, self.left),
            ));
        }
        self.left -= n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Members for Emitter<W> {
    fn dir(&mut self, rel: &str, header: &tar::Header) -> Result<(), Refused> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode((header.mode().unwrap_or(0o755) & 0o755) | 0o700);
        h.set_uid(header.uid().unwrap_or(0));
        h.set_gid(header.gid().unwrap_or(0));
        h.set_mtime(header.mtime().unwrap_or(0));
        h.set_size(0);
        self.builder
            .append_data(&mut h, format!("{}/{rel}/", self.prefix), io::empty())
            .map_err(Refused::Write)
    }

    fn file(
        &mut self,
        rel: &str,
        header: &tar::Header,
        size: u64,
        data: &mut dyn Read,
        want: Option<&str>,
    ) -> Result<String, Refused> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(header.mode().unwrap_or(0o644) & 0o755);
        h.set_uid(header.uid().unwrap_or(0));
        h.set_gid(header.gid().unwrap_or(0));
        h.set_mtime(header.mtime().unwrap_or(0));
        h.set_size(size);
        let mut checked = Checked {
            data: data.take(size),
            left: size,
            rel,
            hasher: Sha256::new(),
        };
        self.builder
            .append_data(&mut h, format!("{}/{rel}", self.prefix), &mut checked)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Refused::Read(e),
                _ => Refused::Write(e),
            })?;
        let got = crate::hex::encode(&checked.hasher.finalize());
        matches(rel, want, &got)?;
        Ok(got)
    }

    fn link(&mut self, rel: &str, to: &str) -> Result<(), Refused> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o644);
        h.set_size(0);
        self.builder
            .append_link(
                &mut h,
                format!("{}/{rel}", self.prefix),
                format!("{}/{to}", self.prefix),
            )
            .map_err(Refused::Write)
    }
}

/// Passes the stored tar stream `reader` on to `to`, member by member, refusing what
/// extraction refuses.
pub fn retar(
    reader: impl Read,
    seen: &mut Seen,
    to: &mut dyn Members,
    how: &Retar,
) -> Result<(), Refused> {
    let mut archive = tar::Archive::new(reader);
    let strip: Vec<&str> = how.strip.split('/').filter(|p| !p.is_empty()).collect();
    let under = |raw: &str, parts: &[String]| -> Result<Option<String>, Refused> {
        if parts.len() <= strip.len() && parts.iter().zip(&strip).all(|(a, b)| a == b) {
            return Ok(None);
        }
        if !parts.iter().zip(&strip).all(|(a, b)| a == b) || parts.len() <= strip.len() {
            return Err(Refused::Hostile(format!(
                "the member {raw:?} is outside {}/: refused, nothing written outside the target",
                how.strip
            )));
        }
        Ok(Some(parts[strip.len()..].join("/")))
    };
    for entry in archive.entries().map_err(Refused::Read)? {
        let mut entry = entry.map_err(Refused::Read)?;
        how.cancel.check().map_err(Refused::Read)?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = under(&raw, &components(&raw)?)? else {
            continue;
        };
        let header = entry.header().clone();
        match kind {
            tar::EntryType::Directory => seen.dir(to, &rel, &header)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let want = (how.digest_of)(&rel);
                let size = entry.size();
                seen.file(to, &rel, &header, size, &mut entry, want.as_deref(), false)?;
            }
            tar::EntryType::Symlink => {
                return Err(Refused::Hostile(format!(
                    "the member {raw:?} is a symbolic link: a registry's storage holds none, and restore creates none (a link could reach outside the folder or stand in for a blob)"
                )));
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(Refused::Read)?.ok_or_else(|| {
                    Refused::Hostile(format!("the hard link {raw:?} has no target"))
                })?;
                let link_raw = link.to_string_lossy().into_owned();
                let Some(target) = under(&link_raw, &components(&link_raw)?)? else {
                    return Err(Refused::Hostile(format!(
                        "the hard link {raw:?} points to {link_raw:?}, outside {}/: refused",
                        how.strip
                    )));
                };
                let want = (how.digest_of)(&rel);
                seen.link(to, &rel, &target, want.as_deref())?;
            }
            other => {
                return Err(Refused::Hostile(format!(
                    "the member {raw:?} is a {}: refused (a registry holds files and folders only)",
                    kind_name(other)
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            } else {
                h.set_size(data.len() as u64);
            }
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn run(
        input: &[u8],
        digest_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, Vec<u8>)>, Refused> {
        let cancel = Cancel::new();
        let mut emit = Emitter::new(Vec::new(), ".stage").map_err(Refused::Write)?;
        retar(
            input,
            &mut Seen::default(),
            &mut emit,
            &Retar {
                strip: "v/_data",
                digest_of,
                cancel: &cancel,
            },
        )?;
        let bytes = emit.finish()?;
        let mut out = Vec::new();
        let mut a = tar::Archive::new(&bytes[..]);
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            out.push((name, data));
        }
        Ok(out)
    }

    #[test]
    fn members_move_under_the_prefix_and_blobs_are_checked() {
        let good = b"layer";
        let sha = crate::archive::sha256_hex(good);
        let blob = format!(
            "v/_data/docker/registry/v2/blobs/sha256/{}/{sha}/data",
            &sha[..2]
        );
        let input = stored(&[
            ("v/", b""),
            ("v/_data/", b""),
            ("v/_data/docker/", b""),
            (&blob, good),
        ]);
        let digest = |rel: &str| rel.ends_with("/data").then(|| sha.clone());
        let out = run(&input, &digest).expect("retar");
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], ".stage/");
        assert_eq!(names[1], ".stage/docker/");
        assert_eq!(out[2].1, good);
        assert!(names[2].starts_with(".stage/docker/registry/v2/blobs/sha256/"));

        let bad = stored(&[(&blob, b"other")]);
        match run(&bad, &digest) {
            Err(Refused::Digest { path, .. }) => assert!(path.ends_with("/data")),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn hostile_members_are_refused() {
        let none = |_: &str| None;
        for name in ["v/_data/../../etc/passwd", "/etc/passwd", "elsewhere/file"] {
            // The tar crate refuses to write some of these names: build the header by hand.
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            let mut input = h.as_bytes().to_vec();
            input.extend_from_slice(&[b'x'; 512]);
            input.extend_from_slice(&[0; 1024]);
            assert!(
                matches!(run(&input, &none), Err(Refused::Hostile(_))),
                "{name}"
            );
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "v/_data/docker", "/etc")
            .expect("link");
        let input = b.into_inner().expect("tar");
        assert!(matches!(run(&input, &none), Err(Refused::Hostile(_))));
        // Through a file, and a hard link to something never written.
        let input = stored(&[("v/_data/a", b"x"), ("v/_data/a/b", b"y")]);
        assert!(matches!(run(&input, &none), Err(Refused::Hostile(_))));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "v/_data/b", "v/_data/missing")
            .expect("link");
        let input = b.into_inner().expect("tar");
        assert!(matches!(run(&input, &none), Err(Refused::Hostile(_))));
    }

    #[test]
    fn a_member_shorter_than_its_size_is_refused() {
        // Objects of a blob store come with the size their listing gave; content that ends
        // early must not pass as a member the tar writer leaves short.
        let mut emit = Emitter::new(Vec::new(), ".stage").expect("emitter");
        let header = tar::Header::new_gnu();
        let mut data: &[u8] = b"abc";
        match emit.file("docker/tag", &header, 10, &mut data, None) {
            Err(Refused::Read(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                assert!(e.to_string().contains("7 bytes early"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
