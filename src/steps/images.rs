//! Images: the registry tree as a tar archive laid out for restore
//! (`dtr-registry-<replica>/_data/docker/registry/v2/...`, so that
//! `tar -xf F -C /var/lib/docker/volumes` puts it back), encrypted on the way out.

use std::collections::BTreeMap;

use crate::archive::tree;
use crate::error::{Error, Result, io};
use crate::manifest::{self, Artifact, ArtifactKind};
use crate::plan::{ImagesCfg, Plan};
use crate::steps::FileRef;

use super::stream::{Written, store_stream};
use super::{Ctx, Outcome, blocking};
use crate::docker::{self, container};
use std::collections::HashMap;
use std::sync::Arc;

pub fn describe(plan: &Plan) -> Vec<String> {
    let volume =
        manifest::images_volume_name(plan).unwrap_or_else(|| "dtr-registry-<replica>".into());
    let source = match &plan.images {
        Some(ImagesCfg::Path { path, .. } | ImagesCfg::Nfs { path, .. }) => {
            path.display().to_string()
        }
        Some(ImagesCfg::Volume { .. }) => format!("volume {volume} through a helper container"),
        Some(ImagesCfg::S3(s3)) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        None => "-".into(),
    };
    vec![
        format!("tar {source} as {volume}/_data/... (symlinks kept, not followed)"),
        format!(
            "encrypt and write <backup-id>/{} (temporary name, fsync, rename)",
            manifest::images_artifact(plan, &volume)
        ),
    ]
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let root = match &plan.images {
        Some(ImagesCfg::Path { path, .. }) => path.clone(),
        Some(ImagesCfg::Nfs { path, server, .. }) => {
            // Checked again right before reading: the mount may have dropped since preflight.
            crate::storage::nfs::check_mounted(path, server)?;
            path.clone()
        }
        Some(ImagesCfg::Volume { helper_image, .. }) => {
            return from_volume(ctx, helper_image.clone()).await;
        }
        Some(ImagesCfg::S3(cfg)) => return super::images_s3::run(ctx, cfg.clone()).await,
        None => return Err(Error::failed("the plan has no images section")),
    };
    let volume = volume_name(&ctx)?;
    let name = manifest::images_artifact(&plan, &volume);
    let path = ctx.backup_path(&name);

    let scan_root = root.clone();
    let tree = blocking(move || {
        tree::scan(&scan_root).map_err(|e| io(e, format!("reading {}", scan_root.display())))
    })
    .await?;
    let progress = ctx.progress(Some(tree.total));
    let counter = progress.bytes.clone();
    let prefix = format!("{volume}/_data");
    let (stores, encryption, cancel) = (
        ctx.stores.clone(),
        Arc::new(ctx.secrets.encryption.clone()),
        ctx.cancel.clone(),
    );
    let object_path = path.clone();
    let written = blocking(move || {
        let tar_cancel = cancel.clone();
        store_stream(
            move |pipe| tree::write_tar(&tree, &prefix, pipe, &tar_cancel).map(drop),
            stores.backups.as_ref(),
            &object_path,
            &encryption,
            &cancel,
            counter,
        )
    })
    .await?;
    drop(progress);
    Ok(outcome(&ctx, name, path, written, &volume))
}

/// The folder name of the image content in the archive: what discovery found, else what the
/// plan says (see `manifest::images_volume_name`).
pub(super) fn volume_name(ctx: &Ctx) -> Result<String> {
    ctx.facts
        .get("volume")
        .cloned()
        .or_else(|| manifest::images_volume_name(&ctx.plan))
        .ok_or_else(|| Error::failed("the volume name of the image content is unknown"))
}

/// The outcome of an images step that wrote the artifact `name` at `path`.
pub(super) fn outcome(
    ctx: &Ctx,
    name: String,
    path: String,
    written: Written,
    volume: &str,
) -> Outcome {
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

/// Image content in a Docker volume on the replica's node: a helper container (created, never
/// started) mounts it read-only, and the archive endpoint streams its files. Members are
/// re-rooted to `<volume>/_data/...`. The helper is always removed.
async fn from_volume(ctx: Ctx, helper_image: Option<String>) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let volume = volume_name(&ctx)?;
    let image = helper_image
        .or_else(|| plan.dtr.image.clone())
        .ok_or_else(|| Error::failed("set `images.helper_image` or `dtr.image`: the volume is read through a container of that image"))?;
    let engine = docker::connect(&plan.docker)?;
    engine.docker.inspect_volume(&volume).await.map_err(|e| {
        Error::failed(format!(
            "the volume {volume} cannot be read on {}: {e}; check images.name and the replica",
            engine.endpoint
        ))
    })?;
    let id = container::create(
        &engine,
        container::Spec {
            image,
            cmd: vec!["true".into()],
            entrypoint: None,
            env: Vec::new(),
            labels: HashMap::from([
                (container::LABEL_PLAN.to_owned(), plan.name.to_string()),
                (container::LABEL_RUN.to_owned(), ctx.backup_id.clone()),
                (container::LABEL_ROLE.to_owned(), "images-helper".to_owned()),
            ]),
            binds: vec![format!("{volume}:/storage:ro")],
            node: ctx.facts.get("node").cloned(),
        },
    )
    .await?;
    let name = manifest::images_artifact(&plan, &volume);
    let path = ctx.backup_path(&name);
    let (feed, pump) = container::download(&engine, &id, "/storage", ctx.cancel.clone());
    let progress = ctx.progress(None);
    let counter = progress.bytes.clone();
    let (stores, encryption, cancel) = (
        ctx.stores.clone(),
        Arc::new(ctx.secrets.encryption.clone()),
        ctx.cancel.clone(),
    );
    let object = path.clone();
    let root = format!("{volume}/_data");
    let written = blocking(move || {
        let reader = feed.into_reader(Vec::new(), None);
        let tar_cancel = cancel.clone();
        store_stream(
            move |pipe| tree::reroot(reader, "storage", &root, pipe, &tar_cancel).map(drop),
            stores.backups.as_ref(),
            &object,
            &encryption,
            &cancel,
            counter,
        )
    })
    .await;
    let _ = pump.await;
    drop(progress);
    if let Err(e) = container::remove(&engine, &id).await {
        ctx.warn(e);
    }
    Ok(outcome(&ctx, name, path, written?, &volume))
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
