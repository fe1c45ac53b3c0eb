//! OpenPGP streams: encryption of artifacts on their way out, decryption for verification.
//!
//! Backend: sequoia-openpgp with its pure-Rust crypto (`crypto-rust`), so that building needs
//! no system libraries (nettle and OpenSSL backends need libclang for bindgen). Its AES uses
//! AES-NI where the CPU has it. Messages are what `gpg --symmetric` reads: SKESK v4 + SEIPD v1
//! (with MDC), AES-256, no OpenPGP compression (artifacts are tar files of mostly compressed
//! layers; compressing again costs CPU for nothing).

pub mod secret;

use std::io::{self, Read, Write};

use sequoia_openpgp as openpgp;

use openpgp::crypto::{Password, SessionKey};
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message};
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Cert, KeyHandle};

pub use secret::{Secret, resolve};

/// How artifacts are encrypted, with its secrets resolved.
#[derive(Clone, Debug)]
pub enum Encryption {
    None,
    Passphrase(Secret),
}

impl Encryption {
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Encryption::None)
    }
}

/// The secrets of a run, resolved at preflight.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub encryption: Encryption,
    pub ucp_password: Option<Secret>,
}

impl Encryption {
    /// How the artifacts this encryption writes are read back.
    pub fn decryption(&self) -> Decryption {
        match self {
            Encryption::None => Decryption::None,
            Encryption::Passphrase(s) => Decryption::Passphrase(s.clone()),
        }
    }
}

/// How encrypted artifacts are decrypted.
#[derive(Clone, Debug)]
pub enum Decryption {
    None,
    Passphrase(Secret),
}

static POLICY: StandardPolicy = StandardPolicy::new();

/// Sequoia's decryptor buffers 25 MiB by default; this bounds memory while verifying.
const DECRYPT_BUFFER: usize = 256 * 1024;

fn to_io(e: openpgp::anyhow::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// Wraps `sink` so that what is written comes out encrypted; `finish` ends the message.
pub fn encrypt<'a, W: Write + Send + Sync + 'a>(
    sink: W,
    enc: &Encryption,
) -> io::Result<Box<dyn FinishWrite + 'a>> {
    match enc {
        Encryption::None => Ok(Box::new(Plain(sink))),
        Encryption::Passphrase(secret) => {
            let message = Message::new(sink);
            let password = Password::from(secret.expose());
            let message = Encryptor::with_passwords(message, Some(password))
                .symmetric_algo(SymmetricAlgorithm::AES256)
                .build()
                .map_err(to_io)?;
            let literal = LiteralWriter::new(message).build().map_err(to_io)?;
            Ok(Box::new(Sealed(Some(literal))))
        }
    }
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

struct Sealed<'a>(Option<Message<'a>>);

impl Write for Sealed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(m) => m.write(buf),
            None => Err(io::Error::other("message already finished")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Some(m) => m.flush(),
            None => Ok(()),
        }
    }
}

impl FinishWrite for Sealed<'_> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        match self.0.take() {
            Some(m) => m.finalize().map_err(to_io),
            None => Ok(()),
        }
    }
}

/// Wraps `source` so that reading yields the plaintext. Reading to the end checks the
/// integrity protection: a modified message fails there.
pub fn decrypt<'a, R: Read + Send + Sync + 'a>(
    source: R,
    dec: &Decryption,
) -> io::Result<Box<dyn Read + Send + Sync + 'a>> {
    match dec {
        Decryption::None => Ok(Box::new(source)),
        Decryption::Passphrase(secret) => {
            let helper = Helper {
                password: Password::from(secret.expose()),
            };
            let reader = DecryptorBuilder::from_reader(source)
                .map_err(to_io)?
                .buffer_size(DECRYPT_BUFFER)
                .with_policy(&POLICY, None, helper)
                .map_err(|e| io::Error::other(format!("cannot decrypt: {e}")))?;
            Ok(Box::new(reader))
        }
    }
}

struct Helper {
    password: Password,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }
    fn check(&mut self, _structure: MessageStructure) -> openpgp::Result<()> {
        Ok(())
    }
}

impl DecryptionHelper for Helper {
    fn decrypt(
        &mut self,
        _pkesks: &[PKESK],
        skesks: &[SKESK],
        _sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        for skesk in skesks {
            if let Ok((algo, key)) = skesk.decrypt(&self.password)
                && decrypt(algo, &key)
            {
                return Ok(None);
            }
        }
        Err(openpgp::anyhow::anyhow!(
            "wrong passphrase: none of the message's {} password packets opens with it",
            skesks.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_round_trip_and_tamper_detection() {
        let secret = Secret::for_test("pa ss");
        let mut out = Vec::new();
        let mut w = encrypt(&mut out, &Encryption::Passphrase(secret.clone())).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        let mut back = Vec::new();
        decrypt(&out[..], &Decryption::Passphrase(secret.clone()))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);

        let wrong = decrypt(&out[..], &Decryption::Passphrase(Secret::for_test("nope"))).is_err();
        assert!(wrong, "a wrong passphrase must fail");

        // The damage is found when the decryptor reads ahead, or at the latest at the end.
        let mid = out.len() / 2;
        out[mid] ^= 1;
        let tampered = decrypt(&out[..], &Decryption::Passphrase(secret))
            .and_then(|mut r| r.read_to_end(&mut Vec::new()));
        assert!(tampered.is_err(), "a flipped byte must fail");
    }
}
