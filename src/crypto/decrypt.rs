//! Decryption: [`super::seipd`] for the messages it reads, sequoia's general parser for the
//! rest, both with a bounded number of key packets tried.

use std::io::{self, Read};

use sequoia_openpgp as openpgp;

use openpgp::crypto::{Password, SessionKey};
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Cert, KeyHandle};

use super::keys::POLICY;
use super::*;

/// Sequoia's decryptor buffers 25 MiB by default; this bounds memory while verifying.
const DECRYPT_BUFFER: usize = 256 * 1024;

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

/// Session keys already found in this process, so that many messages under the same key
/// packet (the blobs one run wrote: one session for the run) cost one key derivation or one
/// public-key decryption, not one each. An entry is found by the sha256 of what opened the
/// packet (the passphrase, or the secret key's fingerprint) and the packet itself: another
/// passphrase never finds it. Bounded; in memory only.
mod cache {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use sequoia_openpgp::crypto::SessionKey;
    use sequoia_openpgp::types::SymmetricAlgorithm;
    use sha2::{Digest, Sha256};

    const ENTRIES: usize = 64;

    type Entry = ([u8; 32], SymmetricAlgorithm, SessionKey);

    static FOUND: Mutex<VecDeque<Entry>> = Mutex::new(VecDeque::new());

    /// The cache key of `packet` opened with `credential`.
    pub fn id(credential: &[u8], packet: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((credential.len() as u64).to_be_bytes());
        h.update(credential);
        h.update(packet);
        h.finalize().into()
    }

    pub fn get(id: &[u8; 32]) -> Option<(SymmetricAlgorithm, SessionKey)> {
        let found = FOUND.lock().ok()?;
        found
            .iter()
            .find(|(k, _, _)| k == id)
            .map(|(_, a, s)| (*a, s.clone()))
    }

    pub fn put(id: [u8; 32], algo: SymmetricAlgorithm, key: &SessionKey) {
        if let Ok(mut found) = FOUND.lock() {
            if found.iter().any(|(k, _, _)| *k == id) {
                return;
            }
            if found.len() == ENTRIES {
                found.pop_front();
            }
            found.push_back((id, algo, key.clone()));
        }
    }
}

/// The serialized form of a key packet, for [`cache::id`].
fn packet_bytes(p: &impl openpgp::serialize::MarshalInto) -> Vec<u8> {
    p.to_vec().unwrap_or_default()
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
                let id = password.map(|pw| cache::id(&pw[..], &packet_bytes(skesk)));
                if let Some((algo, key)) = cache::get(&id)
                    && try_key(Some(algo), &key)
                {
                    break;
                }
                if let Ok((algo, key)) = skesk.decrypt(password)
                    && try_key(algo, &key)
                {
                    if let (Some(algo), Some((_, found))) = (algo, &*found.borrow()) {
                        cache::put(id, algo, found);
                    }
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
                    let id = cache::id(ka.key().fingerprint().as_bytes(), &packet_bytes(pkesk));
                    if let Some((algo, sk)) = cache::get(&id)
                        && decrypt(Some(algo), &sk)
                    {
                        return Ok(true);
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
                        if let Some(algo) = algo.or(sym_algo) {
                            cache::put(id, algo, &sk);
                        }
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
pub(super) fn affordable(pkesks: usize, skesks: &[SKESK]) -> std::result::Result<(), String> {
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
    use crate::crypto::encrypt::*;
    use openpgp::packet::prelude::SKESK4;
    use openpgp::types::SymmetricAlgorithm;
    use std::io::Write;

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

    #[test]
    fn messages_of_one_session_share_one_key_derivation_and_a_wrong_passphrase_still_fails() {
        let secret = Secret::for_test("one run's passphrase");
        let enc = Encryption::Passphrase(secret.clone());
        let session = super::super::Session::new(&enc).unwrap();
        let sealed: Vec<Vec<u8>> = [b"first blob".as_slice(), b"second blob"]
            .iter()
            .map(|data| {
                let mut out = Vec::new();
                let mut w = super::super::encrypt_in(&mut out, &session).unwrap();
                w.write_all(data).unwrap();
                w.finish().unwrap();
                out
            })
            .collect();
        // The same key packet, different ciphertexts (each message its own random prefix).
        let skesk = |m: &[u8]| match seipd::open(m).unwrap() {
            seipd::Opened::Seipd(p) => p.skesks[0].clone(),
            seipd::Opened::Other(_) => panic!("not ours"),
        };
        assert_eq!(skesk(&sealed[0]), skesk(&sealed[1]));
        assert_ne!(sealed[0], sealed[1]);
        let id = |pw: &str| cache::id(pw.as_bytes(), &packet_bytes(&skesk(&sealed[0])));
        assert!(cache::get(&id("one run's passphrase")).is_none());
        let dec = Decryption::Passphrase(secret);
        let read = |m: &[u8], dec: &Decryption| -> io::Result<Vec<u8>> {
            let mut back = Vec::new();
            decrypt(m, dec)?.read_to_end(&mut back)?;
            Ok(back)
        };
        assert_eq!(read(&sealed[0], &dec).unwrap(), b"first blob");
        // Found once, remembered for the next message of the session.
        assert!(cache::get(&id("one run's passphrase")).is_some());
        assert_eq!(read(&sealed[1], &dec).unwrap(), b"second blob");
        assert!(cache::get(&id("another")).is_none());
        let wrong = Decryption::Passphrase(Secret::for_test("another"));
        assert!(read(&sealed[1], &wrong).is_err());
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
        /// One pass on one thread, read straight from the source, with the SHA-256 of the
        /// data (as blobs are stored).
        OnePass,
    }

    fn seal_fed(data: &[u8], enc: &Encryption, feed: Feed) -> Vec<u8> {
        use crate::archive::pipe;
        if let Feed::Write = feed {
            return seal(data, enc);
        }
        if let Feed::OnePass = feed {
            use sha2::Digest;
            let mut out = Vec::new();
            let mut m = Session::new(enc)
                .unwrap()
                .digesting(crate::archive::pipe::Copying(&mut out))
                .unwrap();
            // Short reads of odd sizes, as a network source gives them.
            let mut src = Dribble(io::Cursor::new(data));
            let mut buf = vec![0u8; 1 << 20];
            while m.read_from(&mut src, 777_777, &mut buf).unwrap() > 0 {}
            let (_, sha, n) = m.finish().unwrap();
            assert_eq!(n, data.len() as u64);
            assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(data)));
            return out;
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

    /// Reads at most 4,099 octets at a time.
    struct Dribble<R>(R);

    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(4_099);
            self.0.read(&mut buf[..n])
        }
    }

    fn open_with(cipher: &[u8], dec: &Decryption) -> io::Result<Vec<u8>> {
        let mut back = Vec::new();
        decrypt(cipher, dec)?.read_to_end(&mut back)?;
        Ok(back)
    }

    /// Sizes around the 1 MiB partial-body chunks of both the literal and the encrypted
    /// packet (the literal body carries 6 octets of header).
    const SIZES: [usize; 11] = [
        0,
        1,
        191,
        8_400,
        (1 << 20) - 7,
        (1 << 20) - 6,
        (1 << 20) - 5,
        1 << 20,
        (1 << 20) + 1,
        (2 << 20) - 6,
        3 << 20,
    ];

    #[test]
    fn round_trips_at_chunk_boundaries_and_sequoia_reads_what_we_write() {
        let secret = Secret::for_test("chunks");
        let enc = Encryption::Passphrase(secret.clone());
        let feeds = [Feed::Write, Feed::Piped, Feed::PipedRead, Feed::OnePass];
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
