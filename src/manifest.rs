//! `manifest.json`: what a backup holds and what a restore needs. Written last; a backup
//! folder without it is incomplete by definition and never listed as a backup.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::{EncryptionCfg, ImagesCfg, Plan, ReplicaSel};
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
    /// UCP's own backup in this backup (`parts: [ucp, ...]`): which UCP made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucp: Option<UcpInfo>,
    /// Where image content came from: `volume`, `path`, `nfs`, `s3`, or `none`.
    pub storage: String,
    /// `passphrase`, `recipients` or `none`.
    pub encryption: String,
    pub artifacts: Vec<Artifact>,
    /// Image content kept object by object (images in S3): every object of the snapshot.
    /// Blobs live in the plan's shared blob store (`blobs/<store>/sha256/<ab>/<digest>`, see
    /// [`crate::blob_store`]), the other objects in the images artifact.
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

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DtrInfo {
    pub version: Option<String>,
    pub image: Option<String>,
    pub replica: Option<String>,
    pub node: Option<String>,
    /// The folder name image content restores to under /var/lib/docker/volumes.
    pub volume: Option<String>,
    /// DTR's external URL, when the plan says it (`dtr.external_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
}

/// The UCP whose backup a backup holds: UCP restores only into its own version.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UcpInfo {
    pub version: Option<String>,
    pub image: Option<String>,
    /// The manager node the backup ran on.
    pub node: Option<String>,
}

/// The member every UCP backup (`ArtifactKind::Ucp`) holds (UCP's documentation: "over 100
/// entries and `./ucp-node-certs/key.pem`").
pub const UCP_KEY_MEMBER: &str = "ucp-node-certs/key.pem";

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// UCP's own backup (users, organizations, teams, certificates): a tar from the UCP
    /// image's `backup` command.
    Ucp,
    Metadata,
    Images,
    /// The list of blobs the backup keeps in the blob store (`snapshot::FILE`).
    Blobs,
    /// The list of repository trees the backup keeps in the blob store
    /// (`snapshot::TREES_FILE`).
    Trees,
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

    /// Reads the manifest of the backup `id` (its folder's name). Beyond the JSON, it must be
    /// this dtr-backup's format, name its own folder, and keep every file inside it: artifact
    /// paths are plain file names and blob paths are the blob store's, so that a damaged or
    /// tampered manifest can never send a reader (or a delete) outside the backup.
    pub fn parse(bytes: &[u8], id: &str, what: &str) -> Result<Manifest> {
        let bad = |why: String| Error::Verify(format!("{what} is not a valid manifest: {why}"));
        // The format first: a newer release's manifest is named as such, not as corrupt.
        #[derive(Deserialize)]
        struct Format {
            format_version: u32,
        }
        let format: Format = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if !(1..=4).contains(&format.format_version) {
            return Err(Error::Verify(format!(
                "{what} has format_version {}; this dtr-backup reads 1 to 4: use the dtr-backup release that wrote it",
                format.format_version
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.backup_id != id {
            return Err(bad(format!(
                "it names backup {:?}, but lies in the folder {id:?}",
                m.backup_id
            )));
        }
        for a in &m.artifacts {
            if !is_plain_name(&a.path) {
                return Err(bad(format!(
                    "artifact path {:?} is not a file name in the backup's folder",
                    a.path
                )));
            }
        }
        for o in &m.objects {
            if let Some(b) = &o.blob
                && !crate::blob_store::is_blob_path(b, &o.sha256)
            {
                return Err(bad(format!(
                    "blob path {b:?} is not the blob store's path for sha256 {:?}",
                    o.sha256
                )));
            }
        }
        Ok(m)
    }

    pub fn total_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }
}

// The names of artifacts: the plan decides them (and the discovered replica, for the volume).

/// File name of UCP's backup, as the plan alone decides it.
pub fn ucp_artifact(plan: &Plan) -> String {
    let version = plan
        .ucp
        .as_ref()
        .and_then(|u| u.version.as_deref())
        .unwrap_or("unknown");
    format!("ucp-backup-v{version}.tar{}", gpg_suffix(plan))
}

/// File name of the metadata artifact.
pub fn metadata_artifact(plan: &Plan) -> String {
    let version = plan.dtr.version.as_deref().unwrap_or("unknown");
    format!("dtr-backup-v{version}.tar.gz{}", gpg_suffix(plan))
}

/// The folder name of the image content inside the archive (`<name>/_data/docker/...`), when
/// the plan alone decides it; `None` when it comes from the discovered replica.
pub fn images_volume_name(plan: &Plan) -> Option<String> {
    let pinned = match &plan.dtr.replica {
        ReplicaSel::Pinned(id) => Some(format!("dtr-registry-{id}")),
        ReplicaSel::Auto => None,
    };
    match plan.images.as_ref()? {
        ImagesCfg::Volume { name, .. } => name.clone().or(pinned),
        ImagesCfg::Path { path, name, .. } | ImagesCfg::Nfs { path, name, .. } => name
            .clone()
            .or(pinned)
            .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned())),
        ImagesCfg::S3(_) => name_for_s3(plan),
    }
}

fn name_for_s3(plan: &Plan) -> Option<String> {
    match &plan.dtr.replica {
        ReplicaSel::Pinned(id) => Some(format!("dtr-registry-{id}")),
        ReplicaSel::Auto => Some(format!("dtr-registry-{}", plan.name)),
    }
}

/// File name of the images artifact for a given volume folder name.
pub fn images_artifact(plan: &Plan, volume_name: &str) -> String {
    let short = volume_name
        .strip_prefix("dtr-registry-")
        .unwrap_or(volume_name);
    format!("dtr-images-{short}.tar{}", gpg_suffix(plan))
}

fn gpg_suffix(plan: &Plan) -> &'static str {
    if plan.encryption == EncryptionCfg::None {
        ""
    } else {
        ".gpg"
    }
}

/// A file name with no folder in it: not empty, no `/`, not `.` or `..`.
fn is_plain_name(p: &str) -> bool {
    !p.is_empty() && p != "." && p != ".." && !p.contains('/') && !p.contains('\\')
}

/// A backup folder whose `manifest.json` exists but cannot be read: corrupt, half-copied,
/// written by a newer dtr-backup, or naming another backup. It is never listed, picked as
/// latest, counted as complete, or deleted.
#[derive(Clone, Debug, Serialize)]
pub struct Unreadable {
    pub backup_id: String,
    pub reason: String,
}

impl Unreadable {
    /// The warning that names it and says what to do.
    pub fn warning(&self) -> String {
        format!(
            "skipping backup folder {}: {}; it is not listed, counted or deleted: inspect it, then repair or remove it by hand",
            self.backup_id, self.reason
        )
    }
}

/// The backups in a store: complete ones, oldest first, and the folders whose manifest
/// cannot be read.
#[derive(Debug, Default)]
pub struct Listing {
    pub complete: Vec<Manifest>,
    pub unreadable: Vec<Unreadable>,
}

impl Listing {
    /// Whether `id` is a folder with an unreadable manifest.
    pub fn is_unreadable(&self, id: &str) -> bool {
        self.unreadable.iter().any(|u| u.backup_id == id)
    }
}

/// Lists the backups in a store: folders named like backup ids that hold a manifest.
/// A manifest that cannot be read does not stop the listing (see [`Unreadable`]).
pub fn list(store: &dyn Store) -> Result<Listing> {
    let mut out = Listing::default();
    for id in store.list_dirs("")? {
        if crate::clock::backup_id_time(&id).is_none() {
            continue;
        }
        if let Some(bytes) = store.get(&format!("{id}/{FILE}"))? {
            match Manifest::parse(&bytes, &id, &format!("{id}/{FILE}")) {
                Ok(m) => out.complete.push(m),
                Err(e) => out.unreadable.push(Unreadable {
                    backup_id: id,
                    reason: e.to_string(),
                }),
            }
        }
    }
    out.complete.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(out)
}

/// Which backup a command is about: `latest` or an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    Latest,
    Id(String),
}

impl std::str::FromStr for Which {
    type Err = Error;
    /// `latest`, or a backup id; anything else (a path, say) is a usage error.
    fn from_str(s: &str) -> Result<Which> {
        if s == "latest" {
            Ok(Which::Latest)
        } else if crate::clock::backup_id_time(s).is_some() {
            Ok(Which::Id(s.to_owned()))
        } else {
            Err(Error::Usage(format!(
                "--backup {s:?} is not a backup id (like 20261124T164428Z-4a2a) or `latest`"
            )))
        }
    }
}

/// The id of the backup `which` names in `store`: `latest` is the newest complete one (folders
/// whose manifest cannot be read are passed to `warn` and skipped).
pub fn resolve(store: &dyn Store, which: &Which, warn: &dyn Fn(String)) -> Result<String> {
    match which {
        Which::Id(id) => Ok(id.clone()),
        Which::Latest => {
            let listing = list(store)?;
            for u in &listing.unreadable {
                warn(u.warning());
            }
            listing
                .complete
                .last()
                .map(|m| m.backup_id.clone())
                .ok_or_else(|| {
                    Error::Verify(format!(
                        "there is no complete backup at {}",
                        store.describe()
                    ))
                })
        }
    }
}

/// Reads the manifest of the complete backup `id`.
pub fn read(store: &dyn Store, id: &str) -> Result<Manifest> {
    let path = format!("{id}/{FILE}");
    match store.get(&path)? {
        Some(bytes) => Manifest::parse(&bytes, id, &path),
        None => Err(Error::Verify(format!(
            "{path} does not exist: no complete backup {id}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let digest = "ab".repeat(32);
        Manifest {
            format_version: 1,
            plan: "p".into(),
            plan_digest: "d".into(),
            backup_id: "20261124T164428Z-4a2a".into(),
            started_at: String::new(),
            finished_at: String::new(),
            dtr: DtrInfo::default(),
            ucp_url: None,
            ucp: None,
            storage: "path".into(),
            encryption: "none".into(),
            artifacts: vec![Artifact {
                kind: ArtifactKind::Images,
                path: "dtr-images-x.tar".into(),
                size: 1,
                sha256: digest.clone(),
                encrypted: false,
            }],
            objects: vec![SnapshotObject {
                key: format!("docker/registry/v2/blobs/sha256/ab/{digest}/data"),
                size: 1,
                sha256: digest.clone(),
                blob: Some(format!("blobs/p-01/sha256/ab/{digest}")),
                stored_size: None,
            }],
        }
    }

    /// Parses `m`; a refusal must be a verification failure, and its message is returned.
    fn parse(m: &Manifest) -> std::result::Result<Manifest, String> {
        Manifest::parse(&m.to_json(), "20261124T164428Z-4a2a", "m.json").map_err(|e| {
            assert!(matches!(e, Error::Verify(_)), "{e:?}");
            e.to_string()
        })
    }

    #[test]
    fn a_manifest_keeps_every_path_inside_its_backup() {
        assert!(parse(&sample()).is_ok());
        let mut m = sample();
        m.backup_id = "20261124T164428Z-ffff".into();
        assert!(parse(&m).unwrap_err().contains("lies in the folder"));
        for p in ["../../etc/passwd", "/etc/passwd", "a/b", "..", ""] {
            let mut m = sample();
            m.artifacts[0].path = p.into();
            assert!(parse(&m).unwrap_err().contains("not a file name"), "{p}");
        }
        let mut m = sample();
        m.objects[0].blob = Some("../../other/blobs/sha256/ab/x".into());
        assert!(parse(&m).unwrap_err().contains("blob store's path"));
        let mut m = sample();
        m.objects[0].sha256 = "../x".into();
        m.objects[0].blob = Some("blobs/sha256/../x".into());
        assert!(parse(&m).unwrap_err().contains("blob store's path"));
    }

    #[test]
    fn a_newer_format_is_named_as_such() {
        let err = Manifest::parse(b"{\"format_version\": 5}", "x", "x/manifest.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format_version 5"), "{err}");
    }
}
