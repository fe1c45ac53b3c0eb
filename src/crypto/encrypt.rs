//! Encryption: the key packets (by sequoia) and the SEIPD v1 bulk (by [`super::seipd`]),
//! written as a stream.

use std::io::{self, Read, Write};

use sequoia_openpgp as openpgp;
use sha2::{Digest, Sha256};

use openpgp::crypto::{Password, SessionKey};
use openpgp::packet::prelude::{PKESK3, SKESK4};
use openpgp::serialize::Serialize;
use openpgp::types::SymmetricAlgorithm;

use crate::archive::pipe::{ChunkSink, Copying};

use super::keys::encryption_keys;
use super::*;

/// The cipher of every artifact written.
const CIPHER: SymmetricAlgorithm = SymmetricAlgorithm::AES256;

/// The key packets that give the session key to the passphrase or to the recipients.
fn key_packets(enc: &Encryption, session_key: &SessionKey) -> openpgp::Result<Vec<u8>> {
    let mut out = Vec::new();
    match enc {
        Encryption::None => {}
        Encryption::Passphrase(secret) => {
            let skesk = SKESK4::with_password(
                CIPHER,
                CIPHER,
                Default::default(),
                session_key,
                &Password::from(secret.expose()),
            )?;
            openpgp::Packet::SKESK(skesk.into()).serialize(&mut out)?;
        }
        Encryption::Recipients(certs) => {
            for key in certs.iter().flat_map(encryption_keys) {
                let mut pkesk = PKESK3::for_recipient(CIPHER, session_key, &key)?;
                pkesk.set_recipient(Some(key.keyid()));
                openpgp::Packet::PKESK(pkesk.into()).serialize(&mut out)?;
            }
        }
    }
    Ok(out)
}

/// The encryption of one artifact, in two stages that may run on two threads (on two cores,
/// hashing for the MDC and the cipher then overlap):
///
/// ```text
/// plaintext ─▶ frame (literal packet framing, SHA-1 for the MDC) ─▶ seal (AES-CFB, key packets) ─▶ ciphertext
/// ```
///
/// Without encryption both stages pass bytes through.
pub struct Session(Option<(Vec<u8>, SessionKey)>);

impl Session {
    /// A fresh session key, given to the passphrase or the recipients.
    pub fn new(enc: &Encryption) -> io::Result<Session> {
        if !enc.is_encrypted() {
            return Ok(Session(None));
        }
        let key = SessionKey::new(CIPHER.key_size().map_err(to_io)?).map_err(to_io)?;
        let esk = key_packets(enc, &key).map_err(to_io)?;
        Ok(Session(Some((esk, key))))
    }

    /// The plaintext stage, writing into `sink`.
    pub fn frame<W: ChunkSink>(&self, sink: W) -> io::Result<Framed<W>> {
        Ok(match self.0 {
            None => Framed::Clear(sink),
            Some(_) => Framed::Framer(seipd::Framer::new(sink)?),
        })
    }

    /// The cipher stage, writing into `sink`; reads what [`Session::frame`] wrote.
    pub fn seal<'a, W: ChunkSink + Send + Sync + 'a>(
        &self,
        sink: W,
    ) -> io::Result<Box<dyn FinishWrite + 'a>> {
        Ok(match &self.0 {
            None => Box::new(Plain(sink)),
            Some((esk, key)) => Box::new(Sealed(Some(seipd::Sealer::new(sink, esk, CIPHER, key)?))),
        })
    }
}

impl Session {
    /// One message written on the calling thread in one pass ([`seipd::OnePass`]), which also
    /// returns the SHA-256 of what was written: a blob, checked against its digest as it is
    /// stored.
    pub fn digesting<W: ChunkSink>(&self, sink: W) -> io::Result<Digesting<W>> {
        Ok(match &self.0 {
            None => Digesting::Clear {
                sink,
                sha: Sha256::new(),
                count: 0,
            },
            Some((esk, key)) => {
                Digesting::Sealed(Box::new(seipd::OnePass::new(sink, esk, CIPHER, key)?))
            }
        })
    }
}

/// A message of [`Session::digesting`].
pub enum Digesting<W: ChunkSink> {
    Clear { sink: W, sha: Sha256, count: u64 },
    Sealed(Box<seipd::OnePass<W>>),
}

impl<W: ChunkSink> Digesting<W> {
    /// Reads at most `max` octets from `from` into the message (straight into the OpenPGP
    /// framing's buffer when encrypting; through `buf` otherwise); returns how many.
    pub fn read_from(
        &mut self,
        from: &mut dyn Read,
        max: usize,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        match self {
            Digesting::Clear { sink, sha, count } => {
                // What was copied is still in `buf`.
                let k = crate::archive::copy_some(from, max, sink, buf)?;
                sha.update(&buf[..k]);
                *count += k as u64;
                Ok(k)
            }
            Digesting::Sealed(m) => m.read_from(from, max),
        }
    }

    /// Ends the message; returns the sink, and the SHA-256 and length of what was written.
    pub fn finish(self) -> io::Result<(W, [u8; 32], u64)> {
        match self {
            Digesting::Clear {
                mut sink,
                sha,
                count,
            } => {
                sink.flush()?;
                Ok((sink, sha.finalize().into(), count))
            }
            Digesting::Sealed(m) => (*m).finish(),
        }
    }
}

/// The plaintext stage of a [`Session`].
pub enum Framed<W: ChunkSink> {
    Clear(W),
    Framer(seipd::Framer<W>),
}

impl<W: ChunkSink> Framed<W> {
    /// Reads at most `max` octets from `from` into the stream (straight into the OpenPGP
    /// framing's buffer when encrypting; through `buf` otherwise); returns how many.
    pub fn read_from(
        &mut self,
        from: &mut dyn Read,
        max: usize,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        match self {
            Framed::Clear(w) => crate::archive::copy_some(from, max, w, buf),
            Framed::Framer(f) => f.read_from(from, max),
        }
    }

    /// Ends the plaintext; returns the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Framed::Clear(w) => Ok(w),
            Framed::Framer(f) => f.finish(),
        }
    }
}

/// Tar member data is read straight into the framing's chunk buffer.
impl<W: ChunkSink> crate::archive::MemberSink for Framed<W> {
    fn read_from(&mut self, from: &mut dyn Read, max: usize, buf: &mut [u8]) -> io::Result<usize> {
        Framed::read_from(self, from, max, buf)
    }
}

impl<W: ChunkSink> Write for Framed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Framed::Clear(w) => w.write(buf),
            Framed::Framer(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Framed::Clear(w) => w.flush(),
            Framed::Framer(f) => f.flush(),
        }
    }
}

impl<W: FinishWriteBox + ChunkSink> FinishWrite for Framed<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.finish_box()
    }
}

/// A boxed [`FinishWrite`], which [`Framed`] can sit on.
pub trait FinishWriteBox: Write + Send + Sync {
    fn finish_box(self) -> io::Result<()>;
}

impl FinishWriteBox for Box<dyn FinishWrite + '_> {
    fn finish_box(self) -> io::Result<()> {
        self.finish()
    }
}

impl<W: FinishWriteBox> FinishWriteBox for Copying<W> {
    fn finish_box(self) -> io::Result<()> {
        self.0.finish_box()
    }
}

/// Wraps `sink` so that what is written comes out encrypted, both stages on the calling
/// thread; `finish` ends the message.
pub fn encrypt<'a, W: Write + Send + Sync + 'a>(
    sink: W,
    enc: &Encryption,
) -> io::Result<Box<dyn FinishWrite + 'a>> {
    encrypt_in(sink, &Session::new(enc)?)
}

/// The same, one message of `session`: many messages may share one session (the blobs of a
/// run), so that its key packets are made once, and read back with one key derivation
/// (`decrypt` remembers the session key of a key packet). Each message has its own random
/// prefix, the IV of OpenPGP's CFB.
pub fn encrypt_in<'a, W: Write + Send + Sync + 'a>(
    sink: W,
    session: &Session,
) -> io::Result<Box<dyn FinishWrite + 'a>> {
    let sealed = session.seal(Copying(sink))?;
    Ok(Box::new(session.frame(Copying(sealed))?))
}

/// A writer whose end must be marked (OpenPGP messages have trailers).
pub trait FinishWrite: Write + Send + Sync {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct Plain<W>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send + Sync> FinishWrite for Plain<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

struct Sealed<W: ChunkSink>(Option<seipd::Sealer<W>>);

impl<W: ChunkSink> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(m) => m.write(buf),
            None => Err(io::Error::other("message already finished")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: ChunkSink + Send + Sync> FinishWrite for Sealed<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        match self.0.take() {
            Some(m) => m.finish().map(drop),
            None => Ok(()),
        }
    }
}
