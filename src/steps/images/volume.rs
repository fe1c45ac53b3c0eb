//! Image content in a Docker volume on the replica's node (`images.type: volume`, DTR's default
//! local storage).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{ImageSource, outcome, volume_name};
use crate::archive::tree;
use crate::docker::{self, container};
use crate::error::{Error, Result};
use crate::manifest;
use crate::steps::stream::store_stream;
use crate::steps::{Ctx, Outcome, blocking};

pub struct Volume {
    /// The image of the helper container; default the plan's DTR image.
    pub helper_image: Option<String>,
}

impl ImageSource for Volume {
    fn input(&self, volume: &str) -> String {
        format!("volume {volume}")
    }

    fn describe(&self, volume: &str) -> String {
        format!("volume {volume} through a helper container")
    }

    fn back_up(&self, ctx: Ctx) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(from_volume(ctx, self.helper_image.clone()))
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
        .ok_or_else(|| Error::source("set `images.helper_image` or `dtr.image`: the volume is read through a container of that image"))?;
    let engine = docker::connect(&plan.docker)?;
    engine.docker.inspect_volume(&volume).await.map_err(|e| {
        Error::source(format!(
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
            stdin: false,
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
