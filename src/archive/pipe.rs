//! A bounded pipe of byte chunks between two threads: the writer blocks when the reader is
//! `CHUNKS` chunks behind, so memory stays bounded whatever the size of the stream.
//!
//! Chunks travel by ownership: a stage that fills whole buffers hands them over
//! ([`PipeWriter::put_chunk`]) instead of copying them, and buffers the reader is done with go
//! back to the writer ([`PipeReader::recycle`]) to be filled again.

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes per chunk.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight at most (plus one being filled and one being drained).
pub const CHUNKS: usize = 4;

/// Creates a pipe.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(CHUNKS);
    let (back_tx, back_rx) = sync_channel(CHUNKS);
    (
        PipeWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHUNK),
            back: Mutex::new(back_rx),
        },
        PipeReader {
            rx: Mutex::new(rx),
            cur: Vec::new(),
            pos: 0,
            back: back_tx,
        },
    )
}

/// The sending end. Dropping it (or `close`) ends the stream for the reader, after what was
/// buffered; whether the stream was complete is for the stages to tell each other (a stage
/// that fails returns its error, and nothing downstream is committed then).
pub struct PipeWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    /// Buffers the reader gave back. (The mutex is never contended: it makes the writer
    /// `Sync`.)
    back: Mutex<Receiver<Vec<u8>>>,
}

impl PipeWriter {
    /// A buffer of at least `CHUNK` octets' capacity, with stale contents: one the reader gave
    /// back, or a new (empty) one.
    fn spare(&mut self) -> Vec<u8> {
        self.back
            .get_mut()
            .ok()
            .and_then(|back| back.try_recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    fn send_vec(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        match &self.tx {
            Some(tx) => tx.send(chunk).map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the reading stage stopped")
            }),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed")),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.spare();
        next.clear();
        let chunk = std::mem::replace(&mut self.buf, next);
        self.send_vec(chunk)
    }

    /// Sends what is buffered and ends the stream.
    pub fn close(mut self) -> io::Result<()> {
        self.send()?;
        self.tx = None;
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `from` to its end straight into chunks that go down the pipe whole (no copy in
/// between); returns the number of octets.
pub fn pump(from: &mut dyn Read, to: &mut PipeWriter) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut total = 0u64;
    loop {
        if buf.len() < CHUNK {
            buf.resize(CHUNK, 0);
        }
        let n = match from.read(&mut buf[..CHUNK]) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.truncate(n);
        total += n as u64;
        buf = to.put_chunk(buf)?;
    }
}

/// A writer that can also take whole buffers by ownership.
pub trait ChunkSink: Write {
    /// Writes `chunk` (handed over where the sink can, else copied); returns a buffer of at
    /// least `CHUNK` octets' capacity, with stale contents, to fill next.
    fn put_chunk(&mut self, chunk: Vec<u8>) -> io::Result<Vec<u8>>;
}

impl ChunkSink for PipeWriter {
    /// Sends what is buffered, then `chunk` as it is (no copy).
    fn put_chunk(&mut self, chunk: Vec<u8>) -> io::Result<Vec<u8>> {
        self.send()?;
        if !chunk.is_empty() {
            self.send_vec(chunk)?;
        }
        Ok(self.spare())
    }
}

/// Any writer as a [`ChunkSink`]: chunks are copied, and the same buffer comes back.
pub struct Copying<W>(pub W);

impl<W: Write> Write for Copying<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> ChunkSink for Copying<W> {
    fn put_chunk(&mut self, chunk: Vec<u8>) -> io::Result<Vec<u8>> {
        self.0.write_all(&chunk)?;
        Ok(chunk)
    }
}

/// The receiving end. (The mutex is never contended: it only makes the reader `Sync`, which
/// the OpenPGP decryptor requires of its source.)
pub struct PipeReader {
    rx: Mutex<Receiver<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    back: SyncSender<Vec<u8>>,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.get_mut().map(|rx| rx.recv()) {
                Ok(Ok(chunk)) => {
                    let done = std::mem::replace(&mut self.cur, chunk);
                    self.recycle(done);
                    self.pos = 0;
                }
                _ => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl PipeReader {
    /// Takes the next whole chunk (avoids a copy when the consumer can use it as is).
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.pos < self.cur.len() {
            let rest = self.cur.split_off(self.pos);
            self.cur.clear();
            self.pos = 0;
            return Some(rest);
        }
        self.rx.get_mut().ok().and_then(|rx| rx.recv().ok())
    }

    /// Gives a chunk the reader is done with back to the writer, to be filled again (dropped
    /// if the writer has enough, or is gone, or the buffer is a small one).
    pub fn recycle(&self, chunk: Vec<u8>) {
        if chunk.capacity() >= CHUNK {
            let _ = self.back.try_send(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_end() {
        let (mut w, mut r) = pipe();
        let t = std::thread::spawn(move || {
            for i in 0..3000u32 {
                w.write_all(&i.to_le_bytes().repeat(333)).unwrap();
            }
            w.close().unwrap();
        });
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        t.join().unwrap();
        assert_eq!(all.len(), 3000 * 4 * 333);
        assert_eq!(&all[..4], &0u32.to_le_bytes());
        assert_eq!(&all[all.len() - 4..], &2999u32.to_le_bytes());
    }

    #[test]
    fn whole_chunks_pass_as_they_are_after_buffered_bytes_and_buffers_come_back() {
        let (mut w, mut r) = pipe();
        let first = vec![7u8; CHUNK + 1];
        let first_at = first.as_ptr();
        w.write_all(b"head").unwrap();
        let spare = w.put_chunk(first).unwrap();
        assert!(spare.capacity() >= CHUNK);
        assert_eq!(r.next_chunk().unwrap(), b"head");
        let got = r.next_chunk().unwrap();
        assert_eq!(
            (got.len(), got.as_ptr()),
            (CHUNK + 1, first_at),
            "moved, not copied"
        );
        r.recycle(got);
        let again = w.put_chunk(vec![1u8; CHUNK]).unwrap();
        assert_eq!(again.as_ptr(), first_at, "the reader's buffer came back");
        // Small buffers are not worth keeping.
        r.recycle(vec![0u8; 10]);
        assert_ne!(w.put_chunk(Vec::new()).unwrap().capacity(), 10);
        w.close().unwrap();
        assert_eq!(r.next_chunk().unwrap(), vec![1u8; CHUNK]);
        assert!(r.next_chunk().is_none());
    }

    #[test]
    fn pump_carries_every_octet_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 12_345).map(|i| (i % 251) as u8).collect();
        let (mut w, mut r) = pipe();
        let src = data.clone();
        // Reads of odd sizes, as a reader may return fewer octets than asked.
        let t = std::thread::spawn(move || {
            let n = pump(&mut OddReads(io::Cursor::new(src)), &mut w).unwrap();
            w.close().unwrap();
            n
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(t.join().unwrap(), data.len() as u64);
        assert!(back == data);
    }

    struct OddReads<R>(R);

    impl<R: Read> Read for OddReads<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(777_777);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn writer_fails_when_reader_is_gone() {
        let (mut w, r) = pipe();
        drop(r);
        let big = vec![0u8; CHUNK * 2];
        assert!(w.write_all(&big).is_err());
    }
}
