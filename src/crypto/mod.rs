//! OpenPGP streams: encryption of artifacts on their way out (to a passphrase or to public
//! keys), decryption for verification (with the passphrase or a secret key).
//!
//! Messages are what gpg 2.2 reads: SKESK v4 or PKESK v3 key packets, then SEIPD v1 (with
//! MDC), AES-256, no OpenPGP compression (artifacts are tar files of mostly compressed layers;
//! compressing again costs CPU for nothing). The key packets are built and opened by
//! sequoia-openpgp (pure-Rust crypto, `crypto-rust`: building needs no system libraries); the
//! bulk, framing and cipher, is [`seipd`]'s, for speed (see there). Messages that `seipd` does
//! not read (compressed, signed, SEIPD v2, other ciphers) go to sequoia's general parser.

pub mod secret;
mod seipd;

use std::io::{self, Read, Write};

use sequoia_openpgp as openpgp;

use openpgp::cert::CertParser;
use openpgp::crypto::{Password, SessionKey};
use openpgp::packet::key::{PublicParts, UnspecifiedRole};
use openpgp::packet::prelude::{PKESK3, SKESK4};
use openpgp::packet::{Key, PKESK, SKESK};
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::Serialize;
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Cert, KeyHandle};

use crate::archive::pipe::{ChunkSink, Copying};
use crate::error::{Error, Result};

pub use secret::{Secret, resolve};

/// How artifacts are encrypted, with its secrets resolved.
#[derive(Clone, Debug)]
pub enum Encryption {
    None,
    Passphrase(Secret),
    /// Public keys; every artifact is encrypted to all of them.
    Recipients(Vec<Cert>),
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
    /// How to read the artifacts back; `None` when the run holds no key that can (recipients
    /// encryption without `verify.key`).
    pub decryption: Option<Decryption>,
}

/// How encrypted artifacts are decrypted.
#[derive(Clone, Debug)]
pub enum Decryption {
    None,
    Passphrase(Secret),
    /// Secret keys (TSKs), with the passphrase that unlocks them if they are protected.
    Keys {
        certs: Vec<Cert>,
        passphrase: Option<Secret>,
    },
}

/// The keys of `cert` that may encrypt (storage or transport), valid now.
fn encryption_keys(cert: &Cert) -> Vec<Key<PublicParts, UnspecifiedRole>> {
    cert.keys()
        .with_policy(&POLICY, None)
        .supported()
        .alive()
        .revoked(false)
        .for_storage_encryption()
        .for_transport_encryption()
        .map(|ka| ka.key().clone())
        .collect()
}

/// Reads OpenPGP certificates (armored or binary; a file may hold several).
pub fn parse_certs(bytes: &[u8], what: &str) -> Result<Vec<Cert>> {
    let certs: Vec<Cert> = CertParser::from_bytes(bytes)
        .map_err(|e| Error::crypto(format!("{what} is not an OpenPGP key: {e}")))?
        .collect::<openpgp::Result<_>>()
        .map_err(|e| Error::crypto(format!("{what} is not an OpenPGP key: {e}")))?;
    if certs.is_empty() {
        return Err(Error::crypto(format!("{what} holds no OpenPGP key")));
    }
    Ok(certs)
}

/// Loads the recipients' public keys; each needs a valid encryption-capable (sub)key.
pub fn load_recipients(paths: &[std::path::PathBuf]) -> Result<Vec<Cert>> {
    let mut all = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::crypto(format!(
                "cannot read the recipient key {}: {e}",
                path.display()
            ))
        })?;
        for cert in parse_certs(&bytes, &path.display().to_string())? {
            if encryption_keys(&cert).is_empty() {
                return Err(Error::crypto(format!(
                    "the key {} ({}) has no valid encryption-capable key: it is expired, revoked, or for signing only",
                    path.display(),
                    cert.fingerprint()
                )));
            }
            all.push(cert);
        }
    }
    Ok(all)
}

static POLICY: StandardPolicy = StandardPolicy::new();

/// Resolves how a plan's artifacts are encrypted and read back. Reads secrets.
pub fn for_plan(plan: &crate::plan::Plan) -> Result<(Encryption, Option<Decryption>)> {
    use crate::plan::EncryptionCfg;
    Ok(match &plan.encryption {
        EncryptionCfg::None => (Encryption::None, Some(Decryption::None)),
        EncryptionCfg::Passphrase(r) => {
            let s = resolve(r)?;
            (
                Encryption::Passphrase(s.clone()),
                Some(Decryption::Passphrase(s)),
            )
        }
        EncryptionCfg::Recipients(paths) => (
            Encryption::Recipients(load_recipients(paths)?),
            key_decryption(plan)?,
        ),
    })
}

/// The secret key of `verify.key`, if the plan names one.
fn key_decryption(plan: &crate::plan::Plan) -> Result<Option<Decryption>> {
    let Some(key) = &plan.verify_key else {
        return Ok(None);
    };
    let secret = resolve(key)?;
    let certs = parse_certs(
        secret.expose().as_bytes(),
        &format!("verify.key ({})", key.describe()),
    )?;
    if !certs.iter().any(Cert::is_tsk) {
        return Err(Error::crypto(format!(
            "verify.key ({}) holds a public key only; export the secret key (gpg --export-secret-keys --armor)",
            key.describe()
        )));
    }
    let passphrase = plan
        .verify_key_passphrase
        .as_ref()
        .map(resolve)
        .transpose()?;
    Ok(Some(Decryption::Keys { certs, passphrase }))
}

/// Sequoia's decryptor buffers 25 MiB by default; this bounds memory while verifying.
const DECRYPT_BUFFER: usize = 256 * 1024;

fn to_io(e: openpgp::anyhow::Error) -> io::Error {
    io::Error::other(e.to_string())
}

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
    let session = Session::new(enc)?;
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

/// Wraps `source` so that reading yields the plaintext. Reading to the end checks the
/// integrity protection: a modified message fails there.
///
/// SEIPD v1 messages holding one literal data packet under AES (ours, and gpg's without
/// compression) are read by [`seipd`]; anything else by sequoia's general parser.
pub fn decrypt<'a, R: Read + Send + Sync + 'a>(
    source: R,
    dec: &Decryption,
) -> io::Result<Box<dyn Read + Send + Sync + 'a>> {
    let helper = match dec {
        Decryption::None => return Ok(Box::new(source)),
        Decryption::Passphrase(secret) => Helper {
            password: Some(Password::from(secret.expose())),
            certs: Vec::new(),
            key_password: None,
        },
        Decryption::Keys { certs, passphrase } => Helper {
            password: None,
            certs: certs.clone(),
            key_password: passphrase.as_ref().map(|p| Password::from(p.expose())),
        },
    };
    let pending = match seipd::open(source)? {
        seipd::Opened::Other(whole) => return decrypt_general(whole, helper),
        seipd::Opened::Seipd(p) => p,
    };
    let (algo, key) = match helper.session_key(&pending)? {
        Some(found) => found,
        None => return decrypt_general(pending.put_back(), helper),
    };
    match pending.decrypt(algo, &key)? {
        seipd::Decrypted::Literal(reader) => Ok(reader),
        seipd::Decrypted::Other(whole) => decrypt_general(whole, helper),
    }
}

/// Sequoia's decryptor, for what [`seipd`] does not read.
fn decrypt_general<'a, R: Read + Send + Sync + 'a>(
    source: R,
    helper: Helper,
) -> io::Result<Box<dyn Read + Send + Sync + 'a>> {
    let reader = DecryptorBuilder::from_reader(source)
        .map_err(to_io)?
        .buffer_size(DECRYPT_BUFFER)
        .with_policy(&POLICY, None, helper)
        .map_err(|e| io::Error::other(format!("cannot decrypt: {e}")))?;
    Ok(Box::new(reader))
}

struct Helper {
    password: Option<Password>,
    certs: Vec<Cert>,
    key_password: Option<Password>,
}

impl Helper {
    /// Finds the session key of a SEIPD v1 message with the passphrase or the keys. `None`
    /// when it is under a cipher that [`seipd`] does not read (sequoia's parser then does).
    fn session_key<R: Read>(
        &self,
        pending: &seipd::Pending<R>,
    ) -> io::Result<Option<(SymmetricAlgorithm, SessionKey)>> {
        let found = std::cell::RefCell::new(None);
        let unsupported = std::cell::Cell::new(false);
        let mut try_key = |algo: Option<SymmetricAlgorithm>, key: &SessionKey| {
            let Some(algo) = algo else { return false };
            match pending.quick_check(algo, key) {
                Some(true) => {
                    *found.borrow_mut() = Some((algo, key.clone()));
                    true
                }
                Some(false) => false,
                None => {
                    unsupported.set(true);
                    true
                }
            }
        };
        let settled = || found.borrow().is_some() || unsupported.get();
        affordable(pending.pkesks.len(), &pending.skesks).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("cannot decrypt: {e}"))
        })?;
        if let Some(password) = &self.password {
            for skesk in &pending.skesks {
                if let Ok((algo, key)) = skesk.decrypt(password)
                    && try_key(algo, &key)
                {
                    break;
                }
            }
            if !settled() && !pending.skesks.is_empty() {
                return Err(io::Error::other(format!(
                    "cannot decrypt: {}",
                    wrong_passphrase(pending.skesks.len())
                )));
            }
        }
        if !settled() {
            match self.with_keys(&pending.pkesks, None, &mut try_key) {
                Ok(_) => {}
                Err(problem) => return Err(io::Error::other(format!("cannot decrypt: {problem}"))),
            }
        }
        if unsupported.get() {
            return Ok(None);
        }
        match found.into_inner() {
            Some(found) => Ok(Some(found)),
            None => Err(io::Error::other(format!(
                "cannot decrypt: {}",
                no_key(&pending.pkesks)
            ))),
        }
    }

    /// Tries each secret key that matches a PKESK's recipient.
    fn with_keys(
        &self,
        pkesks: &[PKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> std::result::Result<bool, String> {
        let mut problem = None;
        for pkesk in pkesks {
            for cert in &self.certs {
                for ka in cert.keys().secret() {
                    let matches = pkesk
                        .recipient()
                        .is_none_or(|r| r.aliases(KeyHandle::from(ka.key().fingerprint())));
                    if !matches {
                        continue;
                    }
                    let mut key = ka.key().clone();
                    if key.secret().is_encrypted() {
                        let Some(pw) = &self.key_password else {
                            problem = Some(format!(
                                "the secret key {} is passphrase-protected: set verify.key_passphrase",
                                key.fingerprint()
                            ));
                            continue;
                        };
                        let fingerprint = key.fingerprint();
                        key = match key.decrypt_secret(pw) {
                            Ok(k) => k,
                            Err(_) => {
                                problem = Some(format!(
                                    "the passphrase does not unlock the secret key {fingerprint}"
                                ));
                                continue;
                            }
                        };
                    }
                    let Ok(mut pair) = key.into_keypair() else {
                        continue;
                    };
                    if let Some((algo, sk)) = pkesk.decrypt(&mut pair, sym_algo)
                        && decrypt(algo, &sk)
                    {
                        return Ok(true);
                    }
                }
            }
        }
        problem.map_or(Ok(false), Err)
    }
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
        pkesks: &[PKESK],
        skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        affordable(pkesks.len(), skesks).map_err(|e| openpgp::anyhow::anyhow!(e))?;
        if let Some(password) = &self.password {
            for skesk in skesks {
                if let Ok((algo, key)) = skesk.decrypt(password)
                    && decrypt(algo, &key)
                {
                    return Ok(None);
                }
            }
            if !skesks.is_empty() {
                return Err(openpgp::anyhow::anyhow!(wrong_passphrase(skesks.len())));
            }
        }
        match self.with_keys(pkesks, sym_algo, decrypt) {
            Ok(true) => return Ok(None),
            Err(problem) => return Err(openpgp::anyhow::anyhow!(problem)),
            Ok(false) => {}
        }
        Err(openpgp::anyhow::anyhow!(no_key(pkesks)))
    }
}

/// Key packets a message may carry: far more than anyone encrypts to, few enough that a
/// damaged or crafted file cannot make reading it cost a key derivation per packet without end.
pub const MAX_KEY_PACKETS: usize = 32;

/// Refuses key packets that would cost too much to try: more than [`MAX_KEY_PACKETS`], or a
/// password packet whose Argon2 key derivation asks for more than 2 GiB or 16 passes
/// (RFC 9580 recommends 2 GiB and 1 pass, or 64 MiB and 3). Iterated-and-salted derivations
/// are bounded by their encoding (at most 62 MiB hashed).
fn affordable(pkesks: usize, skesks: &[SKESK]) -> std::result::Result<(), String> {
    if pkesks + skesks.len() > MAX_KEY_PACKETS {
        return Err(format!(
            "the message has {} key packets (at most {MAX_KEY_PACKETS} are read): it is damaged or was crafted",
            pkesks + skesks.len()
        ));
    }
    for skesk in skesks {
        let s2k = match skesk {
            SKESK::V4(s) => s.s2k(),
            SKESK::V6(s) => s.s2k(),
            // A version this release does not know: sequoia refuses it when it is tried.
            _ => continue,
        };
        if let openpgp::crypto::S2K::Argon2 { t, m, .. } = s2k
            && (*m > 21 || *t > 16)
        {
            return Err(format!(
                "a password packet asks for an Argon2 derivation of 2^{m} KiB and {t} passes: it is damaged or was crafted"
            ));
        }
    }
    Ok(())
}

fn wrong_passphrase(skesks: usize) -> String {
    format!("wrong passphrase: none of the message's {skesks} password packets opens with it")
}

fn no_key(pkesks: &[PKESK]) -> String {
    let to: Vec<String> = pkesks
        .iter()
        .filter_map(|p| p.recipient().map(|r| r.to_string()))
        .collect();
    if to.is_empty() {
        "no passphrase or key given opens this message".to_owned()
    } else {
        format!(
            "no key given opens this message: it is encrypted to {}",
            to.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message (damaged or crafted) with more key packets than any of ours: refused before
    /// a key derivation is paid for each, by our reader and by sequoia's.
    #[test]
    fn too_many_key_packets_are_refused() {
        let seal = |pass: &str| {
            let mut out = Vec::new();
            let mut w = encrypt(&mut out, &Encryption::Passphrase(Secret::for_test(pass))).unwrap();
            w.write_all(b"payload").unwrap();
            w.finish().unwrap();
            out
        };
        let other = seal("another passphrase");
        // Our SKESK packets have a new-format header with a one-octet length.
        assert_eq!(other[0], 0xC3);
        let skesk = &other[..2 + other[1] as usize];
        let mut crafted = skesk.repeat(MAX_KEY_PACKETS);
        crafted.extend_from_slice(&seal("the passphrase"));
        let dec = Decryption::Passphrase(Secret::for_test("the passphrase"));
        let err = match decrypt(&crafted[..], &dec) {
            Ok(mut r) => r.read_to_end(&mut Vec::new()).unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().contains("key packets"), "{err}");
        // One fewer is a message like any other.
        let fine = [skesk.repeat(MAX_KEY_PACKETS - 1), seal("the passphrase")].concat();
        let mut back = Vec::new();
        decrypt(&fine[..], &dec)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"payload");
    }

    /// The caps apply to the key packets sequoia's general reader hands over too.
    #[test]
    fn unaffordable_key_derivations_are_refused() {
        use openpgp::crypto::S2K;
        let skesk = |m: u8, t: u8| -> SKESK {
            let s2k = S2K::Argon2 {
                salt: [0u8; 16],
                t,
                p: 1,
                m,
            };
            SKESK4::new(
                SymmetricAlgorithm::AES256,
                s2k,
                vec![0u8; 32].into_boxed_slice().into(),
            )
            .unwrap()
            .into()
        };
        assert!(affordable(0, &[skesk(21, 1), skesk(16, 3)]).is_ok());
        assert!(
            affordable(0, &[skesk(22, 1)])
                .unwrap_err()
                .contains("Argon2")
        );
        assert!(
            affordable(0, &[skesk(16, 17)])
                .unwrap_err()
                .contains("Argon2")
        );
        let many = vec![skesk(16, 1); MAX_KEY_PACKETS];
        assert!(affordable(0, &many).is_ok());
        assert!(affordable(1, &many).unwrap_err().contains("key packets"));
    }

    #[test]
    fn passphrase_round_trip_and_tamper_detection() {
        let secret = Secret::for_test("pa ss");
        let mut out = Vec::new();
        let enc = Encryption::Passphrase(secret.clone());
        let mut w = encrypt(&mut out, &enc).unwrap();
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

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn seal(data: &[u8], enc: &Encryption) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = encrypt(&mut out, enc).unwrap();
        // Odd write sizes, to cross chunk boundaries anywhere.
        for piece in data.chunks(777_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        out
    }

    /// How the plaintext goes in.
    #[derive(Clone, Copy, Debug)]
    enum Feed {
        /// `write_all` on one thread (both stages there).
        Write,
        /// `write_all`, the two stages on two threads joined by pipes, as artifacts are written
        /// (full chunks handed down the pipe, not copied).
        Piped,
        /// As `Piped`, read straight from the source into the framing's buffer (as tar member
        /// data is), with one more read after the source's end.
        PipedRead,
    }

    fn seal_fed(data: &[u8], enc: &Encryption, feed: Feed) -> Vec<u8> {
        use crate::archive::pipe;
        if let Feed::Write = feed {
            return seal(data, enc);
        }
        let session = Session::new(enc).unwrap();
        let (tx, mut rx) = pipe::pipe();
        let mut framed = session.frame(tx).unwrap();
        let data = data.to_vec();
        let producer = std::thread::spawn(move || {
            if let Feed::PipedRead = feed {
                let mut src = io::Cursor::new(data);
                let mut buf = vec![0u8; 1 << 20];
                while framed.read_from(&mut src, 777_777, &mut buf).unwrap() > 0 {}
                assert_eq!(framed.read_from(&mut src, 777_777, &mut buf).unwrap(), 0);
            } else {
                for piece in data.chunks(777_777) {
                    framed.write_all(piece).unwrap();
                }
            }
            framed.finish().unwrap().close().unwrap();
        });
        let (enc_tx, mut enc_rx) = pipe::pipe();
        let collector = std::thread::spawn(move || {
            let mut out = Vec::new();
            while let Some(chunk) = enc_rx.next_chunk() {
                out.extend_from_slice(&chunk);
                enc_rx.recycle(chunk);
            }
            out
        });
        let mut sealed = session.seal(enc_tx).unwrap();
        while let Some(chunk) = rx.next_chunk() {
            sealed.write_all(&chunk).unwrap();
            rx.recycle(chunk);
        }
        sealed.finish().unwrap();
        producer.join().unwrap();
        collector.join().unwrap()
    }

    fn open_with(cipher: &[u8], dec: &Decryption) -> io::Result<Vec<u8>> {
        let mut back = Vec::new();
        decrypt(cipher, dec)?.read_to_end(&mut back)?;
        Ok(back)
    }

    /// Sizes around the 1 MiB partial-body chunks of both the literal and the encrypted
    /// packet (the literal body carries 6 octets of header).
    const SIZES: [usize; 9] = [
        0,
        1,
        191,
        8_400,
        (1 << 20) - 6,
        1 << 20,
        (1 << 20) + 1,
        (2 << 20) - 6,
        3 << 20,
    ];

    #[test]
    fn round_trips_at_chunk_boundaries_and_sequoia_reads_what_we_write() {
        let secret = Secret::for_test("chunks");
        let enc = Encryption::Passphrase(secret.clone());
        let feeds = [Feed::Write, Feed::Piped, Feed::PipedRead];
        for (len, feed) in SIZES.into_iter().flat_map(|l| feeds.map(|f| (l, f))) {
            let data = pattern(len);
            let cipher = seal_fed(&data, &enc, feed);
            let dec = Decryption::Passphrase(secret.clone());
            assert_eq!(
                open_with(&cipher, &dec).unwrap(),
                data,
                "ours, {len} bytes, {feed:?}"
            );
            // Sequoia's general parser, which shares no code with ours.
            let helper = Helper {
                password: Some(Password::from("chunks")),
                certs: Vec::new(),
                key_password: None,
            };
            let mut back = Vec::new();
            decrypt_general(&cipher[..], helper)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "sequoia, {len} bytes, {feed:?}");
        }
    }

    #[test]
    fn reads_what_sequoia_writes() {
        use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message};
        for len in SIZES {
            let data = pattern(len);
            let mut cipher = Vec::new();
            let message = Encryptor::with_passwords(Message::new(&mut cipher), Some("sq"))
                .symmetric_algo(SymmetricAlgorithm::AES128)
                .build()
                .unwrap();
            let mut w = LiteralWriter::new(message).build().unwrap();
            w.write_all(&data).unwrap();
            w.finalize().unwrap();
            let dec = Decryption::Passphrase(Secret::for_test("sq"));
            assert_eq!(open_with(&cipher, &dec).unwrap(), data, "{len} bytes");
            assert!(
                open_with(&cipher, &Decryption::Passphrase(Secret::for_test("qs"))).is_err(),
                "a wrong passphrase must fail"
            );
        }
    }

    #[test]
    fn every_flipped_or_missing_byte_fails() {
        let secret = Secret::for_test("tamper");
        let data = pattern((2 << 20) + 12_345);
        let cipher = seal(&data, &Encryption::Passphrase(secret.clone()));
        let dec = Decryption::Passphrase(secret);
        // Flip octets in the key packet, the framing, the prefix, the data and the MDC.
        let len = cipher.len();
        for at in [
            5,
            60,
            70,
            1 << 19,
            1 << 20,
            (1 << 20) + 70,
            len - 30,
            len - 1,
        ] {
            let mut bad = cipher.clone();
            bad[at] ^= 0x10;
            assert!(
                open_with(&bad, &dec).is_err(),
                "flipped octet {at} of {len}"
            );
        }
        for cut in [len - 1, len - 22, len / 2, 100] {
            assert!(open_with(&cipher[..cut], &dec).is_err(), "cut at {cut}");
        }
        let mut longer = cipher.clone();
        longer.push(0);
        assert!(open_with(&longer, &dec).is_err(), "an octet appended");
    }

    /// A message damaged anywhere (flipped bits, cut, bytes inserted) never makes the reader
    /// panic, and never yields other data than what was written: it is an error or, at
    /// most, the original.
    mod damaged {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        fn message() -> &'static (Vec<u8>, Vec<u8>) {
            static M: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
            M.get_or_init(|| {
                let data = pattern((1 << 20) + 3000);
                let sealed = seal(&data, &Encryption::Passphrase(Secret::for_test("fuzz")));
                (data, sealed)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
            #[test]
            fn damage_is_an_error_never_a_panic_or_other_data(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..4),
                cut in proptest::option::of(any::<prop::sample::Index>()),
            ) {
                let (data, sealed) = message();
                let mut bytes = sealed.clone();
                for (at, kind, value) in edits {
                    let i = at.index(bytes.len());
                    match kind {
                        0 => bytes[i] ^= value | 1,
                        1 => bytes.insert(i, value),
                        _ => { bytes.remove(i); }
                    }
                }
                if let Some(c) = cut {
                    bytes.truncate(c.index(bytes.len()));
                }
                let dec = Decryption::Passphrase(Secret::for_test("fuzz"));
                if let Ok(back) = open_with(&bytes, &dec) {
                    prop_assert!(&back == data, "damaged message decrypted to other data");
                }
            }
        }
    }
}
