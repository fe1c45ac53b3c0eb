//! Metadata back through the DTR image's `restore` command, as DTR's documentation
//! prescribes: `docker run -i <dtr image> restore --ucp-url ... --ucp-username ... --ucp-node
//! <node> --replica-id <replica> <one storage flag> < metadata.tar`. The password goes only
//! into the container's environment (`UCP_PASSWORD`); the decrypted metadata archive streams
//! into the container's standard input, never staged on disk; each line the container writes
//! becomes a `log` event; the container is removed whatever happens.
//!
//! Before anything is written, [`preflight`] checks what DTR's restore needs: the plan's DTR
//! image is the backup's version, no DTR replica runs (the old one must be destroyed first),
//! and UCP is reachable and accepts the login.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::crypto::Decryption;
use crate::docker::{self, Engine, container};
use crate::error::{Error, Result, io};
use crate::events::{Event, Reporter};
use crate::manifest::{Artifact, ArtifactKind, Manifest};
use crate::plan::{ImagesCfg, Plan, UcpCfg, UcpTls};
use crate::secret::Secret;
use crate::storage::Store;
use crate::ucp;

/// The backup's metadata artifact, if it holds one.
pub fn artifact(m: &Manifest) -> Option<&Artifact> {
    m.artifacts
        .iter()
        .find(|a| a.kind == ArtifactKind::Metadata)
}

pub fn ucp_of(plan: &Plan) -> Result<&UcpCfg> {
    plan.ucp.as_ref().ok_or_else(|| {
        Error::Usage(
            "restoring metadata needs the plan's `ucp` section (url, username, password, ca_file); or pass --only images".into(),
        )
    })
}

/// The one storage flag DTR's restore must be given: where the image content is.
pub fn storage_flag(plan: &Plan, m: &Manifest) -> Result<Vec<String>> {
    match (m.storage.as_str(), &plan.images) {
        ("nfs", Some(ImagesCfg::Nfs { server, .. })) => {
            let (host, export) = server.split_once(":/").unwrap_or((server.as_str(), ""));
            Ok(vec![
                "--nfs-storage-url".into(),
                format!("nfs://{host}/{export}"),
            ])
        }
        ("nfs", _) => Err(Error::Usage(
            "the backup's image content came from NFS, and the plan no longer says which export (images.server)".into(),
        )),
        ("s3", _) => Ok(vec!["--dtr-use-default-storage".into()]),
        _ => {
            let volume = m.dtr.volume.clone().ok_or_else(|| {
                Error::Verify(format!(
                    "the manifest of {} names no image-content volume (dtr.volume)",
                    m.backup_id
                ))
            })?;
            Ok(vec!["--dtr-storage-volume".into(), volume])
        }
    }
}

/// The `restore` command line (without the image), with `--ucp-ca` given as `ca` (the CA's
/// content for a run, a placeholder for a dry run).
pub fn command(
    plan: &Plan,
    m: &Manifest,
    ca: impl Fn(&std::path::Path) -> Result<String>,
) -> Result<Vec<String>> {
    let ucp = ucp_of(plan)?;
    let node = m.dtr.node.clone().ok_or_else(|| {
        Error::Verify(format!(
            "the manifest of {} does not record the node DTR ran on (dtr.node): restore it by hand with --ucp-node",
            m.backup_id
        ))
    })?;
    let replica = m.dtr.replica.clone().ok_or_else(|| {
        Error::Verify(format!(
            "the manifest of {} does not record the backed-up replica (dtr.replica)",
            m.backup_id
        ))
    })?;
    let mut cmd: Vec<String> = [
        "restore",
        "--ucp-url",
        ucp.url.as_str(),
        "--ucp-username",
        &ucp.username,
        "--ucp-node",
        &node,
        "--replica-id",
        &replica,
    ]
    .map(str::to_owned)
    .to_vec();
    // The backup's own record first: it is the DTR that was backed up.
    // What a manifest says is checked like a plan's value before it reaches a command line.
    let external = match &m.dtr.external_url {
        Some(u) => Some(
            u.parse::<crate::plan::DtrUrl>()
                .map_err(|e| {
                    Error::Verify(format!(
                        "the manifest of {} records dtr.external_url {u:?}: {e}",
                        m.backup_id
                    ))
                })?
                .to_string(),
        ),
        None => plan.dtr.external_url.as_ref().map(|u| u.to_string()),
    };
    if let Some(url) = external {
        cmd.extend(["--dtr-external-url".to_owned(), url]);
    }
    match &ucp.tls {
        UcpTls::Ca(path) => cmd.extend(["--ucp-ca".to_owned(), ca(path)?]),
        UcpTls::Insecure => cmd.push("--ucp-insecure-tls".into()),
    }
    cmd.extend(storage_flag(plan, m)?);
    Ok(cmd)
}

/// The image that restores: the plan's DTR image, which must be the backup's version.
fn image(plan: &Plan, m: &Manifest) -> Result<String> {
    let image = plan.dtr.image.clone().ok_or_else(|| {
        Error::Usage(
            "restoring metadata needs `dtr.image`, the DTR image of the backup's version".into(),
        )
    })?;
    match (&plan.dtr.version, &m.dtr.version) {
        (Some(plan_v), Some(backup_v)) if plan_v != backup_v => Err(Error::Usage(format!(
            "the plan's DTR image {image} is version {plan_v}, the backup {} is of DTR {backup_v}: DTR restores only into its own version; set dtr.image to docker/dtr:{backup_v}",
            m.backup_id
        ))),
        (_, None) => Err(Error::Verify(format!(
            "the manifest of {} does not record the DTR version",
            m.backup_id
        ))),
        _ => Ok(image),
    }
}

/// The engine DTR's restore runs on, reachable.
pub async fn engine(plan: &Plan) -> Result<Engine> {
    let engine = docker::connect(&plan.docker)?;
    engine.check().await?;
    Ok(engine)
}

/// What must hold before anything is written. `check_ucp`: UCP answers and accepts the
/// login (not while UCP itself is yet to be restored).
pub async fn preflight(
    plan: &Plan,
    m: &Manifest,
    engine: &Engine,
    password: &Secret,
    check_ucp: bool,
) -> Result<()> {
    image(plan, m)?;
    storage_flag(plan, m)?;
    let ucp = ucp_of(plan)?;
    let running = docker::replicas(engine).await?;
    if !running.is_empty() {
        return Err(Error::refused(format!(
            "DTR replicas still run on {}: {}; DTR restores only where none runs: remove the old one first (`docker run -it --rm docker/dtr:<version> destroy --ucp-insecure-tls`), then restore again",
            engine.endpoint,
            running
                .iter()
                .map(|r| format!("{} on {}", r.id, r.node.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if check_ucp {
        ucp::check(ucp, password, true).await?;
    }
    Ok(())
}

/// What [`run`] tells its caller as it goes, for the journal.
pub enum Progress<'a> {
    /// The container exists (not started yet).
    Created(&'a str),
    /// The whole archive is in its standard input, which is closed.
    Fed,
}

/// Runs DTR's restore with the backup's metadata on its standard input. `progress` is told
/// the container's id before it starts, and when the whole archive is in (the journal records
/// both). Returns the id of the container, exited with status 0 and not yet removed: the
/// caller records the success first, then removes it. On failure the container is removed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    plan: &Plan,
    m: &Manifest,
    engine: &Engine,
    store: std::sync::Arc<dyn Store>,
    dec: Option<Decryption>,
    password: &Secret,
    reporter: std::sync::Arc<dyn Reporter>,
    cancel: crate::cancel::Cancel,
    progress: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<String> {
    let a = artifact(m)
        .ok_or_else(|| Error::Usage(format!("backup {} holds no metadata", m.backup_id)))?
        .clone();
    let image = image(plan, m)?;
    let cmd = command(plan, m, |path| {
        std::fs::read_to_string(path)
            .map_err(|e| io(e, format!("reading ucp.ca_file {}", path.display())))
    })?;
    let id = container::create(
        engine,
        container::Spec {
            image,
            cmd,
            entrypoint: None,
            env: vec![format!("UCP_PASSWORD={}", password.expose())],
            labels: HashMap::from([
                (container::LABEL_PLAN.to_owned(), plan.name.to_string()),
                (container::LABEL_RUN.to_owned(), m.backup_id.clone()),
                (container::LABEL_ROLE.to_owned(), "restore".to_owned()),
            ]),
            binds: Vec::new(),
            node: m.dtr.node.clone(),
            stdin: true,
        },
    )
    .await?;
    if let Err(e) = progress(Progress::Created(&id)) {
        let _ = container::remove(engine, &id).await;
        return Err(e);
    }
    // The decrypted archive, read on a thread of its own, in chunks down a bounded channel.
    let (rx, feeder) = super::stream::feed(
        store,
        format!("{}/{}", m.backup_id, a.path),
        a.encrypted,
        dec,
        cancel.clone(),
        "restore.metadata.feed",
    );
    let step = "metadata".to_owned();
    let result = container::run_with_input(
        engine,
        &id,
        rx,
        vec![Zeroizing::new(password.expose().to_owned())],
        move |line| {
            reporter.emit(&Event::Log {
                step: step.clone(),
                message: line,
            })
        },
        || progress(Progress::Fed),
        cancel.clone(),
    )
    .await;
    let _ = feeder.join();
    match result {
        Ok(()) => Ok(id),
        Err(e) => {
            let _ = container::remove(engine, &id).await;
            Err(match e {
                Error::Container(msg) => Error::container(format!("DTR's restore failed: {msg}")),
                other => other,
            })
        }
    }
}
