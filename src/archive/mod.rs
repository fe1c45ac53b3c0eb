//! Streaming building blocks: hashing and counting, a bounded pipe between threads, and the
//! tar layout of registry trees.

pub mod extract;
pub mod pipe;
pub mod records;
pub mod retar;
pub mod tree;

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Passes writes through, hashing (sha256) and counting them.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the hex sha256 and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            crate::hex::encode(&self.hasher.finalize()),
            self.count,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `io::copy` in 1 MiB steps (it copies through 8 KiB), for the paths that carry archives.
pub fn copy_large(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; pipe::CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Reads at most `max` octets from `from` through `buf` into `to`; returns how many (0 at the
/// end of `from`).
pub fn copy_some(
    from: &mut dyn Read,
    max: usize,
    to: &mut dyn Write,
    buf: &mut [u8],
) -> io::Result<usize> {
    let want = max.min(buf.len());
    let n = from.read(&mut buf[..want])?;
    to.write_all(&buf[..n])?;
    Ok(n)
}

/// Where tar member data goes: a writer that may also read it straight from the source.
pub trait MemberSink: Write {
    /// Moves at most `max` octets from `from` (through `buf`, unless the sink reads straight
    /// into its own buffer); returns how many (0 at the end of `from`).
    fn read_from(&mut self, from: &mut dyn Read, max: usize, buf: &mut [u8]) -> io::Result<usize>;
}

impl MemberSink for Vec<u8> {
    fn read_from(&mut self, from: &mut dyn Read, max: usize, buf: &mut [u8]) -> io::Result<usize> {
        copy_some(from, max, self, buf)
    }
}

/// A hashed stream of tar members (member data copied through the caller's buffer).
impl<W: Write> MemberSink for HashWriter<W> {
    fn read_from(&mut self, from: &mut dyn Read, max: usize, buf: &mut [u8]) -> io::Result<usize> {
        copy_some(from, max, self, buf)
    }
}

impl<T: MemberSink + ?Sized> MemberSink for &mut T {
    fn read_from(&mut self, from: &mut dyn Read, max: usize, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_from(from, max, buf)
    }
}

/// Passes reads through, hashing (sha256) and counting them.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The hex sha256 and byte count of what was read so far.
    pub fn so_far(&self) -> (String, u64) {
        (
            crate::hex::encode(&self.hasher.clone().finalize()),
            self.count,
        )
    }

    /// Reads what is left, then returns the hex sha256 and byte count of everything read.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        // Mostly called at the end already: a small read says so without a chunk buffer.
        let mut probe = [0u8; 512];
        loop {
            match self.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    copy_large(&mut self, &mut io::sink())?;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((crate::hex::encode(&self.hasher.finalize()), self.count))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// sha256 of a byte slice, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// `from`, decompressed when it is a gzip stream (`1f 8b`), as it is otherwise: a tar archive
/// stored either way reads as a tar archive.
pub fn unzipped<'a>(from: impl Read + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut buffered = io::BufReader::with_capacity(1 << 16, from);
    let gzip = io::BufRead::fill_buf(&mut buffered)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    })
}

/// What the first bytes of a metadata stream say: gzip or plain tar, and the first member.
#[derive(Debug, PartialEq, Eq)]
pub struct Sniffed {
    pub gzip: bool,
    pub first_member: String,
}

/// Looks at the start of an archive stream: gzip (`1f 8b`) or tar (`ustar` at offset 257);
/// never trust a file name. `prefix` must hold the first tar header (after decompression).
pub fn sniff(prefix: &[u8]) -> Result<Sniffed, String> {
    let (gzip, header) = if prefix.starts_with(&[0x1f, 0x8b]) {
        let mut d = flate2::read::MultiGzDecoder::new(prefix);
        let mut h = vec![0u8; 512];
        d.read_exact(&mut h)
            .map_err(|e| format!("the gzip stream does not start with a tar header: {e}"))?;
        (true, h)
    } else {
        (
            false,
            prefix.get(..512).map(<[u8]>::to_vec).unwrap_or_default(),
        )
    };
    if header.len() < 512 || &header[257..262] != b"ustar" {
        return Err(if prefix.is_empty() {
            "the stream is empty".to_owned()
        } else {
            "the stream is neither gzip nor a tar archive".to_owned()
        });
    }
    let field = |r: std::ops::Range<usize>| {
        let b = &header[r];
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let (name, ustar_prefix) = (field(0..100), field(345..500));
    let first_member = if ustar_prefix.is_empty() {
        name
    } else {
        format!("{ustar_prefix}/{name}")
    };
    Ok(Sniffed { gzip, first_member })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, name, io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn sniffs_gzip_and_plain_tar() {
        let plain = tar_with("dtr-backup-v2.9.4-online/");
        let s = sniff(&plain).unwrap();
        assert!(!s.gzip);
        assert_eq!(s.first_member, "dtr-backup-v2.9.4-online/");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &plain).unwrap();
        let s = sniff(&gz.finish().unwrap()).unwrap();
        assert!(s.gzip);
        assert!(sniff(b"").unwrap_err().contains("empty"));
        assert!(sniff(&[7u8; 1024]).is_err());
    }
}
