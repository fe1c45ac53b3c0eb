//! A guard in front of a tar reader: the records that describe the next member (GNU long
//! names and link names, PAX headers) are read whole into memory by the tar crate, whatever
//! size their header claims. A damaged or crafted archive could so make verification read
//! gigabytes into memory; [`CappedRecords`] fails such an archive as soon as the header that
//! claims it passes.
//!
//! It follows the archive block by block as the bytes go through (no copy, no buffering but
//! one header): member data sizes come from the header, or from the PAX `size` record before
//! it (how Go's tar writer, and so Docker and DTR, write members of 8 GiB and more).

use std::io::{self, Read};

/// The most a long-name or PAX record may hold (Go's tar reader has the same limit).
pub const MAX_RECORD: u64 = 1 << 20;

const BLOCK: usize = 512;

enum State {
    /// Collecting a header block.
    Header { have: usize },
    /// Inside a member's data, then its padding: `left` octets before the next header.
    Data { left: u64 },
    /// GNU sparse extension headers (old GNU format) follow: each says if another does.
    SparseExt { have: usize, then: u64 },
}

/// Passes `inner` through, checking the records of the tar stream it carries.
pub struct CappedRecords<R> {
    inner: R,
    state: State,
    header: [u8; BLOCK],
    /// The data of the PAX header (or, when watching, GNU long name) being passed (at most
    /// [`MAX_RECORD`]), how much of it is data (not padding), and its kind.
    pax: Option<(Vec<u8>, u64, u8)>,
    /// The size of the next member, from a PAX record.
    next_size: Option<u64>,
    /// Members passed (headers of files, folders, links; not extension records).
    members: u64,
    /// A regular file looked for by name (`./` prefixes aside), and whether it passed with
    /// content.
    watch: Option<(&'static str, bool)>,
    /// When watching: the next member's name from a PAX `path` record or a GNU long name.
    next_name: Option<Vec<u8>>,
    /// All-zero header blocks in a row (two end a tar archive).
    zeros: u64,
}

impl<R: Read> CappedRecords<R> {
    pub fn new(inner: R) -> CappedRecords<R> {
        CappedRecords {
            inner,
            state: State::Header { have: 0 },
            header: [0u8; BLOCK],
            pax: None,
            next_size: None,
            members: 0,
            watch: None,
            next_name: None,
            zeros: 0,
        }
    }

    /// The same guard, also noting whether a regular file named `name`, with content, passes
    /// (`./` prefixes aside): its name as the tar crate reads it (a PAX `path` record or a
    /// GNU long name, else the ustar name and prefix fields).
    pub fn watching(inner: R, name: &'static str) -> CappedRecords<R> {
        CappedRecords {
            watch: Some((name, false)),
            ..CappedRecords::new(inner)
        }
    }

    /// Members passed so far.
    pub fn members(&self) -> u64 {
        self.members
    }

    /// Whether the member [`CappedRecords::watching`] looks for has passed.
    pub fn seen(&self) -> bool {
        self.watch.is_some_and(|(_, seen)| seen)
    }

    /// Whether what passed ends as a whole tar archive does: between members, after the
    /// end-of-archive blocks of zeros. A stream cut short at a member's boundary does not.
    pub fn ended_whole(&self) -> bool {
        matches!(self.state, State::Header { have: 0 }) && self.zeros >= 2
    }

    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.state {
                State::Header { have } => {
                    let n = (BLOCK - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if have + n < BLOCK {
                        self.state = State::Header { have: have + n };
                    } else {
                        self.state = self.next_member()?;
                    }
                }
                State::Data { left } => {
                    let n = left.min(bytes.len() as u64) as usize;
                    if let Some((buf, data, _)) = &mut self.pax {
                        let room = (*data as usize).saturating_sub(buf.len()).min(n);
                        buf.extend_from_slice(&bytes[..room]);
                    }
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.state = State::Data { left };
                    if left == 0 {
                        match self.pax.take() {
                            Some((buf, _, b'L')) => {
                                let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
                                self.next_name = Some(buf[..end].to_vec());
                            }
                            Some((buf, _, _)) => {
                                self.next_size = pax_size(&buf)?.or(self.next_size);
                                if self.watch.is_some()
                                    && let Some(path) = pax_path(&buf)
                                {
                                    self.next_name = Some(path);
                                }
                            }
                            None => {}
                        }
                        self.state = State::Header { have: 0 };
                    }
                }
                State::SparseExt { have, then } => {
                    let n = (BLOCK - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.state = if have + n < BLOCK {
                        State::SparseExt {
                            have: have + n,
                            then,
                        }
                    } else if self.header[504] > 1 {
                        return Err(damaged("a sparse header with a bad extension flag"));
                    } else if self.header[504] == 1 {
                        State::SparseExt { have: 0, then }
                    } else {
                        data(then)
                    };
                }
            }
        }
        Ok(())
    }

    /// A whole header block is in: where its data ends, and whether it is acceptable.
    fn next_member(&mut self) -> io::Result<State> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            self.zeros += 1;
            return Ok(State::Header { have: 0 });
        }
        self.zeros = 0;
        let size = field_size(&h[124..136])?;
        let kind = h[156];
        if matches!(kind, b'L' | b'K' | b'x' | b'g') {
            // Where this guard and the tar crate could disagree on where the next header is,
            // fail instead (no archive of ours, Go's or GNU tar's looks like this): an
            // extension header without ustar/GNU magic (tar reads it as a plain member), or
            // one that a pending PAX size would apply to.
            if &h[257..262] != b"ustar" {
                return Err(damaged("an extension header without ustar magic"));
            }
            if self.next_size.is_some() {
                return Err(damaged("a PAX size record before another extension header"));
            }
            if size > MAX_RECORD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a tar {} record of {size} bytes (at most {MAX_RECORD} are read): the archive is damaged or was crafted",
                        if matches!(kind, b'x' | b'g') {
                            "PAX"
                        } else {
                            "long-name"
                        }
                    ),
                ));
            }
            if kind == b'x' || (kind == b'L' && self.watch.is_some()) {
                self.pax = Some((Vec::with_capacity(size as usize), size, kind));
            }
            return Ok(data(size));
        }
        let size = self.next_size.take().unwrap_or(size);
        self.members += 1;
        let long = self.next_name.take();
        if let Some((name, seen)) = &mut self.watch
            && !*seen
        {
            let field = |b: &[u8]| {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                b[..end].to_vec()
            };
            let full = long.unwrap_or_else(|| {
                let base = field(&h[0..100]);
                // The prefix field is POSIX ustar's; GNU headers keep times there.
                let prefix = if &h[257..263] == b"ustar\0" {
                    field(&h[345..500])
                } else {
                    Vec::new()
                };
                let mut full = prefix;
                if !full.is_empty() {
                    full.push(b'/');
                }
                full.extend_from_slice(&base);
                full
            });
            let mut rest = full.as_slice();
            while let Some(r) = rest.strip_prefix(b"./") {
                rest = r;
            }
            // A regular file with content: a folder, a link or an empty file is no key.
            *seen = rest == name.as_bytes() && matches!(kind, b'0' | 0 | b'7') && size > 0;
        }
        if kind == b'S' && h[482] > 1 {
            return Err(damaged("a sparse header with a bad extension flag"));
        }
        if kind == b'S' && h[482] == 1 {
            return Ok(State::SparseExt {
                have: 0,
                then: size,
            });
        }
        Ok(data(size))
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: the archive is damaged or was crafted"),
    )
}

/// The data of `size` octets and its padding to the block size.
fn data(size: u64) -> State {
    let left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
    if left == 0 {
        State::Header { have: 0 }
    } else {
        State::Data { left }
    }
}

/// A header's size field: octal text, or base-256 (high bit of the first octet set).
fn field_size(f: &[u8]) -> io::Result<u64> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a tar header with a bad size field",
        )
    };
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256).ok_or_else(bad)? | u64::from(b);
        }
        return Ok(v);
    }
    let text: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&text).map_err(|_| bad())?;
    u64::from_str_radix(s, 8).map_err(|_| bad())
}

/// The `path` record of a PAX header's data, if it has a well-formed one.
fn pax_path(mut records: &[u8]) -> Option<Vec<u8>> {
    let mut path = None;
    while !records.is_empty() && !records.iter().all(|&b| b == 0) {
        let space = records.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&records[..space])
            .ok()?
            .parse()
            .ok()
            .filter(|&l| l > space && l <= records.len())?;
        let record = records[space + 1..len].strip_suffix(b"\n")?;
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(v.to_vec());
        }
        records = &records[len..];
    }
    path
}

/// The `size` record of a PAX header's data (`<len> size=<decimal>\n`), if it has one.
fn pax_size(mut records: &[u8]) -> io::Result<Option<u64>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed PAX record");
    let mut size = None;
    while !records.is_empty() {
        if records.iter().all(|&b| b == 0) {
            break;
        }
        let space = records.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&records[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > space && l <= records.len())
            .ok_or_else(bad)?;
        let record = &records[space + 1..len];
        // As the tar crate reads records (line by line): one newline, at the end.
        let Some(record) = record.strip_suffix(b"\n").filter(|r| !r.contains(&b'\n')) else {
            return Err(bad());
        };
        if let Some(v) = record.strip_prefix(b"size=") {
            if size.is_some() {
                return Err(damaged("two PAX size records for one member"));
            }
            size = Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(bad)?,
            );
        }
        records = &records[len..];
    }
    Ok(size)
}

impl<R: Read> Read for CappedRecords<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.observe(&out[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Reads `input` through the guard in reads of `step` octets.
    fn pass(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        struct Steps<'a>(&'a [u8], usize);
        impl Read for Steps<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(out.len()).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        CappedRecords::new(Steps(input, step)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    #[test]
    fn archives_pass_unchanged_pax_sizes_and_long_names_included() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("v/{}/data", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &data[..]).unwrap();
        // As Go writes a member of 8 GiB and more: size in PAX, 0 in the header.
        let size = data.len().to_string();
        b.append_pax_extensions([("size", size.as_bytes())])
            .unwrap();
        let h = header("v/big", tar::EntryType::Regular, 0);
        let raw = b.get_mut();
        raw.extend_from_slice(h.as_bytes());
        raw.write_all(&data).unwrap();
        raw.extend_from_slice(&vec![0u8; (512 - data.len() % 512) % 512]);
        let mut h = header("v/after", tar::EntryType::Regular, 3);
        b.append_data(&mut h, "v/after", &b"abc"[..]).unwrap();
        let input = b.into_inner().unwrap();
        for step in [1, 7, 512, 4096, 1 << 20] {
            assert!(pass(&input, step).unwrap() == input, "reads of {step}");
        }
        // And the tar crate reads every member of what went through.
        let out = pass(&input, 1000).unwrap();
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [long.as_str(), "v/big", "v/after"]);
    }

    #[test]
    fn a_record_that_claims_too_much_fails_before_it_is_read() {
        for kind in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
            let h = header("././@LongLink", kind, 3 << 30);
            // Only the header: the failure must come before any of the claimed data.
            let err = pass(h.as_bytes(), 512).unwrap_err();
            assert!(err.to_string().contains("at most 1048576"), "{err}");
        }
        let h = header("././@LongLink", tar::EntryType::GNULongName, MAX_RECORD);
        assert!(pass(h.as_bytes(), 512).is_ok());
    }

    #[test]
    fn what_the_tar_crate_could_read_otherwise_fails() {
        let pax = |records: &[u8]| {
            let mut h = header("pax", tar::EntryType::XHeader, records.len() as u64);
            h.set_cksum();
            let mut v = h.as_bytes().to_vec();
            v.extend_from_slice(records);
            v.resize(v.len().div_ceil(512) * 512, 0);
            v
        };
        let fails = |input: &[u8], what: &str| {
            let err = pass(input, 512).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
        };
        fails(&pax(b"9 size=1\n9 size=2\n"), "two PAX size records");
        fails(&pax(b"12 size=1\nx=\n"), "malformed PAX record");
        let mut twice = pax(b"9 size=5\n");
        twice.extend_from_slice(header("l", tar::EntryType::GNULongName, 3).as_bytes());
        fails(&twice, "before another extension header");
        let mut h = header("l", tar::EntryType::GNULongName, 3);
        h.as_mut_bytes()[257..263].copy_from_slice(b"xxxxx\0");
        h.set_cksum();
        fails(h.as_bytes(), "without ustar magic");
    }

    #[test]
    fn size_fields_in_octal_and_base_256() {
        assert_eq!(field_size(b"00000001750\0").unwrap(), 1000);
        assert_eq!(field_size(b"     1750 \0\0").unwrap(), 1000);
        assert_eq!(field_size(&[0u8; 12]).unwrap(), 0);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[7] = 0x02; // 2 << 32
        assert_eq!(field_size(&f).unwrap(), 2 << 32);
        assert!(field_size(b"0000000175x\0").is_err());
    }

    #[test]
    fn a_watched_member_is_noted_with_or_without_dot_slash() {
        // (name, content, folder?) members; ustar headers unless `gnu`.
        let tar_of = |members: &[(&str, &[u8], bool)], gnu: bool| {
            let mut b = tar::Builder::new(Vec::new());
            for (n, data, folder) in members {
                let mut h = if gnu {
                    tar::Header::new_gnu()
                } else {
                    tar::Header::new_ustar()
                };
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                if *folder {
                    h.set_entry_type(tar::EntryType::Directory);
                }
                b.append_data(&mut h, n, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let watch = |input: &[u8]| {
            let mut r = CappedRecords::watching(input, "ucp-node-certs/key.pem");
            io::copy(&mut r, &mut io::sink()).unwrap();
            (r.members(), r.seen(), r.ended_whole())
        };
        let key: &[u8] = b"key";
        let with = tar_of(
            &[
                ("./ucp-kv/a", key, false),
                ("./ucp-node-certs/key.pem", key, false),
                ("./ucp-kv/b", key, false),
            ],
            false,
        );
        assert_eq!(watch(&with), (3, true, true));
        assert_eq!(
            watch(&tar_of(&[("ucp-node-certs/key.pem", key, false)], true)),
            (1, true, true)
        );
        // A name that only ends the same way, or lies deeper, is not the member; nor is a
        // folder or an empty file of that name.
        let without = tar_of(
            &[
                ("./x/ucp-node-certs/key.pem", key, false),
                ("ucp-node-certs/key.pem.bak", key, false),
                ("ucp-node-certs/key.pem", b"", false),
                ("./ucp-node-certs/key.pem", b"", true),
            ],
            false,
        );
        assert_eq!(watch(&without), (4, false, true));
        // A long name (a GNU long-name record, a PAX path record) is read as tar reads it.
        let deep = format!("./{}/x", "d".repeat(120));
        let gnu_long = tar_of(
            &[
                (deep.as_str(), key, false),
                ("./ucp-node-certs/key.pem", key, false),
            ],
            true,
        );
        assert_eq!(watch(&gnu_long), (2, true, true));
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", "./ucp-node-certs/key.pem".as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o600);
        b.append_data(&mut h, "decoy", key).unwrap();
        assert_eq!(watch(&b.into_inner().unwrap()), (1, true, true));
        // Cut short, even between members, it does not end whole.
        assert!(!watch(&with[..512 * 4]).2);
        assert!(!watch(&with[..with.len() - 1024]).2);
    }
}
