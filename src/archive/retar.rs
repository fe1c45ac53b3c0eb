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

/// Reads like its inner reader and hashes what passes.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Where the members go and what their content must be.
pub struct Retar<'a> {
    /// The leading folder of every stored member (`<volume>/_data`), removed, as in
    /// `extract::Target::strip`.
    pub strip: &'a str,
    /// The sha256 a file must have, by its path under the root (`None`: any content).
    pub digest_of: &'a dyn Fn(&str) -> Option<String>,
    pub cancel: &'a Cancel,
}

/// A tar stream being written under a prefix; files seen so far, for the checks.
pub struct Emitter<W: Write> {
    builder: tar::Builder<W>,
    prefix: String,
    /// Files emitted: their sha256 (for hard links to them).
    files: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
    pub out: Extracted,
}

impl<W: Write> Emitter<W> {
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
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            out: Extracted::default(),
        })
    }

    /// Refuses `rel` when one of its folders was emitted as a file (writing through it).
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

    /// Emits the file `rel` with `size` bytes from `data`, checked against `want`.
    pub fn file(
        &mut self,
        rel: &str,
        header: &tar::Header,
        size: u64,
        data: impl Read,
        want: Option<&str>,
    ) -> Result<(), Refused> {
        self.through_file(rel)?;
        if self.dirs.contains(rel) {
            return Err(Refused::Hostile(format!(
                "the member {rel:?} is a file where the archive put a folder"
            )));
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(header.mode().unwrap_or(0o644) & 0o755);
        h.set_uid(header.uid().unwrap_or(0));
        h.set_gid(header.gid().unwrap_or(0));
        h.set_mtime(header.mtime().unwrap_or(0));
        h.set_size(size);
        let mut hashing = Hashing {
            inner: data.take(size),
            hasher: Sha256::new(),
        };
        self.builder
            .append_data(&mut h, format!("{}/{rel}", self.prefix), &mut hashing)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Refused::Read(e),
                _ => Refused::Write(e),
            })?;
        let got = crate::hex::encode(&hashing.hasher.finalize());
        if let Some(want) = want
            && got != want
        {
            return Err(Refused::Digest {
                path: rel.to_owned(),
                want: format!("sha256:{want}"),
                got: format!("sha256:{got}"),
            });
        }
        self.out.files += 1;
        self.out.bytes += size;
        self.out.checked += u64::from(want.is_some());
        self.files.insert(rel.to_owned(), got);
        crate::failpoint::hit("restore.file");
        Ok(())
    }

    fn dir(&mut self, rel: &str, header: &tar::Header) -> Result<(), Refused> {
        self.through_file(rel)?;
        if self.files.contains_key(rel) {
            return Err(Refused::Hostile(format!(
                "the member {rel:?} is a folder where the archive put something else"
            )));
        }
        if !self.dirs.insert(rel.to_owned()) {
            return Ok(());
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode((header.mode().unwrap_or(0o755) & 0o755) | 0o700);
        h.set_uid(header.uid().unwrap_or(0));
        h.set_gid(header.gid().unwrap_or(0));
        h.set_mtime(header.mtime().unwrap_or(0));
        h.set_size(0);
        self.builder
            .append_data(&mut h, format!("{}/{rel}/", self.prefix), io::empty())
            .map_err(Refused::Write)?;
        self.out.dirs += 1;
        Ok(())
    }

    fn link(&mut self, rel: &str, to: &str, want: Option<&str>) -> Result<(), Refused> {
        self.through_file(rel)?;
        let Some(sha) = self.files.get(to).cloned() else {
            return Err(Refused::Hostile(format!(
                "the hard link {rel:?} points to {to:?}, which the archive has not written"
            )));
        };
        if let Some(want) = want
            && sha != want
        {
            return Err(Refused::Digest {
                path: rel.to_owned(),
                want: format!("sha256:{want}"),
                got: format!("sha256:{sha}"),
            });
        }
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
            .map_err(Refused::Write)?;
        self.out.links += 1;
        self.out.checked += u64::from(want.is_some());
        self.files.insert(rel.to_owned(), sha);
        Ok(())
    }

    /// Emits an object of the blob store as the file `rel` (its folders first), checked
    /// against `want`.
    pub fn object_file(
        &mut self,
        rel: &str,
        data: &mut dyn Read,
        want: &str,
        size: u64,
    ) -> Result<(), Refused> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let parent = rel[..at + i].to_owned();
            self.dir(&parent, &h)?;
            at += i + 1;
        }
        h.set_mode(0o644);
        h.set_mtime(crate::clock::now_unix().max(0) as u64);
        self.file(rel, &h, size, data, Some(want))
    }

    /// Whether the stream holds the file `rel`.
    pub fn holds(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }

    /// Ends the archive (its two zero blocks) and returns the writer.
    pub fn finish(self) -> Result<(W, Extracted), Refused> {
        let out = self.out.clone();
        let w = self.builder.into_inner().map_err(Refused::Write)?;
        Ok((w, out))
    }
}

/// Passes the stored tar stream `reader` on to `emit`, member by member, refusing what
/// extraction refuses.
pub fn retar<W: Write>(
    reader: impl Read,
    emit: &mut Emitter<W>,
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
            tar::EntryType::Directory => emit.dir(&rel, &header)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let want = (how.digest_of)(&rel);
                let size = entry.size();
                emit.file(&rel, &header, size, &mut entry, want.as_deref())?;
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
                let Some(to) = under(&link_raw, &components(&link_raw)?)? else {
                    return Err(Refused::Hostile(format!(
                        "the hard link {raw:?} points to {link_raw:?}, outside {}/: refused",
                        how.strip
                    )));
                };
                let want = (how.digest_of)(&rel);
                emit.link(&rel, &to, want.as_deref())?;
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
            &mut emit,
            &Retar {
                strip: "v/_data",
                digest_of,
                cancel: &cancel,
            },
        )?;
        let (bytes, _) = emit.finish()?;
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
}
