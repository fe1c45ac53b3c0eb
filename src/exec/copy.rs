//! `backups copy`: complete backups of one plan's destination copied to another plan's, a
//! second copy (local to S3, one bucket to another). Both plans have the same `name`, so the
//! copy lies where the other plan looks for its backups: it is listed, verified, pruned and
//! restored through that plan like any backup.
//!
//! Under the other plan's lock. For each backup: the blob-store objects it lists that are not
//! there yet (each decrypted and hashed against its digest on the way, and named only once
//! that holds), the bases of its lists (hashed against their names), its artifacts (against
//! the manifest's sha256), then the manifest, last: a backup is complete at the destination
//! only once everything it names is. A killed copy leaves no manifest; the next one finds what
//! is there already and copies the rest. A second copy copies nothing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use serde::Serialize;

use super::lock;
use crate::archive::{HashReader, pipe};
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::error::{Error, Result, io};
use crate::events::{Event, Reporter};
use crate::manifest::{self, Manifest};
use crate::plan::Plan;
use crate::progress::{Meter, Ticker};
use crate::snapshot::{self, Kept};
use crate::storage::metered::Metered;
use crate::storage::{self, Store};

/// Which backups to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    /// Every complete backup (the default).
    All,
    Latest,
    Id(String),
}

impl std::str::FromStr for Select {
    type Err = Error;
    fn from_str(s: &str) -> Result<Select> {
        match s {
            "all" => Ok(Select::All),
            other => Ok(match other.parse::<manifest::Which>()? {
                manifest::Which::Latest => Select::Latest,
                manifest::Which::Id(id) => Select::Id(id),
            }),
        }
    }
}

/// What a copy did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Copied {
    /// Backups copied now.
    pub copied: Vec<String>,
    /// Backups that were complete at the destination already.
    pub present: Vec<String>,
    /// Blob-store objects copied, and found there already.
    pub objects: u64,
    pub objects_present: u64,
    /// Octets written.
    pub bytes: u64,
}

/// Copies the backups `select` of `from` to `to`'s destination.
pub async fn copy(
    from: &Plan,
    to: &Plan,
    select: &Select,
    reporter: Arc<dyn Reporter>,
    cancel: &Cancel,
) -> Result<Copied> {
    if from.name != to.name {
        return Err(Error::Usage(format!(
            "plan {} copies only to a plan of the same name, and {} is named {}: give the second plan `name: {}` and its own destination",
            from.name,
            to.file.display(),
            to.name,
            from.name
        )));
    }
    let src = storage::open(from)?;
    let dst = storage::open(to)?;
    if src.backups.describe() == dst.backups.describe() {
        return Err(Error::Usage(format!(
            "{} and {} have the same destination ({}): give the second plan another one",
            from.file.display(),
            to.file.display(),
            dst.backups.describe()
        )));
    }
    let (_, dec) = crypto::for_plan(from)?;
    // What the other plan reads its backups with: the copies must open with it.
    let (_, to_dec) = crypto::for_plan(to)?;
    if to_dec.is_none() {
        reporter.emit(&Event::Warning {
            message: format!(
                "{} has no verify.key: whether it can decrypt the copies is not checked",
                to.file.display()
            ),
        });
    }
    if dec.is_none() {
        reporter.emit(&Event::Warning {
            message: format!(
                "{} has no verify.key: blob-store objects are checked by size only, artifacts by their sha256",
                from.file.display()
            ),
        });
    }
    let _lock = lock::acquire(
        dst.state.clone(),
        to.name.as_str(),
        "backups copy",
        None,
        to.lock_lease,
        reporter.as_ref(),
        cancel,
    )
    .await?;

    let listing = manifest::list(src.backups.as_ref())?;
    for u in &listing.unreadable {
        reporter.emit(&Event::Warning {
            message: u.warning(),
        });
    }
    let wanted: Vec<Manifest> = match select {
        Select::All => listing.complete,
        Select::Latest => listing.complete.into_iter().last().into_iter().collect(),
        Select::Id(id) => {
            let m = listing
                .complete
                .into_iter()
                .find(|m| &m.backup_id == id)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{} has no complete backup {id}: `dtr-backup backups list {}` shows them",
                        src.backups.describe(),
                        from.file.display()
                    ))
                })?;
            vec![m]
        }
    };
    if wanted.is_empty() {
        return Err(Error::Usage(format!(
            "{} holds no complete backup to copy",
            src.backups.describe()
        )));
    }
    let there: BTreeSet<String> = manifest::list(dst.backups.as_ref())?
        .complete
        .into_iter()
        .map(|m| m.backup_id)
        .collect();

    let mut done = Copied::default();
    for m in wanted {
        let step = format!("copy {}", m.backup_id);
        if there.contains(&m.backup_id) {
            reporter.emit(&Event::StepSkipped {
                step,
                reason: format!("complete at {} already", dst.backups.describe()),
            });
            done.present.push(m.backup_id);
            continue;
        }
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        reporter.emit(&Event::StepStarted {
            step: step.clone(),
            kind: "copy".into(),
        });
        let began = std::time::Instant::now();
        let meter = Meter::default();
        let ticker = Ticker::start(&meter, reporter.clone(), &step, None);
        let (source, dest, dec2, to_dec2, cancel2) = (
            Metered::wrap(src.backups.clone(), &meter),
            dst.backups.clone(),
            dec.clone(),
            to_dec.clone(),
            cancel.clone(),
        );
        let (id, to_file) = (m.backup_id.clone(), to.file.clone());
        let result = tokio::task::spawn_blocking(move || {
            if let Some(d) = &to_dec2 {
                readable_by(source.as_ref(), &m, d, &to_file)?;
            }
            copy_backup(source.as_ref(), dest.as_ref(), &m, dec2.as_ref(), &cancel2)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))
        .and_then(|r| r);
        let result = match result {
            Err(_) if cancel.is_cancelled() => Err(Error::Interrupted),
            other => other,
        };
        match result {
            Ok(one) => {
                ticker.finish();
                done.objects += one.objects;
                done.objects_present += one.objects_present;
                done.bytes += one.bytes;
                reporter.emit(&Event::StepFinished {
                    step,
                    duration_ms: began.elapsed().as_millis() as u64,
                    artifacts: vec![],
                });
                done.copied.push(id);
            }
            Err(e) => {
                drop(ticker);
                reporter.emit(&Event::StepFailed {
                    step,
                    error: e.to_string(),
                });
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Whether `dec` (the other plan's key) opens the backup's first encrypted artifact: copies
/// it cannot decrypt could be neither verified nor restored through that plan.
fn readable_by(
    src: &dyn Store,
    m: &Manifest,
    dec: &Decryption,
    to: &std::path::Path,
) -> Result<()> {
    let Some(a) = m.artifacts.iter().find(|a| a.encrypted) else {
        return Ok(());
    };
    let path = format!("{}/{}", m.backup_id, a.path);
    let opened: std::result::Result<(), String> = match crypto::decrypt(src.open(&path)?, dec) {
        Ok(mut plain) => plain
            .read(&mut [0u8; 1])
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    opened.map_err(|e| {
        Error::Usage(format!(
            "{} cannot decrypt backup {} ({e}): its encryption is not the source plan's; give it the same passphrase or keys, so that the copies can be verified and restored through it",
            to.display(),
            m.backup_id
        ))
    })
}

/// What copying one backup did.
#[derive(Default)]
struct One {
    objects: u64,
    objects_present: u64,
    bytes: u64,
}

fn copy_backup(
    src: &dyn Store,
    dst: &dyn Store,
    m: &Manifest,
    dec: Option<&Decryption>,
    cancel: &Cancel,
) -> Result<One> {
    let id = &m.backup_id;
    let encrypted = m.encryption != "none";
    let written = AtomicU64::new(0);
    // 1. The blob-store objects it lists, on as many threads as there are cores.
    let (objects, present) = copy_objects(src, dst, m, encrypted, dec, cancel, &written)?;
    dst.sync_many("blobs")?;
    // The passphrase check of each blob store it uses, so that the other plan's runs find
    // the store theirs (and do not start another).
    for store in stores_of(src, m)? {
        let check = format!("{store}/{}", crate::blob_store::KEY_CHECK);
        if dst.size(&check)?.is_none()
            && let Some(bytes) = src.get(&check)?
        {
            dst.put(&check, &bytes)?;
        }
    }
    // 2. The bases of its lists: each named by the sha256 of its octets.
    for base in snapshot::bases_of(src, m)? {
        cancel.check().map_err(|e| io(e, "copying"))?;
        if dst.size(&base)?.is_some() {
            continue;
        }
        let want = base.rsplit('/').next().unwrap_or_default().to_owned();
        written.fetch_add(
            copy_checked(src, dst, &base, &want, None)?,
            Ordering::Relaxed,
        );
    }
    // 3. Its artifacts, each against the manifest's sha256.
    for a in &m.artifacts {
        cancel.check().map_err(|e| io(e, "copying"))?;
        let path = format!("{id}/{}", a.path);
        // Named at the destination only once checked: one that is there with its size is
        // the work of an interrupted copy.
        if dst.size(&path)? == Some(a.size) {
            continue;
        }
        written.fetch_add(
            copy_checked(src, dst, &path, &a.sha256, Some(a.size))?,
            Ordering::Relaxed,
        );
    }
    // 4. The manifest, last.
    let path = format!("{id}/{}", manifest::FILE);
    let bytes = src
        .get(&path)?
        .ok_or_else(|| Error::stored(format!("{path} is gone from {}", src.describe())))?;
    Manifest::parse(&bytes, id, &path)?;
    cancel.check().map_err(|e| io(e, "copying"))?;
    dst.put(&path, &bytes)?;
    Ok(One {
        objects,
        objects_present: present,
        bytes: written.into_inner() + bytes.len() as u64,
    })
}

/// The blob-store folders (`blobs/<store>`) the backup's objects lie in.
fn stores_of(src: &dyn Store, m: &Manifest) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let first = |p: &str| p.splitn(3, '/').take(2).collect::<Vec<_>>().join("/");
    if let Some(kept) = snapshot::blobs_of(src, m)?.next() {
        out.insert(first(&kept?.path));
    }
    if let Some(kept) = snapshot::trees_of(src, m)?.next() {
        out.insert(first(&kept?.path));
    }
    Ok(out)
}

/// Copies an object whose octets must hash to `sha` (and be `size` long): it gets its name at
/// the destination only when they do. Returns the octets written.
fn copy_checked(
    src: &dyn Store,
    dst: &dyn Store,
    path: &str,
    sha: &str,
    size: Option<u64>,
) -> Result<u64> {
    let mut from = HashReader::new(src.open(path)?);
    let mut to = dst.create(path)?;
    crate::archive::copy_large(&mut from, &mut to).map_err(|e| io(e, format!("copying {path}")))?;
    let (got, n) = from
        .finish()
        .map_err(|e| io(e, format!("reading {path}")))?;
    if got != sha || size.is_some_and(|s| s != n) {
        return Err(damaged(
            src,
            path,
            &format!(
                "{n} bytes with sha256 {got}; {} with sha256 {sha} are recorded",
                size.map_or_else(|| "its name says".to_owned(), |s| format!("{s} bytes"))
            ),
        ));
    }
    to.commit()?;
    Ok(n)
}

fn damaged(src: &dyn Store, path: &str, why: &str) -> Error {
    Error::Verify(format!(
        "{path} at {} is damaged ({why}): it was not copied, and the backup is not complete at the destination; `dtr-backup verify` the source",
        src.describe()
    ))
}

/// Copies the blob-store objects the backup lists that the destination lacks, each checked
/// on the way. Returns (copied, present).
#[allow(clippy::too_many_arguments)]
fn copy_objects(
    src: &dyn Store,
    dst: &dyn Store,
    m: &Manifest,
    encrypted: bool,
    dec: Option<&Decryption>,
    cancel: &Cancel,
    written: &AtomicU64,
) -> Result<(u64, u64)> {
    let all = snapshot::blobs_of(src, m)?
        .map(|b| (false, b))
        .chain(snapshot::trees_of(src, m)?.map(|t| (true, t)));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (jobs, queue) = mpsc::sync_channel::<(bool, Kept)>(workers * 4);
    let queue = Mutex::new(queue);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let copied = AtomicU64::new(0);
    let mut present = 0u64;
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let Ok(Ok((tree, kept))) = queue.lock().map(|q| q.recv()) else {
                        return;
                    };
                    if failed.lock().is_ok_and(|f| f.is_some()) {
                        continue;
                    }
                    let r = copy_object(src, dst, &kept, tree, encrypted, dec, cancel, &mut buf);
                    match r {
                        Ok(n) => {
                            copied.fetch_add(1, Ordering::Relaxed);
                            written.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
        let result = (|| {
            for (tree, kept) in all {
                let kept = kept?;
                cancel.check().map_err(|e| io(e, "copying"))?;
                if failed.lock().is_ok_and(|f| f.is_some()) {
                    break;
                }
                match dst.size(&kept.path)? {
                    Some(s) if !kept.stored_known || s == kept.blob.stored => {
                        present += 1;
                        continue;
                    }
                    _ => {}
                }
                if jobs.send((tree, kept)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(jobs);
        result
    })?;
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok((copied.into_inner(), present))
}

/// Copies one blob-store object: its stored octets go to the destination and, through a pipe,
/// to a thread that decrypts and hashes them; it is named there only if its content hashes to
/// its digest (or, without a key, if its size is the recorded one).
#[allow(clippy::too_many_arguments)]
fn copy_object(
    src: &dyn Store,
    dst: &dyn Store,
    kept: &Kept,
    tree: bool,
    encrypted: bool,
    dec: Option<&Decryption>,
    cancel: &Cancel,
    buf: &mut [u8],
) -> Result<u64> {
    let path = &kept.path;
    let mut from = src.open(path)?;
    let mut to = dst.create_many(path, kept.blob.stored)?;
    let checking = encrypted.then_some(dec).flatten().is_some() || !encrypted;
    let (mut tx, rx) = pipe::pipe();
    let digest = snapshot::sha_hex(&kept.blob.digest);
    let (size, dec2) = (kept.blob.size, dec.cloned());
    let checker = checking.then(|| {
        std::thread::spawn(move || {
            crate::verify::content_problem(
                Box::new(rx),
                &digest,
                size,
                tree,
                encrypted,
                dec2.as_ref(),
            )
        })
    });
    let mut n = 0u64;
    let copied: std::io::Result<()> = (|| {
        loop {
            cancel.check()?;
            let k = from.read(buf)?;
            if k == 0 {
                break;
            }
            to.write_all(&buf[..k])?;
            if checker.is_some() {
                // A checker that stopped early (bad content) is judged below.
                let _ = tx.write_all(&buf[..k]);
            }
            n += k as u64;
        }
        Ok(())
    })();
    let _ = tx.close();
    let problem = checker.map(|c| {
        c.join()
            .unwrap_or_else(|_| Some(": the checking thread panicked".into()))
    });
    copied.map_err(|e| io(e, format!("copying {path}")))?;
    if let Some(Some(p)) = problem {
        return Err(damaged(src, path, p.trim_start_matches([':', ' '])));
    }
    if kept.stored_known && n != kept.blob.stored {
        return Err(damaged(
            src,
            path,
            &format!("{n} bytes stored, {} recorded", kept.blob.stored),
        ));
    }
    to.commit()?;
    crate::failpoint::hit("copy.object-copied");
    Ok(n)
}
