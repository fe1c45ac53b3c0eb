//! Image content in a Docker volume on the replica's node (`images.type: volume`, DTR's default
//! local storage).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{ImageSource, outcome, volume_blobs, volume_name};
use crate::archive::tree;
use crate::cancel::Cancel;
use crate::docker::{self, container};
use crate::error::{Error, Result};
use crate::manifest;
use crate::plan::ImagesMode;
use crate::steps::stream::store_stream;
use crate::steps::{Ctx, Outcome, blocking};

pub struct Volume {
    /// The image of the helper container; default the plan's DTR image.
    pub helper_image: Option<String>,
    pub mode: ImagesMode,
}

impl ImageSource for Volume {
    fn input(&self, volume: &str) -> String {
        format!("volume {volume}")
    }

    fn describe(&self, volume: &str) -> String {
        format!("volume {volume} through a helper container")
    }

    fn back_up(&self, ctx: Ctx) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(from_volume(ctx, self.helper_image.clone(), self.mode))
    }
}

/// Image content in a Docker volume on the replica's node: a helper container (created, never
/// started) mounts it read-only, and the archive endpoint streams its files. Members are
/// re-rooted to `<volume>/_data/...`. The helper is always removed.
async fn from_volume(ctx: Ctx, helper_image: Option<String>, mode: ImagesMode) -> Result<Outcome> {
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
            image: image.clone(),
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
    if mode == ImagesMode::Incremental {
        let done = incremental(&ctx, &engine, &id, &image, &volume, name, path).await;
        if let Err(e) = container::remove(&engine, &id).await {
            ctx.warn(e);
        }
        return done;
    }
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

/// Incremental: `docker/registry/v2/repositories` as the archive (through the created
/// helper `id`), then the volume listed by a helper that runs `sh`, then only the blobs
/// the blob store lacks, each downloaded on its own (`volume_blobs`).
async fn incremental(
    ctx: &Ctx,
    engine: &docker::Engine,
    id: &str,
    image: &str,
    volume: &str,
    name: String,
    path: String,
) -> Result<Outcome> {
    let registry = "/storage/docker/registry/v2/repositories";
    let (mut feed, pump) = container::download(engine, id, registry, ctx.cancel.clone());
    let (first, ended) = feed.prefix(512).await;
    let empty =
        matches!(&ended, Some(Err(e)) if volume_blobs::gone(&std::io::Error::other(e.clone())));
    let progress = ctx.progress(None);
    let counter = progress.bytes.clone();
    let (stores, encryption, cancel) = (
        ctx.stores.clone(),
        Arc::new(ctx.secrets.encryption.clone()),
        ctx.cancel.clone(),
    );
    let object = path.clone();
    let root = format!("{volume}/_data/docker/registry/v2/repositories");
    let v2 = format!("{volume}/_data/docker/registry/v2");
    let written = blocking(move || {
        let reader = feed.into_reader(first, ended);
        let tar_cancel = cancel.clone();
        store_stream(
            move |pipe| {
                if empty {
                    // A registry nothing was pushed to: its folders only.
                    tree::folders(&v2, pipe).map(drop)
                } else {
                    tree::reroot(reader, "repositories", &root, pipe, &tar_cancel).map(drop)
                }
            },
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
    let mut done = outcome(ctx, name, path, written?, volume);

    let spec = volume_blobs::list_spec(
        image,
        volume,
        ctx.facts.get("node").cloned(),
        ctx.plan.name.as_str(),
        &ctx.backup_id,
    );
    let listing = volume_blobs::list(engine, spec, &ctx.cancel).await?;
    for o in listing.other.iter().take(20) {
        ctx.warn(format!(
            "{volume}: {o} is not registry content (docker/registry/v2/blobs or repositories): left out of the backup"
        ));
    }
    let source = volume_blobs::VolumeBlobs {
        engine: engine.clone(),
        id: id.to_owned(),
        volume: volume.to_owned(),
        listed: listing.blobs,
        handle: tokio::runtime::Handle::current(),
        cancel: ctx.cancel.clone(),
    };
    super::blobs::back_up_blobs(ctx, source, &mut done).await?;
    Ok(done)
}

/// The restore side: image content back into a Docker volume on the recorded node, through
/// helper containers of `image` that mount it at `/storage`. The content streams into a
/// created (never started) helper through the archive upload endpoint, under a staging
/// folder inside the volume; it is moved into place by a helper's `sh` once all of it is in
/// and checked. Nothing is staged on local disk. The helper image needs `sh` with `ls`,
/// `grep`, `mv`, `rm` and `sync` (busybox or alpine have them).
pub struct VolumeTarget {
    pub engine: docker::Engine,
    pub image: String,
    pub volume: String,
    pub node: Option<String>,
    pub plan: String,
    pub backup_id: String,
}

/// The staging folders of restores inside a target.
const STAGING: &str = ".dtr-backup-restore-";

impl VolumeTarget {
    fn spec(
        &self,
        entrypoint: Option<Vec<String>>,
        cmd: Vec<String>,
        env: Vec<String>,
        stdin: bool,
    ) -> container::Spec {
        container::Spec {
            image: self.image.clone(),
            cmd,
            entrypoint,
            env,
            labels: HashMap::from([
                (container::LABEL_PLAN.to_owned(), self.plan.clone()),
                (container::LABEL_RUN.to_owned(), self.backup_id.clone()),
                (
                    container::LABEL_ROLE.to_owned(),
                    "restore-helper".to_owned(),
                ),
            ]),
            binds: vec![format!("{}:/storage", self.volume)],
            node: self.node.clone(),
            stdin,
        }
    }

    /// Runs `script` with `sh -c` in a helper; its output lines, or an error with them.
    async fn script(&self, script: &str, env: Vec<String>, cancel: &Cancel) -> Result<Vec<String>> {
        let sh = vec!["sh".to_owned(), "-c".to_owned()];
        let id = container::create(
            &self.engine,
            self.spec(Some(sh), vec![script.to_owned()], env, true),
        )
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let ran = container::run_with_input(
            &self.engine,
            &id,
            rx,
            Vec::new(),
            move |l| sink.lock().expect("lines").push(l),
            || Ok(()),
            cancel.clone(),
        )
        .await;
        let _ = container::remove(&self.engine, &id).await;
        ran.map_err(|e| {
            Error::container(format!(
                "the helper container of image {} on the volume {}: {e}",
                self.image, self.volume
            ))
        })?;
        let out = lines.lock().expect("lines").clone();
        Ok(out)
    }

    /// The volume must hold nothing but the staging folders of interrupted restores, which
    /// are removed (reported through `warn`); else restore refuses and touches nothing.
    pub async fn prepare(&self, warn: &(dyn Fn(String) + Sync), cancel: &Cancel) -> Result<()> {
        // Shell globs only (no `ls`, no `grep`), and a last line that says it ran to its end:
        // a helper that cannot list the volume never makes it look empty.
        let script = format!(
            "cd /storage || exit 3\n\
             for e in * .[!.]* ..?*; do\n\
               [ -e \"$e\" ] || [ -L \"$e\" ] || continue\n\
               case \"$e\" in {STAGING}*) if [ -d \"$e\" ] && [ ! -L \"$e\" ]; then rm -rf \"$e\" || exit 4; echo \"removed $e\"; continue; fi ;; esac\n\
               echo \"entry $e\"\n\
             done\n\
             echo listed"
        );
        let lines = self.script(&script, Vec::new(), cancel).await?;
        if lines.last().map(String::as_str) != Some("listed") {
            return Err(Error::container(format!(
                "the helper container of image {} could not list the volume {}: {}",
                self.image,
                self.volume,
                lines.join("; ")
            )));
        }
        for l in &lines {
            if let Some(s) = l.strip_prefix("removed ") {
                warn(format!(
                    "removed {s} from the volume {}, left by an interrupted restore",
                    self.volume
                ));
            }
        }
        let others: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("entry "))
            .collect();
        if !others.is_empty() {
            return Err(Error::refused(format!(
                "the volume {} on {} is not empty (it holds {}): restore writes only into an empty volume; remove it and create it empty (`docker volume rm {0}; docker volume create {0}`), or restore into a folder with --images-to",
                self.volume,
                self.node.as_deref().unwrap_or(&self.engine.endpoint),
                others
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// Streams the image content of `m` into the volume under the folder `staging`, every
    /// blob checked against its digest on the way. On failure the caller discards `staging`.
    pub async fn upload(
        &self,
        store: Arc<dyn crate::storage::Store>,
        m: &manifest::Manifest,
        dec: Option<crate::crypto::Decryption>,
        staging: &str,
        cancel: &Cancel,
    ) -> Result<super::restore::Restored> {
        use bollard::query_parameters::UploadToContainerOptionsBuilder;
        let id = container::create(
            &self.engine,
            self.spec(Some(vec!["true".into()]), Vec::new(), Vec::new(), false),
        )
        .await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        let (m2, staging2, cancel2) = (m.clone(), staging.to_owned(), cancel.clone());
        let producer = tokio::task::spawn_blocking(move || {
            let out = ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
                complete: false,
            };
            super::restore::to_tar(store.as_ref(), &m2, dec.as_ref(), &staging2, out, &cancel2)
                .and_then(|(mut out, restored)| {
                    out.complete()
                        .map_err(|e| crate::error::io(e, "streaming the image content"))?;
                    Ok(restored)
                })
        });
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let uploaded = tokio::select! {
            u = self.engine.docker.upload_to_container(
                &id,
                Some(UploadToContainerOptionsBuilder::new().path("/storage").build()),
                bollard::body_try_stream(body),
            ) => u,
            _ = cancel.cancelled() => {
                let _ = container::remove(&self.engine, &id).await;
                let _ = producer.await;
                return Err(Error::Interrupted);
            }
        };
        let produced = producer
            .await
            .unwrap_or_else(|_| Err(Error::internal("the restore stream's thread panicked")));
        let _ = container::remove(&self.engine, &id).await;
        // What failed its checks comes first; else the engine's refusal.
        let restored = produced?;
        uploaded.map_err(|e| {
            Error::docker(format!(
                "uploading the image content into the volume {} on {}: {e}",
                self.volume, self.engine.endpoint
            ))
        })?;
        Ok(restored)
    }

    /// Moves what `staging` holds into the volume's root, then removes it and syncs.
    /// Idempotent: a staging folder that is gone was published whole.
    pub async fn publish(&self, staging: &str, cancel: &Cancel) -> Result<()> {
        let script = "cd /storage || exit 3\n\
             [ -d \"$STAGING\" ] || exit 0\n\
             for e in \"$STAGING\"/* \"$STAGING\"/.[!.]* \"$STAGING\"/..?*; do [ -e \"$e\" ] || continue; mv \"$e\" . || exit 1; done\n\
             rmdir \"$STAGING\" && sync";
        self.script(script, vec![format!("STAGING={staging}")], cancel)
            .await
            .map(drop)
    }

    /// Makes what was uploaded durable.
    pub async fn sync(&self, cancel: &Cancel) -> Result<()> {
        self.script("sync", Vec::new(), cancel).await.map(drop)
    }

    /// Removes `staging` from the volume (a restore that failed).
    pub async fn discard(&self, staging: &str, cancel: &Cancel) -> Result<()> {
        self.script(
            "rm -rf \"/storage/$STAGING\"",
            vec![format!("STAGING={staging}")],
            cancel,
        )
        .await
        .map(drop)
    }
}

const CHUNK: usize = 256 << 10;

/// Writes into a bounded channel in chunks. Unless completed, it ends the stream with an
/// error when dropped, and what it still buffers is never sent: a stream that stopped half-way
/// must never look like a whole archive to the receiving side.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    complete: bool,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the engine stopped reading the upload",
            )
        })
    }

    fn complete(&mut self) -> std::io::Result<()> {
        self.send()?;
        self.complete = true;
        Ok(())
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        if !self.complete {
            let _ = self.tx.blocking_send(Err(std::io::Error::other(
                "the restore stream stopped before its end",
            )));
        }
    }
}
