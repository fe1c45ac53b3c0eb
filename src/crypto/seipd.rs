//! The encrypted container of our artifacts, SEIPD v1 (RFC 4880 §5.13; what gpg 2.2 reads),
//! framed here, with the key packets (SKESK v4, PKESK v3) built and opened by sequoia.
//!
//! Why not sequoia's stream writer and reader for the bulk: SEIPD v1 protects integrity with
//! the MDC, a SHA-1 over the plaintext, and sequoia computes every SHA-1 with collision
//! detection, about five times slower than the CPU's SHA instructions: it was half of the CPU
//! time of a backup. Collision detection guards signatures against forged collisions; the MDC
//! is not a signature (it is encrypted with the data, under a key the attacker does not hold),
//! which is why gpg computes it with plain SHA-1 too. Here the MDC uses the `sha1` crate (SHA-NI
//! where present) and AES comes from the `aes` crate (AES-NI where present); decryption
//! runs eight blocks at a time, which CFB allows when decrypting.
//!
//! Layout written (all lengths new-format; `P` = partial body of 2^20 octets):
//!
//! ```text
//! SKESK/PKESK…  SEIPD{ P 1 | CFB( prefix(16+2) Literal{ P 'b' 0 date(0) data… } MDC(0xD3 0x14 sha1) ) }
//! ```
//!
//! Writing is two stages, which may run on two threads: [`Framer`] (the plaintext side: the
//! literal packet's framing and the MDC) and [`Sealer`] (the cipher side: key packets,
//! AES-CFB, the encrypted packet's framing).
//!
//! The reader takes any SEIPD v1 message whose payload is a single literal data packet
//! (ours, `gpg --symmetric --compress-algo none`, `gpg -e` without compression) with AES; it
//! returns [`Opened::Other`] for anything else (compressed or signed payloads, SEIPD v2, other
//! ciphers), with the bytes it consumed put back, for sequoia's general parser.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::archive::pipe::ChunkSink;
use aes::cipher::consts::U16;
use aes::cipher::{BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, KeyInit};
use sequoia_openpgp as openpgp;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use openpgp::crypto::SessionKey;
use openpgp::types::SymmetricAlgorithm;

/// Octets of a partial body chunk (2^CHUNK_POW).
const CHUNK_POW: u8 = 20;
const CHUNK: usize = 1 << CHUNK_POW;
const BLOCK: usize = 16;
/// The MDC packet: tag 19, length 20, SHA-1.
const MDC_HEADER: [u8; 2] = [0xD3, 0x14];
const MDC_LEN: usize = 22;

const TAG_PKESK: u8 = 1;
const TAG_SKESK: u8 = 3;
const TAG_LITERAL: u8 = 11;
const TAG_MARKER: u8 = 10;
const TAG_SEIPD: u8 = 18;

/// AES with the key size the message names.
enum Aes {
    A128(Box<aes::Aes128>),
    A192(Box<aes::Aes192>),
    A256(Box<aes::Aes256>),
}

impl Aes {
    fn new(algo: SymmetricAlgorithm, key: &[u8]) -> Option<Aes> {
        Some(match algo {
            SymmetricAlgorithm::AES128 => {
                Aes::A128(Box::new(aes::Aes128::new_from_slice(key).ok()?))
            }
            SymmetricAlgorithm::AES192 => {
                Aes::A192(Box::new(aes::Aes192::new_from_slice(key).ok()?))
            }
            SymmetricAlgorithm::AES256 => {
                Aes::A256(Box::new(aes::Aes256::new_from_slice(key).ok()?))
            }
            _ => return None,
        })
    }
}

/// Applies `f` to the cipher, monomorphised per key size.
macro_rules! with_aes {
    ($aes:expr, $c:ident => $body:expr) => {
        match $aes {
            Aes::A128($c) => $body,
            Aes::A192($c) => $body,
            Aes::A256($c) => $body,
        }
    };
}

/// `a ^ b` for 16-byte blocks.
fn xor16(a: &[u8], b: &[u8]) -> [u8; 16] {
    let a = u128::from_ne_bytes(a.try_into().expect("a block"));
    let b = u128::from_ne_bytes(b.try_into().expect("a block"));
    (a ^ b).to_ne_bytes()
}

/// OpenPGP CFB (zero IV, no resynchronisation), encrypting: inherently one block after the
/// other.
struct CfbEncrypt {
    aes: Aes,
    /// The last ciphertext block; from `pos` on, the keystream of the block in progress.
    iv: aes::Block,
    pos: usize,
}

impl CfbEncrypt {
    fn new(aes: Aes) -> Self {
        CfbEncrypt {
            aes,
            iv: Default::default(),
            pos: 0,
        }
    }

    /// Encrypts `input` into `out` (of the same length).
    fn encrypt(&mut self, input: &[u8], out: &mut [u8]) {
        with_aes!(&self.aes, c => cfb_encrypt(c.as_ref(), &mut self.iv, &mut self.pos, input, out))
    }
}

fn cfb_encrypt<C: BlockEncrypt + BlockSizeUser<BlockSize = U16>>(
    c: &C,
    iv: &mut aes::Block,
    pos: &mut usize,
    mut input: &[u8],
    mut out: &mut [u8],
) {
    debug_assert_eq!(input.len(), out.len());
    if *pos > 0 {
        let n = (BLOCK - *pos).min(input.len());
        for ((o, i), k) in out[..n].iter_mut().zip(&input[..n]).zip(&mut iv[*pos..]) {
            *k ^= *i;
            *o = *k;
        }
        *pos = (*pos + n) % BLOCK;
        (input, out) = (&input[n..], &mut out[n..]);
    }
    let full = input.len() / BLOCK * BLOCK;
    // All whole blocks inside one call of the cipher's backend (AES-NI when present): the
    // backend is chosen once, not per block.
    c.encrypt_with_backend(CfbBlocks {
        iv: &mut *iv,
        input: &input[..full],
        out: &mut out[..full],
    });
    let (input, out) = (&input[full..], &mut out[full..]);
    if !input.is_empty() {
        c.encrypt_block(iv);
        for ((o, i), k) in out.iter_mut().zip(input).zip(iv.iter_mut()) {
            *k ^= *i;
            *o = *k;
        }
        *pos = input.len();
    }
}

/// CFB encryption of whole blocks, run by the cipher's backend.
struct CfbBlocks<'a> {
    iv: &'a mut aes::Block,
    input: &'a [u8],
    out: &'a mut [u8],
}

impl BlockSizeUser for CfbBlocks<'_> {
    type BlockSize = U16;
}

impl BlockClosure for CfbBlocks<'_> {
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        for (i, o) in self
            .input
            .chunks_exact(BLOCK)
            .zip(self.out.chunks_exact_mut(BLOCK))
        {
            backend.proc_block_inplace(self.iv);
            // One 128-bit XOR (byte-wise, the stores stall the next block's load).
            let c = xor16(self.iv, i);
            o.copy_from_slice(&c);
            *self.iv = c.into();
        }
    }
}

/// OpenPGP CFB, decrypting: the keystream of every block depends on ciphertext only, so the
/// cipher runs on many blocks at once.
struct CfbDecrypt {
    aes: Aes,
    iv: aes::Block,
    pos: usize,
    scratch: Vec<aes::Block>,
}

impl CfbDecrypt {
    fn new(aes: Aes) -> Self {
        CfbDecrypt {
            aes,
            iv: Default::default(),
            pos: 0,
            scratch: Vec::new(),
        }
    }

    fn apply(&mut self, mut data: &mut [u8]) {
        if self.pos > 0 {
            let n = (BLOCK - self.pos).min(data.len());
            let (head, rest) = data.split_at_mut(n);
            for (d, k) in head.iter_mut().zip(&mut self.iv[self.pos..]) {
                let c = *d;
                *d ^= *k;
                *k = c;
            }
            self.pos = (self.pos + n) % BLOCK;
            data = rest;
        }
        const BATCH: usize = 256;
        let full = data.len() / BLOCK * BLOCK;
        let (blocks, tail) = data.split_at_mut(full);
        for run in blocks.chunks_mut(BATCH * BLOCK) {
            let n = run.len() / BLOCK;
            self.scratch.clear();
            self.scratch.push(self.iv);
            for c in run.chunks_exact(BLOCK).take(n - 1) {
                self.scratch.push(*aes::Block::from_slice(c));
            }
            self.iv.copy_from_slice(&run[run.len() - BLOCK..]);
            with_aes!(&self.aes, c => c.encrypt_blocks(&mut self.scratch));
            for (d, k) in run.chunks_exact_mut(BLOCK).zip(&self.scratch) {
                let p = xor16(d, k);
                d.copy_from_slice(&p);
            }
        }
        if !tail.is_empty() {
            with_aes!(&self.aes, c => c.encrypt_block(&mut self.iv));
            for (d, k) in tail.iter_mut().zip(self.iv.iter_mut()) {
                let c = *d;
                *d ^= *k;
                *k = c;
            }
            self.pos = tail.len();
        }
    }
}

/// A new-format definite body length.
fn definite_len(len: usize, out: &mut Vec<u8>) {
    if len < 192 {
        out.push(len as u8);
    } else if len < 8384 {
        let l = len - 192;
        out.extend_from_slice(&[((l >> 8) + 192) as u8, (l & 0xFF) as u8]);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

const PARTIAL: u8 = 0xE0 | CHUNK_POW;

/// A packet body sent to a [`ChunkSink`] in partial-length chunks of 2^20 octets. The body
/// collects in a chunk buffer whose first octet is the partial length header; a full chunk goes
/// to the sink whole (a pipe takes it without a copy), and only once more data is in hand: the
/// last chunk of a packet must have a definite length.
struct PartialBody {
    /// The length octet, then `len` octets of body held back (at most one chunk).
    cur: Vec<u8>,
    len: usize,
    /// A second chunk buffer, filled while `cur` is full.
    next: Vec<u8>,
}

impl PartialBody {
    /// A body that starts with `start`.
    fn new(start: &[u8]) -> Self {
        // Grown as the body comes (`room`): a message of a few kilobytes (a small blob) does
        // not allocate and zero a whole chunk.
        let mut cur = vec![0u8; 1 + start.len()];
        cur[1..].copy_from_slice(start);
        PartialBody {
            cur,
            len: start.len(),
            next: Vec::new(),
        }
    }

    /// Where at most `max` octets of body go next: after the body in hand, or at the start of
    /// the second buffer when the chunk in hand is full.
    fn room(&mut self, max: usize) -> &mut [u8] {
        if self.len < CHUNK {
            let n = (CHUNK - self.len).min(max);
            let need = 1 + self.len + n;
            if self.cur.len() < need {
                let doubled = (self.cur.len() * 2).min(1 + CHUNK);
                self.cur.resize(need.max(doubled), 0);
            }
            return &mut self.cur[1 + self.len..need];
        }
        if self.next.len() < 1 + CHUNK {
            self.next.resize(1 + CHUNK, 0);
        }
        &mut self.next[1..1 + CHUNK.min(max)]
    }

    /// Counts `n` octets put into [`PartialBody::room`]. When they went into the second
    /// buffer, the full chunk in hand goes to `sink` first, as partial, after `sent` has seen
    /// it (length octet included).
    fn commit(
        &mut self,
        n: usize,
        sink: &mut impl ChunkSink,
        sent: impl FnOnce(&[u8]),
    ) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if self.len < CHUNK {
            self.len += n;
            return Ok(());
        }
        let mut full = std::mem::replace(&mut self.cur, std::mem::take(&mut self.next));
        full[0] = PARTIAL;
        sent(&full[..1 + CHUNK]);
        self.next = sink.put_chunk(full)?;
        self.len = n;
        Ok(())
    }

    /// The last chunk: its definite length header, and the body in hand.
    fn last(&self) -> (Vec<u8>, &[u8]) {
        let mut header = Vec::with_capacity(5);
        definite_len(self.len, &mut header);
        (header, &self.cur[1..1 + self.len])
    }
}

/// The plaintext side of a SEIPD v1 message: frames what is written to it as a literal data
/// packet behind the random prefix, hashes it all for the MDC and, at `finish`, appends the
/// MDC packet. Its output goes to a [`Sealer`] (on this thread or another).
/// [`Framer::read_from`] reads a source straight into the literal body's chunk buffer.
pub struct Framer<W: ChunkSink> {
    sink: W,
    mdc: Sha1,
    body: PartialBody,
}

impl<W: ChunkSink> Framer<W> {
    pub fn new(mut sink: W) -> io::Result<Self> {
        let mut mdc = Sha1::new();
        let mut prefix = [0u8; BLOCK + 2];
        openpgp::crypto::random(&mut prefix[..BLOCK])
            .map_err(|e| io::Error::other(e.to_string()))?;
        prefix.copy_within(BLOCK - 2..BLOCK, BLOCK);
        for bytes in [&prefix[..], &[0xC0 | TAG_LITERAL]] {
            mdc.update(bytes);
            sink.write_all(bytes)?;
        }
        Ok(Framer {
            sink,
            mdc,
            // Literal body: binary, no file name, no date.
            body: PartialBody::new(&[b'b', 0, 0, 0, 0, 0]),
        })
    }

    /// Reads at most `max` octets of literal data from `from` straight into the chunk buffer
    /// (no copy in between); returns how many (0 at the end of `from`).
    pub fn read_from(&mut self, from: &mut dyn Read, max: usize) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let k = from.read(self.body.room(max))?;
        let mdc = &mut self.mdc;
        self.body.commit(k, &mut self.sink, |c| mdc.update(c))?;
        Ok(k)
    }

    /// Ends the literal packet and appends the MDC; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let (header, tail) = self.body.last();
        for bytes in [&header[..], tail] {
            self.mdc.update(bytes);
            self.sink.write_all(bytes)?;
        }
        self.mdc.update(MDC_HEADER);
        let digest = self.mdc.finalize();
        self.sink.write_all(&MDC_HEADER)?;
        self.sink.write_all(&digest)?;
        Ok(self.sink)
    }
}

impl<W: ChunkSink> Write for Framer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.body.room(buf.len());
        let n = room.len();
        room.copy_from_slice(&buf[..n]);
        let mdc = &mut self.mdc;
        self.body.commit(n, &mut self.sink, |c| mdc.update(c))?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The cipher side of a SEIPD v1 message: writes the key packets `esk`, then the encrypted
/// packet around what a [`Framer`] produced, each chunk encrypted straight into the buffer
/// that goes to the sink.
pub struct Sealer<W: ChunkSink> {
    sink: W,
    cfb: CfbEncrypt,
    /// The version octet, then ciphertext.
    body: PartialBody,
    /// Octets encrypted so far by [`Sealer::write_hashing`] (a message is written either by
    /// `write_hashing` or by `write`).
    plain: usize,
}

impl<W: ChunkSink> Sealer<W> {
    pub fn new(
        mut sink: W,
        esk: &[u8],
        algo: SymmetricAlgorithm,
        key: &SessionKey,
    ) -> io::Result<Self> {
        let aes = Aes::new(algo, key)
            .ok_or_else(|| io::Error::other(format!("{algo} is not supported for writing")))?;
        sink.write_all(esk)?;
        sink.write_all(&[0xC0 | TAG_SEIPD])?;
        Ok(Sealer {
            sink,
            cfb: CfbEncrypt::new(aes),
            body: PartialBody::new(&[1]),
            plain: 0,
        })
    }

    /// Writes the last chunk; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let (header, tail) = self.body.last();
        self.sink.write_all(&header)?;
        self.sink.write_all(tail)?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

impl<W: ChunkSink> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.body.room(buf.len());
        let n = room.len();
        self.cfb.encrypt(&buf[..n], room);
        self.body.commit(n, &mut self.sink, |_| ())?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Octets per step of [`Sealer::write_hashing`]: one block of SHA-1 and SHA-256, four of AES.
const STEP: usize = 64;

impl<W: ChunkSink> Sealer<W> {
    /// As `write`, and `hash` is given each step of 64 octets of `buf` (its range in `buf`)
    /// just before the step is encrypted. Each of the SHA-1, the SHA-256 and CFB is a chain of
    /// dependent instructions that leaves most of the core idle: run one after the other over
    /// a chunk they cost their sum; interleaved this finely, the core runs them side by side.
    fn write_hashing(
        &mut self,
        buf: &[u8],
        mut hash: impl FnMut(Range<usize>),
    ) -> io::Result<usize> {
        let room = self.body.room(buf.len());
        let n = room.len();
        let mut at = 0;
        while at < n {
            // Steps end where the plaintext's 64-octet blocks do: whole cipher blocks, and
            // whole blocks of the MDC's SHA-1, which covers the plaintext from its start.
            let end = (at + STEP - self.plain % STEP).min(n);
            hash(at..end);
            self.cfb.encrypt(&buf[at..end], &mut room[at..end]);
            self.plain += end - at;
            at = end;
        }
        self.body.commit(n, &mut self.sink, |_| ())?;
        Ok(n)
    }
}

/// The SHA-1 of the MDC and the SHA-256 of the literal data, fed by [`Sealer::write_hashing`].
struct Hashes {
    mdc: Sha1,
    data: Sha256,
    count: u64,
}

impl Hashes {
    /// Encrypts all of `plain`, hashing it for the MDC, and from `data_from` on as data too.
    fn seal<W: ChunkSink>(
        &mut self,
        sealer: &mut Sealer<W>,
        mut plain: &[u8],
        mut data_from: usize,
    ) -> io::Result<()> {
        self.count += plain.len().saturating_sub(data_from) as u64;
        while !plain.is_empty() {
            let n = sealer.write_hashing(plain, |r| {
                self.mdc.update(&plain[r.clone()]);
                let d = r.start.max(data_from).min(r.end)..r.end;
                self.data.update(&plain[d]);
            })?;
            plain = &plain[n..];
            data_from = data_from.saturating_sub(n);
        }
        Ok(())
    }
}

/// Where [`OnePass`]'s literal body goes, chunk by chunk: hashed and encrypted in one pass.
struct Sealing<'a, W: ChunkSink> {
    sealer: &'a mut Sealer<W>,
    hashes: &'a mut Hashes,
    /// Octets at the start of the next chunk that are not data: its length octet, and before
    /// the first chunk the literal packet's own header.
    framing: usize,
}

impl<W: ChunkSink> Write for Sealing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hashes.seal(self.sealer, buf, buf.len())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: ChunkSink> ChunkSink for Sealing<'_, W> {
    fn put_chunk(&mut self, chunk: Vec<u8>) -> io::Result<Vec<u8>> {
        self.hashes.seal(self.sealer, &chunk, self.framing)?;
        Ok(chunk)
    }
}

/// A whole message written on one thread, in one pass over its octets: the literal packet's
/// framing, the MDC's SHA-1, the SHA-256 of the literal data (a blob's digest, checked as it
/// is stored) and AES-CFB, the three interleaved 64 octets at a time (see
/// [`Sealer::write_hashing`]). The same octets as a [`Framer`] feeding a [`Sealer`] on one
/// thread, for about two thirds of their CPU (256 MiB on this machine's cores: 0.45-0.48 s
/// against 0.63-0.73 s one after the other).
pub struct OnePass<W: ChunkSink> {
    sealer: Sealer<W>,
    hashes: Hashes,
    /// The literal packet's body, held back until more comes (its last chunk has a definite
    /// length); its first chunk starts with the literal header.
    body: PartialBody,
    /// No chunk of the body has gone yet: the literal header is still in hand.
    first: bool,
}

/// The literal packet's header in its body: binary, no file name, no date.
const LITERAL_HEAD: [u8; 6] = [b'b', 0, 0, 0, 0, 0];

impl<W: ChunkSink> OnePass<W> {
    pub fn new(
        sink: W,
        esk: &[u8],
        algo: SymmetricAlgorithm,
        key: &SessionKey,
    ) -> io::Result<Self> {
        let mut sealer = Sealer::new(sink, esk, algo, key)?;
        let mut hashes = Hashes {
            mdc: Sha1::new(),
            data: Sha256::new(),
            count: 0,
        };
        let mut head = [0u8; BLOCK + 3];
        openpgp::crypto::random(&mut head[..BLOCK]).map_err(|e| io::Error::other(e.to_string()))?;
        head.copy_within(BLOCK - 2..BLOCK, BLOCK);
        head[BLOCK + 2] = 0xC0 | TAG_LITERAL;
        hashes.seal(&mut sealer, &head, head.len())?;
        Ok(OnePass {
            sealer,
            hashes,
            body: PartialBody::new(&LITERAL_HEAD),
            first: true,
        })
    }

    fn commit(&mut self, n: usize) -> io::Result<()> {
        let framing = if self.first {
            1 + LITERAL_HEAD.len()
        } else {
            1
        };
        let mut sink = Sealing {
            sealer: &mut self.sealer,
            hashes: &mut self.hashes,
            framing,
        };
        // A full chunk in hand goes once more comes.
        let goes = self.body.len == CHUNK && n > 0;
        self.body.commit(n, &mut sink, |_| ())?;
        self.first &= !goes;
        Ok(())
    }

    /// Reads at most `max` octets of literal data from `from` straight into the chunk buffer;
    /// returns how many (0 at the end of `from`).
    pub fn read_from(&mut self, from: &mut dyn Read, max: usize) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let k = from.read(self.body.room(max))?;
        self.commit(k)?;
        Ok(k)
    }

    /// Ends the message; returns the sink, and the SHA-256 and length of the literal data.
    pub fn finish(mut self) -> io::Result<(W, [u8; 32], u64)> {
        let (header, tail) = self.body.last();
        let literal = if self.first { LITERAL_HEAD.len() } else { 0 };
        self.hashes.seal(&mut self.sealer, &header, header.len())?;
        self.hashes.seal(&mut self.sealer, tail, literal)?;
        self.hashes
            .seal(&mut self.sealer, &MDC_HEADER, MDC_HEADER.len())?;
        let Hashes { mdc, data, count } = self.hashes;
        self.sealer.write_all(&mdc.finalize())?;
        let sink = self.sealer.finish()?;
        Ok((sink, data.finalize().into(), count))
    }
}

impl<W: ChunkSink> Write for OnePass<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.body.room(buf.len());
        let n = room.len();
        room.copy_from_slice(&buf[..n]);
        self.commit(n)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A packet length as read from a header.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Len {
    Definite(u64),
    Partial(u64),
    /// Old format, to the end of the enclosing data.
    Indeterminate,
}

/// Reads a packet header through `byte`; returns the tag and the length.
fn header(first: u8, mut byte: impl FnMut() -> io::Result<u8>) -> io::Result<(u8, Len)> {
    if first & 0x80 == 0 {
        return Err(bad("not an OpenPGP packet header"));
    }
    if first & 0x40 != 0 {
        return Ok((first & 0x3F, new_len(byte()?, byte)?));
    }
    let tag = (first >> 2) & 0x0F;
    let len = match first & 3 {
        0 => Len::Definite(byte()?.into()),
        1 => Len::Definite(u64::from(u16::from_be_bytes([byte()?, byte()?]))),
        2 => Len::Definite(u64::from(u32::from_be_bytes([
            byte()?,
            byte()?,
            byte()?,
            byte()?,
        ]))),
        _ => Len::Indeterminate,
    };
    Ok((tag, len))
}

fn new_len(o1: u8, mut byte: impl FnMut() -> io::Result<u8>) -> io::Result<Len> {
    Ok(match o1 {
        0..=191 => Len::Definite(o1.into()),
        192..=223 => Len::Definite((u64::from(o1 - 192) << 8) + u64::from(byte()?) + 192),
        255 => Len::Definite(u64::from(u32::from_be_bytes([
            byte()?,
            byte()?,
            byte()?,
            byte()?,
        ]))),
        _ => Len::Partial(1 << (o1 & 0x1F)),
    })
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed OpenPGP message: {what}"),
    )
}

fn read_byte(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

/// Keeps a copy of what is read until told to stop, so that the bytes can be put back.
struct Recorder<R> {
    src: R,
    log: Option<Vec<u8>>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        if let Some(log) = &mut self.log {
            log.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// The body of a packet with partial or definite lengths, as one stream.
struct Body<R> {
    src: R,
    left: u64,
    last: bool,
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            if self.last {
                return Ok(0);
            }
            let o1 = read_byte(&mut self.src)?;
            match new_len(o1, || read_byte(&mut self.src))? {
                Len::Partial(n) => self.left = n,
                Len::Definite(n) => (self.left, self.last) = (n, true),
                Len::Indeterminate => unreachable!("new-format lengths are never indeterminate"),
            }
        }
        let want = buf.len().min(self.left.try_into().unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the encrypted data ends early: the file is truncated",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// What [`open`] found.
pub enum Opened<R> {
    /// A SEIPD v1 message whose key packets are `skesks` and `pkesks` (serialized).
    Seipd(Pending<R>),
    /// Something else: the original stream, whole again.
    Other(io::Chain<io::Cursor<Vec<u8>>, R>),
}

/// A SEIPD v1 message whose session key is yet to be found.
pub struct Pending<R> {
    pub skesks: Vec<openpgp::packet::SKESK>,
    pub pkesks: Vec<openpgp::packet::PKESK>,
    body: Body<Recorder<R>>,
    /// The first ciphertext block and two more octets, for the quick check.
    head: [u8; BLOCK + 2],
}

/// Reads the key packets and the start of the encrypted packet.
pub fn open<R: Read>(src: R) -> io::Result<Opened<R>> {
    let mut rec = Recorder {
        src,
        log: Some(Vec::new()),
    };
    let mut skesks = Vec::new();
    let mut pkesks = Vec::new();
    let mut packets = 0usize;
    loop {
        let mut first = [0u8];
        if rec.read(&mut first)? == 0 {
            return Err(bad("no encrypted data packet"));
        }
        let (tag, len) = header(first[0], || read_byte(&mut rec))?;
        match (tag, len) {
            (TAG_PKESK | TAG_SKESK | TAG_MARKER, Len::Definite(n)) if n <= 1 << 16 => {
                packets += 1;
                if packets > super::MAX_KEY_PACKETS {
                    return Err(bad("more key packets than any message of ours has"));
                }
                let mut body = vec![0u8; n as usize];
                rec.read_exact(&mut body)?;
                if tag == TAG_MARKER {
                    continue;
                }
                // Let sequoia parse the key packet from a clean new-format header.
                let mut packet = vec![0xC0 | tag];
                definite_len(body.len(), &mut packet);
                packet.extend_from_slice(&body);
                use openpgp::parse::Parse;
                match openpgp::Packet::from_bytes(&packet) {
                    Ok(openpgp::Packet::SKESK(s)) => skesks.push(s),
                    Ok(openpgp::Packet::PKESK(p)) => pkesks.push(p),
                    _ => return Ok(Opened::Other(put_back(rec))),
                }
            }
            (TAG_SEIPD, Len::Partial(n) | Len::Definite(n)) => {
                let mut body = Body {
                    src: rec,
                    left: n,
                    last: matches!(len, Len::Definite(_)),
                };
                let version = read_byte(&mut body)?;
                if version != 1 {
                    return Ok(Opened::Other(put_back(body.src)));
                }
                let mut head = [0u8; BLOCK + 2];
                body.read_exact(&mut head)?;
                return Ok(Opened::Seipd(Pending {
                    skesks,
                    pkesks,
                    body,
                    head,
                }));
            }
            _ => return Ok(Opened::Other(put_back(rec))),
        }
    }
}

/// The stream as it was before anything was read.
fn put_back<R: Read>(rec: Recorder<R>) -> io::Chain<io::Cursor<Vec<u8>>, R> {
    io::Cursor::new(rec.log.unwrap_or_default()).chain(rec.src)
}

impl<R: Read> Pending<R> {
    /// Whether `key` opens the message (the quick check of RFC 4880 §5.13); `None` for a
    /// cipher this reader does not handle.
    pub fn quick_check(&self, algo: SymmetricAlgorithm, key: &SessionKey) -> Option<bool> {
        let aes = Aes::new(algo, key)?;
        let mut head = self.head;
        CfbDecrypt::new(aes).apply(&mut head);
        Some(head[BLOCK - 2..BLOCK] == head[BLOCK..])
    }

    /// The stream as it was before anything was read.
    pub fn put_back(self) -> io::Chain<io::Cursor<Vec<u8>>, R> {
        put_back(self.body.src)
    }

    /// Decrypts with `key` (which passed the quick check). A payload other than one literal
    /// data packet gives the original stream back.
    pub fn decrypt(self, algo: SymmetricAlgorithm, key: &SessionKey) -> io::Result<Decrypted<R>> {
        let aes = Aes::new(algo, key).ok_or_else(|| bad("unsupported cipher"))?;
        let mut cfb = CfbDecrypt::new(aes);
        let mut head = self.head;
        cfb.apply(&mut head);
        let mut mdc = Sha1::new();
        mdc.update(head);
        let mut r = Reader {
            body: self.body,
            cfb,
            mdc: MdcHasher::new(mdc)?,
            buf: Arc::new(Vec::new()),
            used: VecDeque::new(),
            start: 0,
            end: 0,
            hashed: 0,
            eof: false,
            left: Len::Definite(0),
            last: true,
            done: false,
        };
        let first = r.inner(1)?[0];
        let (tag, len) = header(first, || Ok(r.inner(1)?[0]))?;
        if tag != TAG_LITERAL {
            return Ok(Decrypted::Other(put_back(r.body.src)));
        }
        r.body.src.log = None;
        r.start_chunk(len);
        // The literal body's own header: format, file name, date.
        let _format = r.literal(1)?[0];
        let name_len = r.literal(1)?[0] as usize;
        r.literal(name_len + 4)?;
        Ok(Decrypted::Literal(Box::new(r)))
    }
}

/// What [`Pending::decrypt`] found inside.
pub enum Decrypted<R> {
    /// The literal data, read through [`Reader`].
    Literal(Box<Reader<R>>),
    /// Another payload: the original stream, whole again.
    Other(io::Chain<io::Cursor<Vec<u8>>, R>),
}

/// Octets decrypted at a time.
const FILL: usize = 256 * 1024;
/// Decrypted buffers queued for the MDC hasher at most.
const HASH_QUEUE: usize = 4;

/// Decrypted octets for the hasher: a buffer and the part of it to hash.
type ToHash = (Arc<Vec<u8>>, Range<usize>);

/// The SHA-1 of the MDC, computed on a thread of its own: it costs as much CPU as decryption
/// and the archive walk together, which run meanwhile on the reading thread.
struct MdcHasher {
    tx: Option<SyncSender<ToHash>>,
    done: Option<JoinHandle<Sha1>>,
}

impl MdcHasher {
    /// Starts from `state` (what was hashed so far).
    fn new(state: Sha1) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<ToHash>(HASH_QUEUE);
        let done = std::thread::Builder::new()
            .name("mdc".into())
            .spawn(move || {
                let mut h = state;
                for (buf, range) in rx {
                    h.update(&buf[range]);
                }
                h
            })?;
        Ok(MdcHasher {
            tx: Some(tx),
            done: Some(done),
        })
    }

    /// Hashes `buf[range]` next.
    fn hash(&self, buf: &Arc<Vec<u8>>, range: Range<usize>) -> io::Result<()> {
        let stopped = || io::Error::other("the MDC hashing thread stopped");
        match &self.tx {
            Some(tx) if !range.is_empty() => tx.send((buf.clone(), range)).map_err(|_| stopped()),
            Some(_) => Ok(()),
            None => Err(stopped()),
        }
    }

    /// The hash of everything passed to [`MdcHasher::hash`].
    fn finish(&mut self) -> io::Result<Sha1> {
        self.tx = None;
        self.done
            .take()
            .ok_or_else(|| io::Error::other("the MDC was already checked"))?
            .join()
            .map_err(|_| io::Error::other("the MDC hashing thread panicked"))
    }
}

/// Reads the literal data of a SEIPD v1 message; at its end, checks the MDC.
///
/// Decrypted data is hashed for the MDC as soon as it is known not to be the MDC packet itself
/// (all but the last 22 octets decrypted so far), in the order decrypted, on the hashing
/// thread; consuming it (packet headers, literal data) is independent of hashing.
pub struct Reader<R> {
    body: Body<Recorder<R>>,
    cfb: CfbDecrypt,
    mdc: MdcHasher,
    /// Decrypted octets; `start..end` not yet consumed; `..hashed` given to the hasher.
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
    hashed: usize,
    /// Earlier buffers, reused once the hasher is done with them.
    used: VecDeque<Arc<Vec<u8>>>,
    eof: bool,
    /// What is left of the current literal chunk.
    left: Len,
    last: bool,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// A buffer of `len` octets (stale contents): an earlier one the hasher is done with, or
    /// a new one.
    fn spare(&mut self, len: usize) -> Vec<u8> {
        let mut v = match self.used.pop_front().map(Arc::try_unwrap) {
            Some(Ok(v)) => v,
            Some(Err(busy)) => {
                self.used.push_front(busy);
                Vec::new()
            }
            None => Vec::new(),
        };
        if v.len() < len {
            v.resize(len, 0);
        }
        v
    }

    /// Decrypts more (into a new buffer, after what is not consumed yet); `false` at the end
    /// of the encrypted packet.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let keep = self.end - self.start;
        let mut next = self.spare(FILL.max(2 * keep));
        next[..keep].copy_from_slice(&self.buf[self.start..self.end]);
        let mut end = keep;
        while end < next.len() {
            let n = self.body.read(&mut next[end..])?;
            if n == 0 {
                self.eof = true;
                break;
            }
            self.cfb.apply(&mut next[end..end + n]);
            end += n;
        }
        if end == keep {
            return Ok(false);
        }
        // Octets consumed are always hashed already (only hashed octets are available).
        let hashed = self.hashed - self.start;
        let old = std::mem::replace(&mut self.buf, Arc::new(next));
        if self.used.len() < HASH_QUEUE + 2 {
            self.used.push_back(old);
        }
        (self.start, self.end) = (0, end);
        let upto = end.saturating_sub(MDC_LEN).max(hashed);
        self.mdc.hash(&self.buf, hashed..upto)?;
        self.hashed = upto;
        Ok(true)
    }

    /// Decrypted octets that are not the MDC packet (the last 22 octets).
    fn available(&self) -> usize {
        (self.end - self.start).saturating_sub(MDC_LEN)
    }

    /// Consumes `n` octets of the encrypted container's plaintext (not counting toward the
    /// literal chunk).
    fn inner(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.available() < n {
            if !self.fill()? {
                return Err(bad("the encrypted data ends inside a packet"));
            }
        }
        let s = self.start;
        self.start += n;
        Ok(&self.buf[s..s + n])
    }

    fn start_chunk(&mut self, len: Len) {
        self.left = len;
        self.last = !matches!(len, Len::Partial(_));
    }

    /// Consumes `n` octets of literal body.
    fn literal(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let k = self.read(&mut out[got..])?;
            if k == 0 {
                return Err(bad("the literal data packet is too short"));
            }
            got += k;
        }
        Ok(out)
    }

    /// Checks that the MDC packet, and nothing else, follows the literal data.
    fn check_mdc(&mut self) -> io::Result<()> {
        loop {
            if self.end - self.start > MDC_LEN {
                return Err(bad("data follows the literal data packet"));
            }
            if !self.fill()? {
                break;
            }
        }
        if self.end - self.start < MDC_LEN || self.buf[self.start..self.start + 2] != MDC_HEADER {
            return Err(bad("the modification detection code packet is missing"));
        }
        let mut mdc = self.mdc.finish()?;
        mdc.update(MDC_HEADER);
        let digest = mdc.finalize();
        let tail = &self.buf[self.start..self.end];
        if !constant_time_eq(digest.as_slice(), &tail[2..]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the integrity check (MDC) fails: the data was modified",
            ));
        }
        self.start = self.end;
        if self.body.src.read(&mut [0u8])? != 0 {
            return Err(bad("data follows the encrypted data packet"));
        }
        Ok(())
    }
}

/// Whether `a == b`, in a time that depends on their length only (no early exit at the
/// first differing octet).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        loop {
            let left = match self.left {
                Len::Definite(0) if self.last => {
                    self.check_mdc()?;
                    self.done = true;
                    return Ok(0);
                }
                Len::Definite(0) | Len::Partial(0) => {
                    let o1 = self.inner(1)?[0];
                    let len = new_len(o1, || Ok(self.inner(1)?[0]))?;
                    self.start_chunk(len);
                    continue;
                }
                Len::Definite(n) | Len::Partial(n) => usize::try_from(n).unwrap_or(usize::MAX),
                Len::Indeterminate => usize::MAX,
            };
            if self.available() == 0 && !self.fill()? {
                if self.left == Len::Indeterminate {
                    self.check_mdc()?;
                    self.done = true;
                    return Ok(0);
                }
                return Err(bad("the encrypted data ends inside the literal data"));
            }
            let n = self.available().min(left).min(out.len());
            if n == 0 {
                continue;
            }
            let s = self.start;
            out[..n].copy_from_slice(&self.buf[s..s + n]);
            self.start += n;
            self.left = match self.left {
                Len::Definite(k) => Len::Definite(k - n as u64),
                Len::Partial(k) => Len::Partial(k - n as u64),
                Len::Indeterminate => Len::Indeterminate,
            };
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn the_mdc_comparison_compares_every_octet() {
        let a = [7u8; 20];
        assert!(constant_time_eq(&a, &a));
        for i in 0..20 {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!constant_time_eq(&a, &b), "octet {i}");
        }
        assert!(!constant_time_eq(&a, &a[..19]));
        assert!(constant_time_eq(&[], &[]));
    }
}
