//! Image content kept object by object in the blob store.

use std::collections::BTreeSet;
use std::io::Read;

use crate::archive::HashReader;
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::manifest::Manifest;
use crate::snapshot;
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
    let mut digests = BTreeSet::new();
    let mut missing = Vec::new();
    let mut bad = Vec::new();
    let mut hashed = 0usize;
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
        if read
            && (read_data.selects(&digest) || (read_data == ReadData::Written && kept.blob.fresh))
        {
            // Apply's read-back of what its own run wrote, encrypted: the integrity
            // protection covers every octet, and the content was checked against its digest
            // on the way in, so decrypting it whole is the check (no second SHA-256).
            let mdc_only = read_data == ReadData::Written && encrypted;
            let result = store.open(path).map_err(|e| e.to_string()).and_then(|r| {
                let mut plain: Box<dyn Read + Send + Sync> = match (encrypted, dec) {
                    (true, Some(d)) => crypto::decrypt(r, d).map_err(|e| e.to_string())?,
                    _ => r,
                };
                if mdc_only {
                    let n = std::io::copy(&mut plain, &mut std::io::sink())
                        .map_err(|e| e.to_string())?;
                    return Ok((digest.clone(), n));
                }
                HashReader::new(plain).finish().map_err(|e| e.to_string())
            });
            hashed += 1;
            match result {
                Ok((sha, size)) if sha == digest && size == kept.blob.size => {}
                Ok((sha, size)) if sha == digest => bad.push(format!(
                    "{path} ({size} bytes, {} recorded)",
                    kept.blob.size
                )),
                Ok((sha, _)) => bad.push(format!("{path} (content hashes to {sha})")),
                Err(e) => bad.push(format!("{path}: {e}")),
            }
        }
        if !tree {
            digests.insert(digest);
        }
    }
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
