//! The artifact pipeline shared by the steps that write archives, three threads joined by
//! bounded pipes (1 MiB chunks, `pipe::CHUNKS` in flight each):
//!
//! ```text
//! producer (tar of a tree, a container's stdout) + OpenPGP framing and MDC hash (SHA-1)
//!   ─▶ AES-CFB ─▶ sha256 + write to the store
//! ```
//!
//! On two cores, reading, archiving and hashing the plaintext; encrypting; and hashing and
//! writing the ciphertext overlap. The cipher encrypts each chunk into a buffer that goes down
//! the pipe as it is; buffers come back up for reuse. The cipher, which cannot be parallelised (CFB), has a
//! thread to itself.
//! Plaintext never touches the disk; the object becomes visible only after every stage
//! finished cleanly and everything is durable.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::archive::HashWriter;
use crate::archive::pipe::{self, PipeWriter};
use crate::cancel::Cancel;
use crate::crypto::{self, Encryption, Framed};
use crate::error::{Error, Result, io};
use crate::failpoint;
use crate::storage::{ObjectWriter, Store};

/// Size and sha256 of a written object.
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// Runs `produce` on its own thread and stores what it writes, encrypted, under `path`.
pub fn store_stream(
    produce: impl FnOnce(&mut Framed<PipeWriter>) -> io::Result<()> + Send + 'static,
    store: &dyn Store,
    path: &str,
    encryption: &Encryption,
    cancel: &Cancel,
    progress: Arc<AtomicU64>,
) -> Result<Written> {
    let session = crypto::Session::new(encryption).map_err(|e| io(e, "starting encryption"))?;
    let (tx, mut rx) = pipe::pipe();
    let mut framed = session
        .frame(tx)
        .map_err(|e| io(e, "starting encryption"))?;
    let producer = std::thread::Builder::new()
        .name("archive".into())
        .spawn(move || {
            produce(&mut framed)?;
            framed.finish()?.close()
        })
        .map_err(|e| io(e, "starting the archive thread"))?;

    let object = store.create(path)?;
    let what = format!("writing {}/{path}", store.describe());
    let (enc_tx, mut enc_rx) = pipe::pipe();
    let writer = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(
            move || -> io::Result<(Box<dyn ObjectWriter>, String, u64)> {
                let mut hashed = HashWriter::new(object);
                while let Some(chunk) = enc_rx.next_chunk() {
                    hashed.write_all(&chunk)?;
                    enc_rx.recycle(chunk);
                }
                Ok(hashed.finish())
            },
        )
        .map_err(|e| io(e, "starting the writer thread"))?;

    let encrypted = (|| -> Result<()> {
        let mut sealed = session.seal(enc_tx).map_err(|e| io(e, &what))?;
        let mut chunks = 0u64;
        while let Some(chunk) = rx.next_chunk() {
            cancel.check().map_err(|e| io(e, &what))?;
            sealed.write_all(&chunk).map_err(|e| io(e, &what))?;
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            rx.recycle(chunk);
            chunks += 1;
            if chunks == 2 {
                failpoint::hit("stream.middle");
            }
        }
        sealed.finish().map_err(|e| io(e, &what))
    })();
    let written = writer
        .join()
        .map_err(|_| Error::internal("the writer thread panicked"))?
        .map_err(|e| io(e, &what));
    let consumed = match (encrypted, written) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(done)) => Ok(done),
    };
    // Stop the producer if we stopped reading, then learn how it ended: a producer error
    // means the stream is incomplete even if the consumer saw a clean end.
    drop(rx);
    let produced = producer
        .join()
        .map_err(|_| Error::internal("the archive thread panicked"))?;
    let (object, sha256, size) = match (consumed, produced) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(io(e, "reading the source")),
        (Ok(done), Ok(())) => done,
    };
    object.commit()?;
    Ok(Written { size, sha256 })
}

/// The other way: a stored artifact, decrypted, read on a thread of its own and handed out in
/// chunks down a bounded channel (for a restore container's standard input). A read error,
/// an integrity failure or cancellation is the last item; the plaintext never touches disk.
/// `failpoint` is hit once the artifact is open, before the first chunk.
pub fn feed(
    store: Arc<dyn Store>,
    path: String,
    encrypted: bool,
    dec: Option<crypto::Decryption>,
    cancel: Cancel,
    failpoint: &'static str,
) -> (
    tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    std::thread::JoinHandle<()>,
) {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(4);
    let feeder = std::thread::spawn(move || {
        let opened = store.open(&path).and_then(|stored| {
            if !encrypted {
                return Ok(stored);
            }
            let dec = dec.as_ref().ok_or_else(|| {
                Error::crypto(format!(
                    "{path} is encrypted to recipients and the plan has no verify.key: set it to the secret key that decrypts the backup"
                ))
            })?;
            crypto::decrypt(stored, dec)
                .map_err(|e| Error::Verify(format!("{path} does not decrypt: {e}")))
        });
        let mut plain = match opened {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut buf = vec![0u8; 1 << 16];
        failpoint::hit(failpoint);
        loop {
            if cancel.is_cancelled() {
                let _ = tx.blocking_send(Err(Error::Interrupted));
                return;
            }
            match plain.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(Error::Verify(format!(
                        "{path} cannot be read to its end: {e}; restore another backup"
                    ))));
                    return;
                }
            }
        }
    });
    (rx, feeder)
}
