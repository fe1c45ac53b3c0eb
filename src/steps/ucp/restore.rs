//! UCP's backup back through the UCP image's `restore`, as UCP's documentation prescribes for
//! 3.x: `docker container run --rm -i -v /var/run/docker.sock:/var/run/docker.sock
//! <ucp-image> restore < backup.tar`, on a node where UCP is not installed (`uninstall-ucp`
//! first), with the same version as the backup. The decrypted archive streams into the
//! container's standard input, never staged on disk; it was taken with `--no-passphrase`, so
//! no passphrase is given here either. Each line the container writes becomes a `log` event;
//! the container is removed whatever happens.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cancel::Cancel;
use crate::crypto::Decryption;
use crate::docker::{self, Engine, container};
use crate::error::{Error, Result};
use crate::events::{Event, Reporter};
use crate::manifest::{Artifact, ArtifactKind, Manifest};
use crate::plan::Plan;
use crate::steps::metadata_restore::Progress;
use crate::storage::Store;

use super::SOCKET;

/// The backup's UCP artifact, if it holds one.
pub fn artifact(m: &Manifest) -> Option<&Artifact> {
    m.artifacts.iter().find(|a| a.kind == ArtifactKind::Ucp)
}

/// The `restore` command line (without the image).
pub fn command() -> Vec<String> {
    vec!["restore".into()]
}

/// The image that restores: the plan's UCP image, which must be the backup's version.
pub fn image(plan: &Plan, m: &Manifest) -> Result<String> {
    let ucp = plan.ucp.as_ref().ok_or_else(|| {
        Error::Usage(
            "restoring UCP needs the plan's `ucp` section with `image`, the UCP image of the backup's version; or pass --only images or --only metadata".into(),
        )
    })?;
    let image = ucp.image.clone().ok_or_else(|| {
        Error::Usage(
            "restoring UCP needs `ucp.image`, the UCP image of the backup's version".into(),
        )
    })?;
    let backup_v = m
        .ucp
        .as_ref()
        .and_then(|u| u.version.clone())
        .ok_or_else(|| {
            Error::Verify(format!(
                "the manifest of {} does not record the UCP version (ucp.version)",
                m.backup_id
            ))
        })?;
    match &ucp.version {
        Some(plan_v) if *plan_v != backup_v => Err(Error::Usage(format!(
            "the plan's UCP image {image} is version {plan_v}, the backup {} is of UCP {backup_v}: UCP restores only into its own version; set ucp.image to the {backup_v} tag (e.g. {})",
            m.backup_id,
            with_tag(&image, &backup_v)
        ))),
        _ => Ok(image),
    }
}

/// `image` with its tag replaced by `version`.
fn with_tag(image: &str, version: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => format!("{repo}:{version}"),
        _ => format!("{name}:{version}"),
    }
}

/// What must hold before anything is written: the plan's UCP image is the backup's version,
/// and UCP is not installed on the engine (UCP's restore refuses to run over a running UCP;
/// its `uninstall-ucp` is the operator's call).
pub async fn preflight(plan: &Plan, m: &Manifest, engine: &Engine) -> Result<()> {
    let image = image(plan, m)?;
    // A client bundle reaches the engines through UCP itself, which is not there to restore
    // into once it is uninstalled.
    if engine.via_bundle {
        return Err(Error::Usage(
            "UCP's restore cannot run through a UCP client bundle (UCP must be uninstalled first, and the bundle reaches the engine through UCP): set docker.host to the engine of the manager node to restore on (e.g. unix:///var/run/docker.sock there), or pass --only images,metadata to restore DTR into the running UCP"
            .into(),
        ));
    }
    let running = docker::ucp_controllers(engine).await?;
    if !running.is_empty() {
        return Err(Error::refused(format!(
            "UCP still runs on {}: ucp-controller on {}; UCP restores only where it is not installed: to restore DTR alone into the running UCP, pass --only images,metadata; to restore UCP too, uninstall it first (`docker container run --rm -it -v {SOCKET}:{SOCKET} {image} uninstall-ucp --interactive`), then restore again",
            engine.endpoint,
            running
                .iter()
                .map(|c| c.node.as_deref().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Runs UCP's restore with the backup's UCP archive on its standard input. `progress` is
/// told the container's id before it starts, and when the whole archive is in (the journal
/// records both, as for DTR's restore). Returns the id of the container, exited with status
/// 0 and not yet removed: the caller records the success first, then removes it. On failure
/// the container is removed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    plan: &Plan,
    m: &Manifest,
    engine: &Engine,
    store: Arc<dyn Store>,
    dec: Option<Decryption>,
    reporter: Arc<dyn Reporter>,
    cancel: Cancel,
    progress: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<String> {
    let a = artifact(m)
        .ok_or_else(|| Error::Usage(format!("backup {} holds no UCP backup", m.backup_id)))?
        .clone();
    let image = image(plan, m)?;
    let id = container::create(
        engine,
        container::Spec {
            image: image.clone(),
            cmd: command(),
            entrypoint: None,
            env: Vec::new(),
            labels: HashMap::from([
                (container::LABEL_PLAN.to_owned(), plan.name.to_string()),
                (container::LABEL_RUN.to_owned(), m.backup_id.clone()),
                (container::LABEL_ROLE.to_owned(), "ucp-restore".to_owned()),
            ]),
            binds: vec![super::socket_bind(plan)],
            node: m.ucp.as_ref().and_then(|u| u.node.clone()),
            stdin: true,
        },
    )
    .await?;
    if let Err(e) = progress(Progress::Created(&id)) {
        let _ = container::remove(engine, &id).await;
        return Err(e);
    }
    let (rx, feeder) = crate::steps::stream::feed(
        store,
        format!("{}/{}", m.backup_id, a.path),
        a.encrypted,
        dec,
        cancel.clone(),
        "restore.ucp.feed",
    );
    let result = container::run_with_input(
        engine,
        &id,
        rx,
        Vec::new(),
        move |line| {
            reporter.emit(&Event::Log {
                step: "ucp".into(),
                message: line,
            })
        },
        || progress(Progress::Fed),
        cancel,
    )
    .await;
    let _ = feeder.join();
    match result {
        Ok(()) => Ok(id),
        Err(e) => {
            let _ = container::remove(engine, &id).await;
            Err(match e {
                Error::Container(msg) => {
                    Error::container(format!("UCP's restore ({image}) failed: {msg}"))
                }
                other => other,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_replaced() {
        assert_eq!(with_tag("docker/ucp:3.2.6", "3.2.5"), "docker/ucp:3.2.5");
        assert_eq!(
            with_tag("localhost:5000/mirantis/ucp:3.3.1", "3.3.2"),
            "localhost:5000/mirantis/ucp:3.3.2"
        );
        assert_eq!(
            with_tag("localhost:5000/ucp", "3.3.2"),
            "localhost:5000/ucp:3.3.2"
        );
    }
}
