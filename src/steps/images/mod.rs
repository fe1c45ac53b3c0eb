//! Images: the registry's image content, from wherever DTR keeps it, laid out for restore
//! (`dtr-registry-<replica>/_data/docker/registry/v2/...`, so that
//! `tar -xf F -C /var/lib/docker/volumes` puts it back), encrypted on the way out.
//!
//! One file per source (`images.type`), each an [`ImageSource`]: how it describes itself, what
//! it checks at preflight, how it backs the content up. [`source`] is the one place that
//! picks the implementation for a plan.
//!
//! - `folder.rs`: `path` and `nfs` (a folder on this machine; NFS: the mount is checked);
//! - `volume.rs`: a Docker volume, read through a helper container;
//! - `s3.rs`: DTR's S3 storage, copied object by object into the blob store.

pub mod blobs;
mod folder;
pub(crate) mod known;
pub mod restore;
pub mod s3;
mod trees;
pub mod volume;
mod volume_blobs;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;

use crate::error::{Error, Result};
use crate::manifest::{self, Artifact, ArtifactKind};
use crate::plan::{ImagesCfg, ImagesMode, Plan};
use crate::steps::FileRef;

use super::stream::Written;
use super::{Ctx, Described, Outcome};

/// Where DTR keeps image content, as the images step reads it.
///
/// The descriptions are pure: no I/O, nothing secret.
pub trait ImageSource: Send + Sync {
    /// Where the content is read from, as the graph's input (`plan show`).
    fn input(&self, volume: &str) -> String;
    /// Where the content is read from, for `--dry-run`.
    fn describe(&self, volume: &str) -> String;
    /// What preflight reads of this source, as the graph's inputs.
    fn preflight_inputs(&self) -> Vec<String> {
        Vec::new()
    }
    /// What [`ImageSource::preflight`] checks, for `--dry-run`.
    fn describe_preflight(&self) -> Vec<String> {
        Vec::new()
    }
    /// What the images step writes, given the backup folder (`.../<backup-id>/`) and the
    /// images artifact's name.
    fn output(&self, backup_folder: &str, artifact: &str) -> String {
        format!("{backup_folder}{artifact}")
    }
    /// What can be checked before anything is written (preflight).
    fn preflight(&self) -> Result<()> {
        Ok(())
    }
    /// Backs the content up into the run's backup: the images step's whole work.
    fn back_up(&self, ctx: Ctx) -> BoxFuture<'static, Result<Outcome>>;
}

/// The source of a plan's image content.
pub fn source(cfg: &ImagesCfg) -> Box<dyn ImageSource> {
    match cfg {
        ImagesCfg::Path {
            path,
            allow_empty,
            mode,
            ..
        } => Box::new(folder::Folder {
            path: path.clone(),
            nfs_server: None,
            allow_empty: *allow_empty,
            mode: *mode,
        }),
        ImagesCfg::Nfs {
            path, server, mode, ..
        } => Box::new(folder::Folder {
            path: path.clone(),
            nfs_server: Some(server.to_string()),
            allow_empty: false,
            mode: *mode,
        }),
        ImagesCfg::Volume {
            helper_image, mode, ..
        } => Box::new(volume::Volume {
            helper_image: helper_image.clone(),
            mode: *mode,
        }),
        ImagesCfg::S3(cfg) => Box::new(s3::S3 { cfg: cfg.clone() }),
    }
}

pub fn describe(plan: &Plan) -> Described {
    let volume =
        manifest::images_volume_name(plan).unwrap_or_else(|| "dtr-registry-<replica>".into());
    let artifact = manifest::images_artifact(plan, &volume);
    let src = plan.images.as_ref().map(source);
    let from = src
        .as_ref()
        .map_or_else(|| "-".to_owned(), |s| s.describe(&volume));
    let dest = super::destination_text(plan);
    let mode = plan.images.as_ref().map(ImagesCfg::mode);
    let mode_name = match (mode, &plan.images) {
        (Some(ImagesMode::Archive), _) => "archive",
        _ => "incremental",
    };
    let mut d = Described {
        inputs: src
            .iter()
            .map(|s| format!("{} (mode {mode_name})", s.input(&volume)))
            .collect(),
        outputs: src.iter().map(|s| s.output(&dest, &artifact)).collect(),
        actions: vec![
            format!("tar {from} as {volume}/_data/... (symlinks kept, not followed)"),
            format!("encrypt and write <backup-id>/{artifact} (temporary name, fsync, rename)"),
        ],
    };
    // S3 sources say their own; folders and volumes keep blobs so in incremental mode.
    let not_s3 = matches!(
        plan.images,
        Some(ImagesCfg::Path { .. } | ImagesCfg::Nfs { .. } | ImagesCfg::Volume { .. })
    );
    if not_s3 && mode == Some(ImagesMode::Incremental) {
        // Folders keep each repository's own content as a tree of its own.
        let trees = matches!(
            plan.images,
            Some(ImagesCfg::Path { .. } | ImagesCfg::Nfs { .. })
        );
        let root = dest.trim_end_matches("<backup-id>/");
        let left_out = if trees {
            "docker/registry/v2/blobs and the repositories' own content"
        } else {
            "docker/registry/v2/blobs"
        };
        d.actions = vec![format!(
            "tar {from} but {left_out} as {volume}/_data/... (symlinks kept, not followed); encrypt and write <backup-id>/{artifact}"
        )];
        d.outputs.push(format!("{dest}{}", crate::snapshot::FILE));
        d.outputs.push(format!(
            "{root}blobs/<store>/sha256/ (shared by every backup)"
        ));
        if trees {
            d.outputs
                .push(format!("{dest}{}", crate::snapshot::TREES_FILE));
            d.outputs.push(format!(
                "{root}blobs/<store>/trees/ (shared by every backup)"
            ));
            d.actions.push(format!(
                "tar each repository's _layers, _manifests and _uploads on its own (not read when it is listed exactly as the last run saw it: trees.cache in the state folder; --read-all reads it); write it encrypted into blobs/<store>/trees/<ab>/<sha256 of the tar> unless the store holds it, and read it back (removed if it differs from what was written); write <backup-id>/{}",
                crate::snapshot::TREES_FILE
            ));
        }
        d.actions.extend([
            "list the blobs (docker/registry/v2/blobs/sha256/<ab>/<digest>/data) and the blob store once; copy each blob the store lacks, checked against its digest, encrypted on its own, into blobs/<store>/sha256/<ab>/<digest>, and read each back as soon as it is written (removed, and the run fails, if it differs from what was written); flush them once".into(),
            format!(
                "write <backup-id>/{} (every blob of the backup: digest, size, stored size)",
                crate::snapshot::FILE
            ),
        ]);
    }
    d
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let Some(images) = &ctx.plan.images else {
        return Err(Error::internal("the plan has no images section"));
    };
    source(images).back_up(ctx).await
}

/// The folder name of the image content in the archive: what discovery found, else what the
/// plan says (see `manifest::images_volume_name`).
fn volume_name(ctx: &Ctx) -> Result<String> {
    ctx.facts
        .get("volume")
        .cloned()
        .or_else(|| manifest::images_volume_name(&ctx.plan))
        .ok_or_else(|| Error::internal("the volume name of the image content is unknown"))
}

/// The outcome of an images step that wrote the artifact `name` at `path`.
fn outcome(ctx: &Ctx, name: String, path: String, written: Written, volume: &str) -> Outcome {
    Outcome {
        artifacts: vec![Artifact {
            kind: ArtifactKind::Images,
            path: name,
            size: written.size,
            sha256: written.sha256,
            encrypted: ctx.secrets.encryption.is_encrypted(),
        }],
        files: vec![FileRef::new(path, written.size)],
        facts: facts_of(volume, &ctx.plan),
        objects: Vec::new(),
    }
}

/// What the archive tells a restore: its folder name, and the replica when the name carries it.
fn facts_of(volume: &str, plan: &Plan) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::from([
        ("volume".to_owned(), volume.to_owned()),
        (
            "storage".to_owned(),
            plan.images.as_ref().map_or("none", |i| i.kind()).to_owned(),
        ),
    ]);
    if let Some(id) = volume.strip_prefix("dtr-registry-")
        && id.parse::<crate::plan::ReplicaId>().is_ok()
    {
        facts.insert("replica".to_owned(), id.to_owned());
    }
    facts
}

/// Runs `work` on each of `items` with `workers` threads, each taking the next item and
/// keeping a scratch buffer of `scratch` octets; returns the results in the order they
/// were finished. The first error stops every thread after the item it has in hand, and is
/// what returns.
pub(super) fn on_threads<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    scratch: usize,
    work: impl Fn(&T, &mut [u8]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(items.len()));
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                let mut buf = vec![0u8; scratch];
                while failed.lock().is_ok_and(|f| f.is_none()) {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    match work(item, &mut buf) {
                        Ok(r) => {
                            if let Ok(mut d) = done.lock() {
                                d.push(r);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or(None) {
        Some(e) => Err(e),
        None => Ok(done.into_inner().unwrap_or_default()),
    }
}
