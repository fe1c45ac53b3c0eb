//! Image content kept object by object in the blob store.

use std::collections::BTreeSet;
use std::io::Read;

use crate::archive::HashReader;
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::manifest::Manifest;
use crate::storage::Store;

use super::{Check, ReadData};

/// Image content kept object by object: every blob of the snapshot is in the blob store with
/// its stored size, and (with `--read-data`) decrypts to content that hashes to its digest.
/// Returns the digests of the snapshot's blobs.
pub(super) fn check_blob_store(
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
