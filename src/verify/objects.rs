//! Image content kept object by object in the blob store.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use crate::archive::HashReader;
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::manifest::Manifest;
use crate::snapshot::{self, Sha};
use crate::storage::Store;

use super::{Check, ReadData};

/// Image content kept object by object: every blob of the snapshot is in the blob store with
/// its stored size, and (with `--read-data`) decrypts to content that hashes to its digest.
/// Objects are read by as many threads as there are cores (each object's integrity check is
/// serial, objects are not); the list is walked once, as a stream. Returns the digests of the
/// snapshot's blobs.
pub(super) fn check_blob_store(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    read_data: ReadData,
    cancel: &Cancel,
    checks: &mut Vec<Check>,
) -> Vec<Sha> {
    let mut digests = Vec::new();
    let mut missing = Vec::new();
    let bad = Mutex::new(Vec::new());
    let hashed = AtomicUsize::new(0);
    let mut listed = 0usize;
    let mut trees = 0usize;
    let encrypted = manifest.encryption != "none";
    let read = read_data != ReadData::Layout && (dec.is_some() || !encrypted);
    let lists = snapshot::blobs_of(store, manifest).and_then(|blobs| {
        Ok(blobs
            .map(|b| (false, b))
            .chain(snapshot::trees_of(store, manifest)?.map(|t| (true, t))))
    });
    let objects = match lists {
        Ok(o) => o,
        Err(e) => {
            checks.push(Check::new(
                "blob store holds every blob of the snapshot",
                Err(format!("the snapshot cannot be read: {e}")),
            ));
            return digests;
        }
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (jobs, queue) = mpsc::sync_channel::<Job>(workers * 4);
    let queue = Mutex::new(queue);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if cancel.is_cancelled() {
                        continue;
                    }
                    hashed.fetch_add(1, Ordering::Relaxed);
                    if let Some(problem) = read_one(store, &job, encrypted, dec)
                        && let Ok(mut b) = bad.lock()
                    {
                        b.push(problem);
                    }
                }
            });
        }
        for (tree, kept) in objects {
            if cancel.is_cancelled() {
                break;
            }
            let kept = match kept {
                Ok(k) => k,
                Err(e) => {
                    missing.push(format!("the snapshot cannot be read to its end: {e}"));
                    break;
                }
            };
            listed += 1;
            trees += usize::from(tree);
            let digest = snapshot::sha_hex(&kept.blob.digest);
            let path = &kept.path;
            match store.size(path) {
                Ok(Some(s)) if !kept.stored_known || s == kept.blob.stored => {}
                Ok(Some(s)) => {
                    missing.push(format!("{path} ({s} bytes, {} recorded)", kept.blob.stored))
                }
                Ok(None) => missing.push(path.to_owned()),
                Err(e) => missing.push(format!("{path}: {e}")),
            }
            if read && read_data.selects(&digest) {
                let job = Job {
                    path: kept.path,
                    digest,
                    size: kept.blob.size,
                    tree,
                };
                if jobs.send(job).is_err() {
                    break;
                }
            }
            if !tree {
                digests.push(kept.blob.digest);
            }
        }
        // Closing the queue lets the readers finish what is in it and stop.
        drop(jobs);
    });
    let mut bad = bad.into_inner().unwrap_or_default();
    bad.sort();
    let hashed = hashed.into_inner();
    let first = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    checks.push(Check::new(
        "blob store holds every blob of the snapshot",
        if missing.is_empty() {
            Ok(format!(
                "{} blobs, {trees} repository trees",
                listed - trees
            ))
        } else {
            Err(format!("{} missing: {}", missing.len(), first(&missing)))
        },
    ));
    if read {
        checks.push(Check::new(
            "blob store contents match their digests",
            if bad.is_empty() {
                Ok(format!("{hashed} blobs hashed"))
            } else {
                Err(format!("{} bad: {}", bad.len(), first(&bad)))
            },
        ));
    }
    digests
}

/// One object to read.
struct Job {
    path: String,
    digest: String,
    size: u64,
    /// A repository tree: a tar, compressed (or not, from earlier releases), named by the
    /// sha256 of the tar.
    tree: bool,
}

/// Reads the object of `job` whole; what is wrong with it, if anything.
fn read_one(
    store: &dyn Store,
    job: &Job,
    encrypted: bool,
    dec: Option<&Decryption>,
) -> Option<String> {
    let Job {
        path,
        digest,
        size,
        tree,
    } = job;
    match store.open(path) {
        Ok(r) => {
            content_problem(r, digest, *size, *tree, encrypted, dec).map(|p| format!("{path}{p}"))
        }
        Err(e) => Some(format!("{path}: {e}")),
    }
}

/// What is wrong with the stored octets of a blob-store object read from `stored`, if
/// anything: decrypted (when `encrypted`, with `dec`) and, for a repository tree,
/// decompressed, its content must be `size` octets that hash to `digest`. The problem is said
/// as a suffix to the object's name (` (content hashes to ...)`, `: <error>`).
pub fn content_problem(
    stored: Box<dyn Read + Send + Sync>,
    digest: &str,
    size: u64,
    tree: bool,
    encrypted: bool,
    dec: Option<&Decryption>,
) -> Option<String> {
    let result = (|| {
        let plain: Box<dyn Read + Send + Sync> = match (encrypted, dec) {
            (true, Some(d)) => crypto::decrypt(stored, d).map_err(|e| e.to_string())?,
            _ => stored,
        };
        let plain: Box<dyn Read + Send> = if tree {
            crate::archive::unzipped(plain).map_err(|e| e.to_string())?
        } else {
            plain
        };
        HashReader::new(plain).finish().map_err(|e| e.to_string())
    })();
    match result {
        Ok((sha, n)) if sha == digest && n == size => None,
        Ok((sha, n)) if sha == digest => Some(format!(" ({n} bytes, {size} recorded)")),
        Ok((sha, _)) => Some(format!(" (content hashes to {sha})")),
        Err(e) => Some(format!(": {e}")),
    }
}
