//! Metadata: runs the `dtr backup` container and streams its stdout (the metadata archive) into
//! an encrypted artifact. The UCP password goes only into the container's environment; the
//! container has no TTY, no stdin and the `none` log driver, and is always removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::archive;
use crate::docker::{self, container};
use crate::error::{Error, Result, io};
use crate::events::Event;
use crate::manifest::{self, Artifact, ArtifactKind};
use crate::plan::{Plan, UcpTls};
use crate::steps::FileRef;

use super::stream::store_stream;
use super::{Ctx, Described, Outcome, blocking};

/// Bytes read before deciding gzip or tar and checking the first member.
const SNIFF: usize = 64 * 1024;

pub fn describe(plan: &Plan) -> Described {
    let mut inputs = vec![format!(
        "image {}",
        plan.dtr.image.as_deref().unwrap_or("(none)")
    )];
    if let Some(ucp) = &plan.ucp {
        inputs.push(format!("ucp {} as {}", ucp.url, ucp.username));
        inputs.push(format!("UCP_PASSWORD {}", ucp.password.redacted()));
        inputs.push(match &ucp.tls {
            UcpTls::Ca(p) => format!("ucp ca {}", p.display()),
            UcpTls::Insecure => "ucp tls unverified (--ucp-insecure-tls)".into(),
        });
    }
    if plan.dtr.offline {
        inputs.push("--offline-backup".into());
    }
    let mut out = Vec::new();
    if let Some(ucp) = &plan.ucp {
        let tls = match &ucp.tls {
            UcpTls::Ca(p) => format!("--ucp-ca <content of {}>", p.display()),
            UcpTls::Insecure => "--ucp-insecure-tls".into(),
        };
        out.push(format!(
            "docker create {} backup --ucp-url {} --ucp-username {} --existing-replica-id <replica> {tls}{} (no tty, stdin closed, log driver none, label {}={})",
            plan.dtr.image.as_deref().unwrap_or("?"),
            ucp.url,
            ucp.username,
            if plan.dtr.offline { " --offline-backup" } else { "" },
            container::LABEL_PLAN,
            plan.name
        ));
        out.push(format!("env UCP_PASSWORD={}", ucp.password.redacted()));
    }
    out.push("attach, start, stream stdout (checked: gzip or tar, first member dtr-backup-v<version>...)".into());
    out.push(format!(
        "encrypt and write <backup-id>/{} (temporary name, fsync, rename); remove the container",
        manifest::metadata_artifact(plan)
    ));
    Described {
        inputs,
        outputs: vec![format!(
            "{}{}",
            super::destination_text(plan),
            manifest::metadata_artifact(plan)
        )],
        actions: out,
    }
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let ucp = plan
        .ucp
        .clone()
        .ok_or_else(|| Error::internal("the metadata part needs a `ucp` section"))?;
    let image = plan
        .dtr
        .image
        .clone()
        .ok_or_else(|| Error::internal("the metadata part needs `dtr.image`"))?;
    let replica = ctx
        .facts
        .get("replica")
        .cloned()
        .ok_or_else(|| Error::internal("no replica was discovered"))?;
    let version = ctx
        .facts
        .get("version")
        .cloned()
        .or_else(|| plan.dtr.version.clone())
        .unwrap_or_default();
    let password = ctx
        .secrets
        .ucp_password
        .clone()
        .ok_or_else(|| Error::internal("the UCP password was not resolved"))?;

    let mut cmd: Vec<String> = [
        "backup",
        "--ucp-url",
        ucp.url.as_str(),
        "--ucp-username",
        &ucp.username,
        "--existing-replica-id",
        &replica,
    ]
    .map(str::to_owned)
    .to_vec();
    match &ucp.tls {
        UcpTls::Ca(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| io(e, format!("reading ucp.ca_file {}", path.display())))?;
            cmd.extend(["--ucp-ca".to_owned(), pem]);
        }
        UcpTls::Insecure => cmd.push("--ucp-insecure-tls".into()),
    }
    if plan.dtr.offline {
        cmd.push("--offline-backup".into());
    }

    let engine = docker::connect(&plan.docker)?;
    let id = container::create(
        &engine,
        container::Spec {
            image,
            cmd,
            entrypoint: None,
            // Handed to the Docker API (which keeps its own copies): see the README on the
            // password in the container's environment.
            env: vec![format!("UCP_PASSWORD={}", password.expose())],
            labels: HashMap::from([
                (container::LABEL_PLAN.to_owned(), plan.name.to_string()),
                (container::LABEL_RUN.to_owned(), ctx.backup_id.clone()),
                (container::LABEL_ROLE.to_owned(), "metadata".to_owned()),
            ]),
            binds: Vec::new(),
            node: ctx.facts.get("node").cloned(),
            stdin: false,
        },
    )
    .await?;
    let result = stream_metadata(
        &ctx,
        &engine,
        &id,
        &version,
        zeroize::Zeroizing::new(password.expose().to_owned()),
    )
    .await;
    if let Err(e) = container::remove(&engine, &id).await {
        ctx.warn(e);
    }
    let (name, written) = result?;
    let path = ctx.backup_path(&name);
    Ok(Outcome {
        artifacts: vec![Artifact {
            kind: ArtifactKind::Metadata,
            path: name,
            size: written.size,
            sha256: written.sha256,
            encrypted: ctx.secrets.encryption.is_encrypted(),
        }],
        files: vec![FileRef::new(path, written.size)],
        facts: BTreeMap::from([("metadata_version".to_owned(), version)]),
        objects: Vec::new(),
    })
}

async fn stream_metadata(
    ctx: &Ctx,
    engine: &docker::Engine,
    id: &str,
    version: &str,
    password: zeroize::Zeroizing<String>,
) -> Result<(String, super::stream::Written)> {
    let reporter = ctx.reporter.clone();
    let step = ctx.step_id.clone();
    let (mut feed, pump) = container::run_streaming(
        engine,
        id,
        vec![password],
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
            Error::container(format!("the dtr backup container failed: {e}"))
        });
    }
    let sniffed = archive::sniff(&prefix).map_err(|e| {
        Error::container(format!(
            "the dtr backup container's output is not a DTR backup: {e} (stdout must carry only the archive)"
        ))
    })?;
    let expected = format!("dtr-backup-v{version}");
    let rest = sniffed.first_member.strip_prefix(&expected);
    if !rest.is_some_and(|r| r.is_empty() || r.starts_with('/') || r.starts_with('-')) {
        // Stop reading first: the pump may be blocked on a full feed.
        drop(feed);
        let _ = pump.await;
        return Err(Error::container(format!(
            "the archive's first member is {:?}, not {expected}...: the image {} does not back up DTR {version}",
            sniffed.first_member,
            ctx.plan.dtr.image.as_deref().unwrap_or("?")
        )));
    }
    let name = format!(
        "dtr-backup-v{version}.tar{}{}",
        if sniffed.gzip { ".gz" } else { "" },
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
    let written = blocking(move || {
        let mut reader = feed.into_reader(prefix, ended);
        store_stream(
            move |pipe| crate::archive::copy_large(&mut reader, pipe).map(drop),
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
    let written = written.map_err(|e| e.context("the metadata backup failed"))?;
    Ok((name, written))
}
