//! One artifact, read once: one thread reads (and hashes) the stored bytes, the other
//! decrypts and walks the archive.

use std::io::{self, Read};

use crate::archive::HashReader;
use crate::archive::pipe;
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::manifest::{Artifact, ArtifactKind, Manifest};
use crate::storage::Store;

use super::layout::{Walk, walk_archive};
use super::{Check, INCONCLUSIVE, ReadData, Rehash};

pub(super) fn check_artifact(
    store: &dyn Store,
    manifest: &Manifest,
    a: &Artifact,
    dec: Option<&Decryption>,
    read_data: ReadData,
    rehash: Rehash,
    cancel: &Cancel,
) -> (Vec<Check>, Option<Walk>) {
    let path = format!("{}/{}", manifest.backup_id, a.path);
    let mut checks = Vec::new();
    let exists = match store.size(&path) {
        Ok(Some(size)) if size == a.size => Ok(format!("{size} bytes")),
        Ok(Some(size)) => Err(format!(
            "{size} bytes stored, {} recorded: truncated or replaced",
            a.size
        )),
        Ok(None) => Err("missing".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let present = exists.is_ok();
    checks.push(Check::new(
        format!("{}: present with its size", a.path),
        exists,
    ));
    if !present {
        return (checks, None);
    }
    let reader = match store.open(&path) {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::new(
                format!("{}: readable", a.path),
                Err(e.to_string()),
            ));
            return (checks, None);
        }
    };
    // Two threads: one reads the stored bytes (and hashes them), the other decrypts and walks
    // the archive (and the decryptor hashes for the MDC on a third). Each artifact is read
    // once.
    let hash = rehash == Rehash::Always || !(a.encrypted && dec.is_some());
    let (tx, mut stored) = pipe::pipe();
    let reading_cancel = cancel.clone();
    let reading = std::thread::spawn(move || -> io::Result<(Option<String>, u64)> {
        let mut src = Guard {
            inner: reader,
            cancel: &reading_cancel,
        };
        let mut tx = tx;
        if hash {
            let mut hashed = HashReader::new(src);
            pipe::pump(&mut hashed, &mut tx)?;
            tx.close()?;
            hashed.finish().map(|(sha, n)| (Some(sha), n))
        } else {
            let n = pipe::pump(&mut src, &mut tx)?;
            tx.close()?;
            Ok((None, n))
        }
    });
    let walk = {
        let plain: Result<Box<dyn Read + Send + Sync + '_>, String> = match (a.encrypted, dec) {
            (false, _) => Ok(Box::new(&mut stored)),
            (true, Some(dec)) => crypto::decrypt(&mut stored, dec).map_err(|e| e.to_string()),
            // No key: only the stored bytes can be checked (size and sha256 below).
            (true, None) => Err(String::new()),
        };
        match plain {
            Err(e) if e.is_empty() => None,
            Err(e) => {
                checks.push(Check::new(format!("{}: decrypts", a.path), Err(e)));
                None
            }
            Ok(plain) => {
                let mut plain = Trap {
                    inner: plain,
                    first_error: None,
                };
                let walk = walk_archive(&mut plain, a.kind, manifest, read_data);
                // Reading to the end checks the OpenPGP integrity protection (MDC).
                let rest = crate::archive::copy_large(&mut plain, &mut io::sink());
                let first_error = plain.first_error.take();
                drop(plain);
                let decrypted = match (first_error, rest) {
                    (Some(e), _) => Err(e),
                    (None, Err(e)) => Err(e.to_string()),
                    (None, Ok(_)) => Ok("integrity protection holds".to_owned()),
                };
                // What the walk saw is only worth something if the plaintext is authentic.
                let authentic = !a.encrypted || decrypted.is_ok();
                if a.encrypted {
                    checks.push(Check::new(format!("{}: decrypts", a.path), decrypted));
                }
                let (layout, walk) = match walk {
                    Ok(_) if !authentic => (Err(INCONCLUSIVE.to_owned()), None),
                    Ok((detail, walk)) => (Ok(detail), Some(walk)),
                    Err(e) => (Err(e), None),
                };
                checks.push(Check::new(format!("{}: layout", a.path), layout));
                if let Some(w) = &walk
                    && a.kind == ArtifactKind::Images
                    && read_data != ReadData::Layout
                {
                    checks.push(Check::new(
                        format!("{}: blob contents match their digests", a.path),
                        if w.bad_blobs.is_empty() {
                            Ok(format!("{} of {} blobs hashed", w.hashed, w.blobs.len()))
                        } else {
                            Err(format!(
                                "{} blobs do not hash to their digest: {}",
                                w.bad_blobs.len(),
                                w.bad_blobs
                                    .iter()
                                    .take(10)
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        },
                    ));
                }
                walk
            }
        }
    };
    // Whatever the walk did, let the reader finish so that the hash covers every byte.
    let _ = io::copy(&mut stored, &mut io::sink());
    let hashed = reading
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")));
    let name = if hash { "sha256" } else { "read back whole" };
    checks.push(Check::new(
        format!("{}: {name}", a.path),
        match hashed {
            Ok((Some(sha), n)) if sha == a.sha256 && n == a.size => Ok(sha),
            Ok((Some(sha), n)) => Err(format!(
                "{n} bytes with sha256 {sha}; the manifest records {} bytes with {}",
                a.size, a.sha256
            )),
            Ok((None, n)) if n == a.size => Ok(format!(
                "{n} bytes; not hashed again: the integrity protection covers every octet"
            )),
            Ok((None, n)) => Err(format!(
                "{n} bytes read back; the manifest records {}",
                a.size
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    (checks, walk)
}

/// Remembers the first read error of the plaintext (a failed integrity check), which a
/// decryptor may not repeat on later reads.
struct Trap<R> {
    inner: R,
    first_error: Option<String>,
}

impl<R: Read> Read for Trap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.first_error.get_or_insert_with(|| e.to_string());
        })
    }
}

/// Stops reading when cancelled.
struct Guard<'a, R> {
    inner: R,
    cancel: &'a Cancel,
}

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::failpoint::hit("verify.read");
        self.cancel.check()?;
        self.inner.read(buf)
    }
}
