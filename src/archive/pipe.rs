//! A bounded pipe of byte chunks between two threads: the writer blocks when the reader is
//! `CHUNKS` chunks behind, so memory stays bounded whatever the size of the stream.

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
    (
        PipeWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHUNK),
        },
        PipeReader {
            rx: Mutex::new(rx),
            cur: Vec::new(),
            pos: 0,
        },
    )
}

/// The sending end. Dropping it (or `close`) ends the stream for the reader, after what was
/// buffered; whether the stream was complete is for the stages to tell each other (a stage
/// that fails returns its error, and nothing downstream is committed then).
pub struct PipeWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        match &self.tx {
            Some(tx) => tx.send(chunk).map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the reading stage stopped")
            }),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed")),
        }
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

/// The receiving end. (The mutex is never contended: it only makes the reader `Sync`, which
/// the OpenPGP decryptor requires of its source.)
pub struct PipeReader {
    rx: Mutex<Receiver<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.get_mut().map(|rx| rx.recv()) {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
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
    fn writer_fails_when_reader_is_gone() {
        let (mut w, r) = pipe();
        drop(r);
        let big = vec![0u8; CHUNK * 2];
        assert!(w.write_all(&big).is_err());
    }
}
