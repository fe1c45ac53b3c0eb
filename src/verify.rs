//! Verification of a stored backup, each check reported by name:
//!
//! 1. the manifest parses; every artifact exists with its recorded size and sha256;
//! 2. each encrypted artifact decrypts and its integrity protection holds;
//! 3. the metadata archive (gzip or tar, sniffed) has the top folder of the manifest's version
//!    and `rethink/properties/0`;
//! 4. image content has the canonical layout; with `--read-data` every (or a sample of) blob
//!    hashes to the digest in its path;
//! 5. restorability: every blob digest the metadata references is in the image content.
//!
//! Each artifact is read once: hashing, decryption and the archive walk share one pass.
//! `apply`'s read-back ([`Rehash::Undecrypted`]) does not hash again what it decrypts: the
//! integrity protection already covers every stored octet.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use crate::archive::HashReader;
use crate::archive::pipe;
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::manifest::{Artifact, ArtifactKind, Manifest, Which};
use crate::storage::Store;

/// One named check and its outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, result: Result<String, String>) -> Check {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            name: name.into(),
            ok,
            detail,
        }
    }
}

/// How much of the image content's data is checked against its digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// Layout only (blob contents are read, not hashed).
    Layout,
    /// Blobs whose digest falls in a fixed-seed sample of this many percent.
    Sample(u8),
    /// Every blob.
    Full,
}

impl ReadData {
    /// Whether the blob `digest` is hashed. The sample is fixed: the same digests every time.
    fn selects(self, digest: &str) -> bool {
        match self {
            ReadData::Layout => false,
            ReadData::Full => true,
            ReadData::Sample(pct) => {
                let h =
                    crate::archive::sha256_hex(format!("dtr-backup-sample:{digest}").as_bytes());
                u8::from_str_radix(&h[..2], 16).unwrap_or(0) as u32 * 100 / 256 < u32::from(pct)
            }
        }
    }
}

/// Whether the stored octets of an artifact that is decrypted are hashed again (sha256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rehash {
    /// Every artifact: the manifest's sha256 is checked (`verify`).
    Always,
    /// Only artifacts that are not decrypted (`apply`'s read-back). Decryption checks the
    /// OpenPGP integrity protection (MDC), which any changed, missing or added octet breaks;
    /// a second hash of the same octets would prove nothing more about what is stored.
    Undecrypted,
}

/// Why a check of decrypted content neither passes nor fails on its own.
const INCONCLUSIVE: &str = "inconclusive: read from plaintext whose integrity protection failed";

/// What one artifact's walk found.
#[derive(Default)]
struct Walk {
    /// Blob digests referenced by metadata documents.
    references: BTreeSet<String>,
    /// Blob digests present in image content.
    blobs: BTreeSet<String>,
    hashed: usize,
    bad_blobs: Vec<String>,
}

fn digest_ref() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"sha256:([0-9a-f]{64})").expect("valid regex"))
}

fn blob_path() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"/docker/registry/v2/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})/data$")
            .expect("valid regex")
    })
}

/// What `verify` found of one stored backup.
pub struct Report {
    pub backup_id: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Verifies the stored backup `which` of `plan` with the plan's keys. Folders whose manifest
/// cannot be read are passed to `warn` (when looking for the latest). An error means nothing
/// could be checked (no such backup, no access, no key material); a backup that fails its
/// checks is a report with failed checks.
pub fn stored(
    plan: &crate::plan::Plan,
    which: &Which,
    read_data: ReadData,
    cancel: &Cancel,
    warn: &dyn Fn(String),
) -> crate::error::Result<Report> {
    let stores = crate::storage::open(plan)?;
    let store = stores.backups.as_ref();
    let backup_id = crate::manifest::resolve(store, which, warn).map_err(|e| match e {
        crate::error::Error::Verify(_) => crate::error::Error::Verify(format!(
            "plan {} has no complete backup at {}",
            plan.name,
            store.describe()
        )),
        other => other,
    })?;
    let mut checks = Vec::new();
    let manifest = crate::manifest::read(store, &backup_id).map_err(|e| e.to_string());
    checks.push(Check {
        name: "manifest.json exists and parses".into(),
        ok: manifest.is_ok(),
        detail: match &manifest {
            Ok(m) => format!(
                "{} artifacts, finished {}",
                m.artifacts.len(),
                m.finished_at
            ),
            Err(e) => e.clone(),
        },
    });
    if let Ok(m) = &manifest {
        let (_, dec) = crypto::for_plan(plan)?;
        if dec.is_none() && m.artifacts.iter().any(|a| a.encrypted) {
            checks.push(Check {
                name: "a key to decrypt with".into(),
                ok: false,
                detail: "the artifacts are encrypted to recipients and the plan has no verify.key: set it to the secret key".into(),
            });
        }
        checks.extend(check_backup(
            store,
            m,
            dec.as_ref(),
            read_data,
            Rehash::Always,
            cancel,
        ));
    }
    Ok(Report { backup_id, checks })
}

/// Checks a backup whose manifest is `manifest`, stored under `<backup_id>/`. `dec` is `None`
/// when no key can open recipients-encrypted artifacts: they are then checked by size and
/// sha256 only (the caller says so).
pub fn check_backup(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    read_data: ReadData,
    rehash: Rehash,
    cancel: &Cancel,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut references = None;
    let mut blobs: Option<BTreeSet<String>> = None;
    for a in &manifest.artifacts {
        let (mut c, walk) = check_artifact(store, manifest, a, dec, read_data, rehash, cancel);
        checks.append(&mut c);
        if let Some(w) = walk {
            match a.kind {
                ArtifactKind::Metadata => references = Some(w.references),
                ArtifactKind::Images => blobs = Some(w.blobs),
            }
        }
    }
    if !manifest.objects.is_empty() {
        let snapshot = check_blob_store(store, manifest, dec, read_data, cancel, &mut checks);
        blobs = Some(
            blobs
                .unwrap_or_default()
                .into_iter()
                .chain(snapshot)
                .collect(),
        );
    }
    if let (Some(refs), Some(present)) = (references, blobs) {
        let missing: Vec<&String> = refs.difference(&present).collect();
        checks.push(Check::new(
            "restorable: blobs referenced by metadata are in the image content",
            if missing.is_empty() {
                Ok(format!(
                    "{} referenced, {} present",
                    refs.len(),
                    present.len()
                ))
            } else {
                Err(format!(
                    "{} of {} referenced blobs are missing: {}",
                    missing.len(),
                    refs.len(),
                    missing
                        .iter()
                        .take(10)
                        .map(|d| format!("sha256:{d}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            },
        ));
    }
    checks
}

/// Image content kept object by object: every blob of the snapshot is in the blob store with
/// its stored size, and (with `--read-data`) decrypts to content that hashes to its digest.
/// Returns the digests of the snapshot's blobs.
fn check_blob_store(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    read_data: ReadData,
    cancel: &Cancel,
    checks: &mut Vec<Check>,
) -> BTreeSet<String> {
    let blobs: Vec<_> = manifest
        .objects
        .iter()
        .filter(|o| o.blob.is_some())
        .collect();
    let mut missing = Vec::new();
    for o in &blobs {
        let path = o.blob.as_deref().unwrap_or_default();
        match store.size(path) {
            Ok(Some(s)) if o.stored_size.is_none_or(|want| want == s) => {}
            Ok(Some(s)) => missing.push(format!(
                "{path} ({s} bytes, {} recorded)",
                o.stored_size.unwrap_or(0)
            )),
            Ok(None) => missing.push(path.to_owned()),
            Err(e) => missing.push(format!("{path}: {e}")),
        }
    }
    checks.push(Check::new(
        "blob store holds every blob of the snapshot",
        if missing.is_empty() {
            Ok(format!(
                "{} blobs, {} other objects",
                blobs.len(),
                manifest.objects.len() - blobs.len()
            ))
        } else {
            Err(format!(
                "{} missing: {}",
                missing.len(),
                missing
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        },
    ));
    let encrypted = manifest.encryption != "none";
    if read_data != ReadData::Layout && (dec.is_some() || !encrypted) {
        let mut bad = Vec::new();
        let mut hashed = 0usize;
        for o in blobs.iter().filter(|o| read_data.selects(&o.sha256)) {
            if cancel.is_cancelled() {
                break;
            }
            let path = o.blob.as_deref().unwrap_or_default();
            let result = store.open(path).map_err(|e| e.to_string()).and_then(|r| {
                let plain: Box<dyn Read + Send + Sync> = match (encrypted, dec) {
                    (true, Some(d)) => crypto::decrypt(r, d).map_err(|e| e.to_string())?,
                    _ => r,
                };
                HashReader::new(plain).finish().map_err(|e| e.to_string())
            });
            hashed += 1;
            match result {
                Ok((sha, _)) if sha == o.sha256 => {}
                Ok((sha, _)) => bad.push(format!("{path} (content hashes to {sha})")),
                Err(e) => bad.push(format!("{path}: {e}")),
            }
        }
        checks.push(Check::new(
            "blob store contents match their digests",
            if bad.is_empty() {
                Ok(format!("{hashed} blobs hashed"))
            } else {
                Err(format!(
                    "{} bad: {}",
                    bad.len(),
                    bad.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                ))
            },
        ));
    }
    blobs.iter().map(|o| o.sha256.clone()).collect()
}

fn check_artifact(
    store: &dyn Store,
    manifest: &Manifest,
    a: &Artifact,
    dec: Option<&Decryption>,
    read_data: ReadData,
    rehash: Rehash,
    cancel: &Cancel,
) -> (Vec<Check>, Option<Walk>) {
    let path = format!("{}/{}", manifest.backup_id, a.path);
    let mut checks = Vec::new();
    let exists = match store.size(&path) {
        Ok(Some(size)) if size == a.size => Ok(format!("{size} bytes")),
        Ok(Some(size)) => Err(format!(
            "{size} bytes stored, {} recorded: truncated or replaced",
            a.size
        )),
        Ok(None) => Err("missing".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let present = exists.is_ok();
    checks.push(Check::new(
        format!("{}: present with its size", a.path),
        exists,
    ));
    if !present {
        return (checks, None);
    }
    let reader = match store.open(&path) {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::new(
                format!("{}: readable", a.path),
                Err(e.to_string()),
            ));
            return (checks, None);
        }
    };
    // Two threads: one reads the stored bytes (and hashes them), the other decrypts and walks
    // the archive (and the decryptor hashes for the MDC on a third). Each artifact is read
    // once.
    let hash = rehash == Rehash::Always || !(a.encrypted && dec.is_some());
    let (tx, mut stored) = pipe::pipe();
    let reading_cancel = cancel.clone();
    let reading = std::thread::spawn(move || -> io::Result<(Option<String>, u64)> {
        let mut src = Guard {
            inner: reader,
            cancel: &reading_cancel,
        };
        let mut tx = tx;
        if hash {
            let mut hashed = HashReader::new(src);
            pipe::pump(&mut hashed, &mut tx)?;
            tx.close()?;
            hashed.finish().map(|(sha, n)| (Some(sha), n))
        } else {
            let n = pipe::pump(&mut src, &mut tx)?;
            tx.close()?;
            Ok((None, n))
        }
    });
    let walk = {
        let plain: Result<Box<dyn Read + Send + Sync + '_>, String> = match (a.encrypted, dec) {
            (false, _) => Ok(Box::new(&mut stored)),
            (true, Some(dec)) => crypto::decrypt(&mut stored, dec).map_err(|e| e.to_string()),
            // No key: only the stored bytes can be checked (size and sha256 below).
            (true, None) => Err(String::new()),
        };
        match plain {
            Err(e) if e.is_empty() => None,
            Err(e) => {
                checks.push(Check::new(format!("{}: decrypts", a.path), Err(e)));
                None
            }
            Ok(plain) => {
                let mut plain = Trap {
                    inner: plain,
                    first_error: None,
                };
                let walk = walk_archive(&mut plain, a.kind, manifest, read_data);
                // Reading to the end checks the OpenPGP integrity protection (MDC).
                let rest = crate::archive::copy_large(&mut plain, &mut io::sink());
                let first_error = plain.first_error.take();
                drop(plain);
                let decrypted = match (first_error, rest) {
                    (Some(e), _) => Err(e),
                    (None, Err(e)) => Err(e.to_string()),
                    (None, Ok(_)) => Ok("integrity protection holds".to_owned()),
                };
                // What the walk saw is only worth something if the plaintext is authentic.
                let authentic = !a.encrypted || decrypted.is_ok();
                if a.encrypted {
                    checks.push(Check::new(format!("{}: decrypts", a.path), decrypted));
                }
                let (layout, walk) = match walk {
                    Ok(_) if !authentic => (Err(INCONCLUSIVE.to_owned()), None),
                    Ok((detail, walk)) => (Ok(detail), Some(walk)),
                    Err(e) => (Err(e), None),
                };
                checks.push(Check::new(format!("{}: layout", a.path), layout));
                if let Some(w) = &walk
                    && a.kind == ArtifactKind::Images
                    && read_data != ReadData::Layout
                {
                    checks.push(Check::new(
                        format!("{}: blob contents match their digests", a.path),
                        if w.bad_blobs.is_empty() {
                            Ok(format!("{} of {} blobs hashed", w.hashed, w.blobs.len()))
                        } else {
                            Err(format!(
                                "{} blobs do not hash to their digest: {}",
                                w.bad_blobs.len(),
                                w.bad_blobs
                                    .iter()
                                    .take(10)
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        },
                    ));
                }
                walk
            }
        }
    };
    // Whatever the walk did, let the reader finish so that the hash covers every byte.
    let _ = io::copy(&mut stored, &mut io::sink());
    let hashed = reading
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")));
    let name = if hash { "sha256" } else { "read back whole" };
    checks.push(Check::new(
        format!("{}: {name}", a.path),
        match hashed {
            Ok((Some(sha), n)) if sha == a.sha256 && n == a.size => Ok(sha),
            Ok((Some(sha), n)) => Err(format!(
                "{n} bytes with sha256 {sha}; the manifest records {} bytes with {}",
                a.size, a.sha256
            )),
            Ok((None, n)) if n == a.size => Ok(format!(
                "{n} bytes; not hashed again: the integrity protection covers every octet"
            )),
            Ok((None, n)) => Err(format!(
                "{n} bytes read back; the manifest records {}",
                a.size
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    (checks, walk)
}

/// Walks the archive (gzip or plain tar, sniffed) and checks where its members are: image
/// content under `<volume>/_data/docker/registry/v2/`, metadata under
/// `dtr-backup-v<version>[-online|-offline]/` with `rethink/properties/0`.
fn walk_archive(
    plain: &mut dyn Read,
    kind: ArtifactKind,
    manifest: &Manifest,
    read_data: ReadData,
) -> Result<(String, Walk), String> {
    let mut buffered = io::BufReader::with_capacity(1 << 16, plain);
    let gzip = io::BufRead::fill_buf(&mut buffered)
        .map_err(|e| format!("cannot read: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(crate::archive::records::CappedRecords::new(reader));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let volume = manifest.dtr.volume.clone().unwrap_or_default();
    let registry = format!("{volume}/_data/docker/registry/v2/");
    let version = manifest.dtr.version.clone().unwrap_or_default();
    let mut walk = Walk::default();
    let mut members = 0u64;
    let mut under_registry = 0u64;
    let mut top: Option<String> = None;
    let mut tables = BTreeSet::new();
    let mut properties = false;
    let mut buf = vec![0u8; 1 << 16];
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("archive broken after {members} members: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("member {members} has a bad name: {e}"))?
            .to_string_lossy()
            .into_owned();
        members += 1;
        match kind {
            ArtifactKind::Images => {
                if !(name == volume || name.starts_with(&format!("{volume}/"))) {
                    return Err(format!("member {name:?} is outside {volume}/"));
                }
                if name.starts_with(&registry) {
                    under_registry += 1;
                }
                if let Some(cap) = blob_path().captures(&name) {
                    let digest = cap[2].to_owned();
                    if cap[1] != digest[..2] {
                        walk.bad_blobs.push(format!("{name} (wrong folder)"));
                    }
                    if read_data.selects(&digest) {
                        let h = HashReader::new(&mut entry);
                        let (sha, _) = h.finish().map_err(|e| format!("reading {name}: {e}"))?;
                        walk.hashed += 1;
                        if sha != digest {
                            walk.bad_blobs
                                .push(format!("sha256:{digest} (content hashes to {sha})"));
                        }
                    }
                    walk.blobs.insert(digest);
                }
            }
            ArtifactKind::Metadata => {
                let first = name.split('/').next().unwrap_or("").to_owned();
                let top = top.get_or_insert_with(|| first.clone());
                let ok_top = top
                    .strip_prefix(&format!("dtr-backup-v{version}"))
                    .is_some_and(|r| r.is_empty() || r == "-online" || r == "-offline");
                if !ok_top {
                    return Err(format!(
                        "top folder {top:?} is not dtr-backup-v{version}[-online|-offline]"
                    ));
                }
                if first != *top {
                    return Err(format!("member {name:?} is outside {top}/"));
                }
                let mut parts = name.split('/').skip(1);
                if parts.next() == Some("rethink")
                    && let Some(table) = parts.next().filter(|t| !t.is_empty())
                {
                    tables.insert(table.to_owned());
                    let doc = parts.next().filter(|d| !d.is_empty());
                    if table == "properties" && doc == Some("0") {
                        properties = true;
                    }
                    if doc.is_some() && matches!(table, "manifests" | "blobs" | "blob_links") {
                        let mut text = Vec::new();
                        (&mut entry)
                            .take(16 << 20)
                            .read_to_end(&mut text)
                            .map_err(|e| format!("reading {name}: {e}"))?;
                        for cap in digest_ref().captures_iter(&String::from_utf8_lossy(&text)) {
                            walk.references.insert(cap[1].to_owned());
                        }
                    }
                }
            }
        }
        // Read what is left of the member (the archive must be whole).
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("reading {name}: {e}")),
            }
        }
    }
    let detail = match kind {
        ArtifactKind::Images if under_registry == 0 => {
            return Err(format!("no member under {registry}"));
        }
        ArtifactKind::Images => format!(
            "{members} members under {volume}/, {} blobs",
            walk.blobs.len()
        ),
        ArtifactKind::Metadata if !properties => {
            return Err("rethink/properties/0 is missing".to_owned());
        }
        ArtifactKind::Metadata => format!(
            "{} archive {}/ with {} tables ({}), {} blob references",
            if gzip { "gzip" } else { "tar" },
            top.unwrap_or_default(),
            tables.len(),
            tables.into_iter().collect::<Vec<_>>().join(", "),
            walk.references.len()
        ),
    };
    Ok((detail, walk))
}

/// Remembers the first read error of the plaintext (a failed integrity check), which a
/// decryptor may not repeat on later reads.
struct Trap<R> {
    inner: R,
    first_error: Option<String>,
}

impl<R: Read> Read for Trap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.first_error.get_or_insert_with(|| e.to_string());
        })
    }
}

/// Stops reading when cancelled.
struct Guard<'a, R> {
    inner: R,
    cancel: &'a Cancel,
}

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::failpoint::hit("verify.read");
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::ReadData;

    #[test]
    fn sample_is_fixed_and_about_the_size_asked() {
        let digests: Vec<String> = (0..2000)
            .map(|i| crate::archive::sha256_hex(format!("{i}").as_bytes()))
            .collect();
        let picked = digests
            .iter()
            .filter(|d| ReadData::Sample(10).selects(d))
            .count();
        assert!((120..=280).contains(&picked), "{picked}");
        let again = digests
            .iter()
            .filter(|d| ReadData::Sample(10).selects(d))
            .count();
        assert_eq!(picked, again);
        assert_eq!(
            digests.iter().filter(|d| ReadData::Full.selects(d)).count(),
            2000
        );
        assert_eq!(
            digests
                .iter()
                .filter(|d| ReadData::Layout.selects(d))
                .count(),
            0
        );
    }
}
