//! Image content in a folder on this machine: `images.type: path`, or `nfs` (the folder must
//! be the NFS mount of the plan's server, checked at preflight and again right before
//! reading, so that a dropped mount never produces a "successful" backup of an empty folder).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{ImageSource, outcome, volume_name};
use crate::archive::tree;
use crate::error::{Error, Result, io};
use crate::manifest;
use crate::steps::stream::store_stream;
use crate::steps::{Ctx, Outcome, blocking};

pub struct Folder {
    pub path: PathBuf,
    /// `nfs`: the server the folder must be mounted from.
    pub nfs_server: Option<String>,
    pub allow_empty: bool,
}

impl Folder {
    fn check(&self) -> Result<()> {
        if let Some(server) = &self.nfs_server {
            crate::storage::nfs::check_mounted(&self.path, server)?;
        }
        check_registry_tree(&self.path, self.allow_empty)
    }
}

impl ImageSource for Folder {
    fn input(&self, _volume: &str) -> String {
        match &self.nfs_server {
            Some(server) => format!("nfs {} ({server})", self.path.display()),
            None => format!("path {}", self.path.display()),
        }
    }

    fn describe(&self, _volume: &str) -> String {
        self.path.display().to_string()
    }

    fn preflight_inputs(&self) -> Vec<String> {
        vec![match &self.nfs_server {
            Some(server) => format!("nfs mount {} from {server}", self.path.display()),
            None => format!("images path {}", self.path.display()),
        }]
    }

    fn describe_preflight(&self) -> Vec<String> {
        vec![format!(
            "check that {} holds docker/registry/v2",
            self.path.display()
        )]
    }

    fn preflight(&self) -> Result<()> {
        self.check()
    }

    fn back_up(&self, ctx: Ctx) -> BoxFuture<'static, Result<Outcome>> {
        let root = self.path.clone();
        let nfs = self.nfs_server.clone();
        Box::pin(async move {
            if let Some(server) = &nfs {
                // Checked again right before reading: the mount may have dropped since.
                crate::storage::nfs::check_mounted(&root, server)?;
            }
            let plan = ctx.plan.clone();
            let volume = volume_name(&ctx)?;
            let name = manifest::images_artifact(&plan, &volume);
            let path = ctx.backup_path(&name);

            let scan_root = root.clone();
            let tree = blocking(move || {
                tree::scan(&scan_root)
                    .map_err(|e| io(e, format!("reading {}", scan_root.display())))
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
        })
    }
}

/// A registry tree holds `docker/registry/v2`; an empty one is refused unless allowed, so that a
/// missing disk never produces a "successful" backup of nothing.
pub fn check_registry_tree(path: &Path, allow_empty: bool) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::source(format!(
            "the image content folder {} cannot be read: {e}; check `images.path`",
            path.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::source(format!(
            "{} is not a folder; `images.path` must be the folder that holds docker/registry/v2",
            path.display()
        )));
    }
    if !allow_empty && !path.join("docker/registry/v2").is_dir() {
        return Err(Error::source(format!(
            "{} holds no docker/registry/v2: is the storage mounted? Set `images.allow_empty: true` only if an empty registry is expected",
            path.display()
        )));
    }
    Ok(())
}
