//! `manifest.json`: what a backup holds and what a restore needs. Written last; a backup
//! folder without it is incomplete by definition and never listed as a backup.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Store;

pub const FILE: &str = "manifest.json";
/// The manifest before verification passed (`verify.after_apply`).
pub const PENDING: &str = ".manifest.pending.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    pub plan: String,
    /// sha256 of the plan file that made this backup.
    pub plan_digest: String,
    pub backup_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub dtr: DtrInfo,
    pub ucp_url: Option<String>,
    /// Where image content came from: `volume`, `path`, `nfs`, `s3`, or `none`.
    pub storage: String,
    /// `passphrase`, `recipients` or `none`.
    pub encryption: String,
    pub artifacts: Vec<Artifact>,
    /// Image content kept object by object (images in S3): every object of the snapshot.
    /// Blobs live in the plan's shared blob store (`blobs/sha256/<ab>/<digest>`), the other
    /// objects in the images artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<SnapshotObject>,
}

/// One object of an image-content snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotObject {
    /// Key under the registry root, e.g. `docker/registry/v2/blobs/sha256/ab/<digest>/data`.
    pub key: String,
    pub size: u64,
    /// sha256 of the content.
    pub sha256: String,
    /// Where it is kept: the blob store path (relative to the plan root), or `None` when it is
    /// a member of the images artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Size of the stored blob object (differs from `size` when encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<u64>,
}

/// Where the blob store keeps a blob.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}/{digest}", &digest[..2.min(digest.len())])
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DtrInfo {
    pub version: Option<String>,
    pub image: Option<String>,
    pub replica: Option<String>,
    pub node: Option<String>,
    /// The folder name image content restores to under /var/lib/docker/volumes.
    pub volume: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Metadata,
    Images,
}

/// One file of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// Relative to the backup's folder.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub encrypted: bool,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Verify(format!("{what} is not a valid manifest: {e}")))?;
        if m.format_version != 1 {
            return Err(Error::Verify(format!(
                "{what} has format_version {}; this dtr-backup reads 1",
                m.format_version
            )));
        }
        Ok(m)
    }

    pub fn total_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }
}

/// The complete backups in a store, oldest first: folders that hold a readable manifest.
pub fn list_complete(store: &dyn Store) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for id in store.list_dirs("")? {
        if crate::clock::backup_id_time(&id).is_none() {
            continue;
        }
        if let Some(bytes) = store.get(&format!("{id}/{FILE}"))? {
            let m = Manifest::parse(&bytes, &format!("{id}/{FILE}"))?;
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(out)
}
