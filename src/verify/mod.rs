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
//!
//! `mod.rs` holds the checks' vocabulary and the order of a backup's checks; `artifact.rs`
//! reads one artifact once (stored bytes, decryption, walk, each on its own thread);
//! `layout.rs` has the layout rules per artifact kind; `objects.rs` checks image content kept
//! object by object in the blob store.

mod artifact;
mod layout;
mod objects;

pub use objects::content_problem;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::events::Reporter;
use crate::manifest::{ArtifactKind, Manifest, Which};
use crate::progress::{Meter, Ticker};
use crate::storage::Store;
use crate::storage::metered::Metered;

use artifact::check_artifact;
use objects::check_blob_store;

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
/// checks is a report with failed checks. With a `reporter`, what is read is reported as the
/// progress of step `verify`.
pub fn stored(
    plan: &crate::plan::Plan,
    which: &Which,
    read_data: ReadData,
    cancel: &Cancel,
    warn: &dyn Fn(String),
    reporter: Option<Arc<dyn Reporter>>,
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
        let meter = Meter::default();
        let ticker = reporter.map(|r| {
            let total = to_read(store, m, Pass::Verify(read_data), dec.as_ref());
            Ticker::start(&meter, r, "verify", total)
        });
        let metered = Metered::wrap(stores.backups.clone(), &meter);
        checks.extend(check_backup(
            metered.as_ref(),
            m,
            dec.as_ref(),
            read_data,
            Rehash::Always,
            cancel,
        ));
        if let Some(t) = ticker {
            t.finish();
        }
    }
    Ok(Report { backup_id, checks })
}

/// A pass over a stored backup, for what it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// [`check_backup`] with this much of the data.
    Verify(ReadData),
    /// Restoring the image content (`steps::images::restore`).
    RestoreImages,
}

/// How many stored octets `pass` reads of `manifest`, for its progress: the artifacts it reads
/// (every one to verify, the images archives to restore), the lists of a snapshot and their
/// bases once more (each pass streams them), and the blob-store objects it reads, whose
/// sizes come from one more reading of the lists (only when objects are read). `None` when
/// something cannot be read: the pass itself will say what.
pub fn to_read(
    store: &dyn Store,
    manifest: &Manifest,
    pass: Pass,
    dec: Option<&Decryption>,
) -> Option<u64> {
    let artifacts: u64 = manifest
        .artifacts
        .iter()
        .filter(|a| pass != Pass::RestoreImages || a.kind == ArtifactKind::Images)
        .map(|a| a.size)
        .sum();
    let mut lists = 0;
    for a in &manifest.artifacts {
        if matches!(a.kind, ArtifactKind::Blobs | ArtifactKind::Trees) {
            lists += a.size;
        }
    }
    for base in crate::snapshot::bases_of(store, manifest).ok()? {
        lists += store.size(&base).ok()??;
    }
    let readable = manifest.encryption == "none" || dec.is_some();
    let select = match pass {
        Pass::Verify(ReadData::Layout) => None,
        Pass::Verify(rd) => readable.then_some(rd),
        Pass::RestoreImages => Some(ReadData::Full),
    };
    let mut objects = 0u64;
    if let Some(rd) = select.filter(|_| crate::snapshot::has_blobs(manifest)) {
        let all = crate::snapshot::blobs_of(store, manifest)
            .ok()?
            .chain(crate::snapshot::trees_of(store, manifest).ok()?);
        for kept in all {
            let kept = kept.ok()?;
            if rd.selects(&crate::snapshot::sha_hex(&kept.blob.digest)) {
                objects += kept.blob.stored;
            }
        }
    }
    Some(artifacts + lists + objects)
}

/// The check that every blob digest in `refs` is among the `present` blobs (`has` says
/// whether one is; the missing ones are listed).
pub fn references_present(
    name: &str,
    refs: &BTreeSet<String>,
    present: usize,
    has: impl Fn(&str) -> bool,
) -> Check {
    let missing: Vec<&String> = refs.iter().filter(|d| !has(d)).collect();
    Check::new(
        name,
        if missing.is_empty() {
            Ok(format!("{} referenced, {present} present", refs.len(),))
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
    )
}

/// The blob digests the backup's metadata references (`None` when it holds no metadata),
/// read from its metadata artifact: what a restored registry must be able to serve.
pub fn metadata_references(
    store: &dyn Store,
    manifest: &Manifest,
    dec: Option<&Decryption>,
    cancel: &Cancel,
) -> Result<Option<BTreeSet<String>>, String> {
    let Some(a) = manifest
        .artifacts
        .iter()
        .find(|a| a.kind == ArtifactKind::Metadata)
    else {
        return Ok(None);
    };
    let (checks, walk) = check_artifact(
        store,
        manifest,
        a,
        dec,
        ReadData::Layout,
        Rehash::Undecrypted,
        cancel,
    );
    match walk {
        Some(w) => Ok(Some(w.references)),
        None => Err(checks.into_iter().find(|c| !c.ok).map_or_else(
            || format!("{} was not read", a.path),
            |c| format!("{}: {}", c.name, c.detail),
        )),
    }
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
                ArtifactKind::Ucp | ArtifactKind::Blobs | ArtifactKind::Trees => {}
            }
        }
    }
    // Blobs kept in the blob store, sorted: 32 bytes each, however large the registry.
    let snapshot = if crate::snapshot::has_blobs(manifest) {
        let mut kept = check_blob_store(store, manifest, dec, read_data, cancel, &mut checks);
        kept.sort_unstable();
        kept.dedup();
        blobs.get_or_insert_default();
        kept
    } else {
        Vec::new()
    };
    if let (Some(refs), Some(archived)) = (references, blobs) {
        checks.push(references_present(
            "restorable: blobs referenced by metadata are in the image content",
            &refs,
            archived.len() + snapshot.len(),
            |d| {
                archived.contains(d)
                    || crate::snapshot::parse_sha(d)
                        .is_some_and(|s| snapshot.binary_search(&s).is_ok())
            },
        ));
    }
    checks
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
