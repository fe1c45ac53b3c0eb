//! UCP's own backup in the same run: users, organizations and teams live in UCP, not in DTR's
//! metadata. The UCP image's `backup` command runs as UCP's documentation prescribes for 3.x
//! (on a manager node, `/var/run/docker.sock` mounted, no TTY, stdin closed, log driver
//! `none`), with `--no-passphrase`: its stdout, a tar, streams into the artifact pipeline and
//! is encrypted there with the plan's encryption, so the archive never touches disk in clear
//! and no passphrase reaches a command line (UCP's `--passphrase` would put it in the
//! container's argv, which `docker inspect` shows). The tar is followed member by member as it
//! passes: one without `ucp-node-certs/key.pem` (the check UCP's documentation gives) is no UCP
//! backup, and is not kept.
//!
//! `restore.rs` brings it back through the same image's `restore`.

pub mod restore;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::archive::records::CappedRecords;
use crate::docker::{self, container};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::manifest::{self, Artifact, ArtifactKind};
use crate::plan::Plan;
use crate::steps::FileRef;

use super::stream::store_stream;
use super::{Ctx, Described, Outcome, blocking};

/// The member every UCP backup holds (kept with the artifact kinds, for verify too).
pub use crate::manifest::UCP_KEY_MEMBER as KEY_MEMBER;

/// Where UCP's containers reach the engine; the backup and restore need the node's socket
/// (`ucp.docker_socket`) mounted there.
pub const SOCKET: &str = "/var/run/docker.sock";

/// The bind of the node's Docker socket into a UCP container.
pub fn socket_bind(plan: &Plan) -> String {
    let node = plan
        .ucp
        .as_ref()
        .map_or(SOCKET, |u| u.docker_socket.as_str());
    format!("{node}:{SOCKET}")
}

/// Bytes read before deciding that the output is a tar.
const SNIFF: usize = 512;

/// The `backup` command line (without the image).
pub fn backup_command() -> Vec<String> {
    vec!["backup".into(), "--no-passphrase".into()]
}

pub fn describe(plan: &Plan) -> Described {
    let image = plan
        .ucp
        .as_ref()
        .and_then(|u| u.image.as_deref())
        .unwrap_or("?");
    Described {
        inputs: vec![
            format!("image {image}"),
            format!("{} of a UCP manager node", socket_bind(plan)),
        ],
        outputs: vec![format!(
            "{}{}",
            super::destination_text(plan),
            manifest::ucp_artifact(plan)
        )],
        actions: vec![
            format!(
                "docker create {image} {} (on the manager running ucp-controller; bind {}; no tty, stdin closed, log driver none, label {}={})",
                backup_command().join(" "),
                socket_bind(plan),
                container::LABEL_PLAN,
                plan.name
            ),
            format!(
                "attach, start, stream stdout (checked: a tar holding {KEY_MEMBER}); the container's stderr lines become log events"
            ),
            format!(
                "encrypt and write <backup-id>/{} (temporary name, fsync, rename); remove the container",
                manifest::ucp_artifact(plan)
            ),
        ],
    }
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let ucp = plan
        .ucp
        .clone()
        .ok_or_else(|| Error::internal("the ucp part needs a `ucp` section"))?;
    let image = ucp
        .image
        .clone()
        .ok_or_else(|| Error::internal("the ucp part needs `ucp.image`"))?;
    let version = ctx
        .facts
        .get("ucp_version")
        .cloned()
        .or_else(|| ucp.version.clone())
        .unwrap_or_default();
    let engine = docker::connect(&plan.docker)?;
    let id = container::create(
        &engine,
        container::Spec {
            image: image.clone(),
            cmd: backup_command(),
            entrypoint: None,
            env: Vec::new(),
            labels: HashMap::from([
                (container::LABEL_PLAN.to_owned(), plan.name.to_string()),
                (container::LABEL_RUN.to_owned(), ctx.backup_id.clone()),
                (container::LABEL_ROLE.to_owned(), "ucp".to_owned()),
            ]),
            binds: vec![socket_bind(&plan)],
            node: ctx.facts.get("ucp_node").cloned(),
            stdin: false,
        },
    )
    .await?;
    let result = stream_backup(&ctx, &engine, &id, &image, &version).await;
    if let Err(e) = container::remove(&engine, &id).await {
        ctx.warn(e);
    }
    let (name, written, members) = result?;
    ctx.reporter.emit(&Event::Log {
        step: ctx.step_id.clone(),
        message: format!(
            "UCP {version}: {members} members, {KEY_MEMBER} among them ({} bytes stored)",
            written.size
        ),
    });
    let path = ctx.backup_path(&name);
    Ok(Outcome {
        artifacts: vec![Artifact {
            kind: ArtifactKind::Ucp,
            path: name,
            size: written.size,
            sha256: written.sha256,
            encrypted: ctx.secrets.encryption.is_encrypted(),
        }],
        files: vec![FileRef::new(path, written.size)],
        facts: BTreeMap::from([("ucp_version".to_owned(), version)]),
        objects: Vec::new(),
    })
}

/// Streams the container's stdout into the artifact; returns its name, what was written and
/// how many members the tar had.
async fn stream_backup(
    ctx: &Ctx,
    engine: &docker::Engine,
    id: &str,
    image: &str,
    version: &str,
) -> Result<(String, super::stream::Written, u64)> {
    let reporter = ctx.reporter.clone();
    let step = ctx.step_id.clone();
    let (mut feed, pump) = container::run_streaming(
        engine,
        id,
        Vec::new(),
        move |line| {
            reporter.emit(&Event::Log {
                step: step.clone(),
                message: line,
            })
        },
        ctx.cancel.clone(),
    )
    .await?;
    let (prefix, ended) = feed.prefix(SNIFF).await;
    if let Some(Err(e)) = &ended {
        drop(feed);
        let _ = pump.await;
        return Err(if ctx.cancel.is_cancelled() {
            Error::Interrupted
        } else {
            Error::container(format!(
                "the UCP backup container ({image}) failed: {e}; it must run on a manager node with {SOCKET} mounted"
            ))
        });
    }
    let not_tar = if prefix.is_empty() {
        Some("it wrote nothing on stdout".to_owned())
    } else {
        match crate::archive::sniff(&prefix) {
            Ok(s) if !s.gzip => None,
            Ok(_) => Some("its stdout is gzip, not the tar UCP writes".to_owned()),
            Err(e) => Some(format!("its stdout is not a tar archive ({e})")),
        }
    };
    if let Some(why) = not_tar {
        drop(feed);
        let _ = pump.await;
        return Err(Error::container(format!(
            "the UCP backup container ({image}) made no backup: {why}; check that {image} is UCP's image and that stdout carries only the archive"
        )));
    }
    let name = format!(
        "ucp-backup-v{version}.tar{}",
        if ctx.secrets.encryption.is_encrypted() {
            ".gpg"
        } else {
            ""
        }
    );
    let path = ctx.backup_path(&name);
    let progress = ctx.progress(None);
    let counter = progress.bytes.clone();
    let (stores, encryption, cancel) = (
        ctx.stores.clone(),
        Arc::new(ctx.secrets.encryption.clone()),
        ctx.cancel.clone(),
    );
    // How the tar ended, as the producer saw it: members, whether the key was among them,
    // whether it ended as a whole archive does.
    let seen = Arc::new(Mutex::new(None::<(u64, bool, bool)>));
    let verdict = seen.clone();
    let written = blocking(move || {
        let mut reader = CappedRecords::watching(feed.into_reader(prefix, ended), KEY_MEMBER);
        store_stream(
            move |pipe| {
                crate::archive::copy_large(&mut reader, pipe)?;
                let (members, key, whole) = (reader.members(), reader.seen(), reader.ended_whole());
                if let Ok(mut v) = verdict.lock() {
                    *v = Some((members, key, whole));
                }
                if !key || !whole {
                    // Not kept: the artifact is never published under its name.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no UCP backup",
                    ));
                }
                Ok(())
            },
            stores.backups.as_ref(),
            &path,
            &encryption,
            &cancel,
            counter,
        )
    })
    .await;
    let _ = pump.await;
    drop(progress);
    let seen = seen.lock().ok().and_then(|s| *s);
    match (written, seen) {
        (Ok(w), Some((members, true, true))) => Ok((name, w, members)),
        (_, Some((members, false, _))) => Err(Error::container(format!(
            "the UCP backup container ({image}) wrote a tar of {members} members without {KEY_MEMBER}: that is no UCP backup, and it was not kept; check that {image} is UCP's image"
        ))),
        (_, Some((members, true, false))) => Err(Error::container(format!(
            "the UCP backup container's tar ended after {members} members without the end of an archive: its output was cut short, and it was not kept; run the backup again"
        ))),
        (Err(e), _) => Err(e.context("UCP's backup failed")),
        (Ok(_), None) => Err(Error::internal("UCP's backup ended without a verdict")),
    }
}
