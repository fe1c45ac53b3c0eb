//! Discover: find the DTR replica (and its node and version) through the Docker API, and hold
//! the rules that keep backups restorable: same replica as last time, same DTR version as the
//! plan's image. With UCP in the plan, also UCP's controller (its node and version): the UCP
//! image must be the running version too.

use std::collections::BTreeMap;

use crate::docker;
use crate::error::{Error, Result};
use crate::manifest;
use crate::plan::{ImagesCfg, Plan};

use super::{Ctx, Described, Outcome, blocking};

/// Whether the plan needs DTR's replica: for its metadata, or image content in its volume.
fn needs_replica(plan: &Plan) -> bool {
    plan.metadata || matches!(plan.images, Some(ImagesCfg::Volume { .. }))
}

pub fn describe(plan: &Plan) -> Described {
    let mut d = Described::default();
    if plan.ucp_backup {
        d.inputs
            .push(format!("UCP version {}", ucp_version(plan).unwrap_or("?")));
        d.actions.extend([
            "list running containers matching (?:^|/)ucp-controller$ (UCP's manager nodes)".into(),
            "the controller's image tag must be the version of ucp.image".into(),
        ]);
        d.outputs.push("UCP manager node, UCP version".into());
    }
    if needs_replica(plan) {
        d.inputs.push(format!("replica {}", plan.dtr.replica));
        d.actions.extend([
            "list running containers matching (?:^|/)dtr-rethinkdb-([0-9a-f]{12})$".into(),
            "read DTR_VERSION from each replica's dtr-registry-<replica> container".into(),
            format!(
                "choose replica {} (the last complete backup's replica must not change)",
                plan.dtr.replica
            ),
        ]);
        d.outputs.push("replica id, node, DTR version".into());
    }
    d
}

fn ucp_version(plan: &Plan) -> Option<&str> {
    plan.ucp.as_ref()?.version.as_deref()
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let engine = docker::connect(&plan.docker)?;
    let mut facts = BTreeMap::new();
    if plan.ucp_backup {
        facts.extend(ucp(&plan, &engine).await?);
    }
    if needs_replica(&plan) {
        facts.extend(replica(&ctx, &engine).await?);
    }
    Ok(Outcome {
        facts,
        ..Outcome::default()
    })
}

/// UCP's manager node and version: the UCP image's tag must be what the controller runs.
async fn ucp(plan: &Plan, engine: &docker::Engine) -> Result<BTreeMap<String, String>> {
    let image = plan
        .ucp
        .as_ref()
        .and_then(|u| u.image.as_deref())
        .ok_or_else(|| Error::internal("the ucp part needs `ucp.image`"))?;
    let want = ucp_version(plan).unwrap_or_default();
    let found = docker::ucp_controllers(engine).await?;
    let Some(first) = found.first() else {
        return Err(Error::ucp(format!(
            "no UCP manager found on {}: no running container is named ucp-controller; UCP's backup runs on a manager node: set docker.host to a manager's engine, or docker.bundle to a UCP client bundle",
            engine.endpoint
        )));
    };
    // Every manager runs the same version after an upgrade; one that differs is mid-upgrade.
    if let Some(other) = found.iter().find(|c| c.version.as_deref() != Some(want)) {
        return Err(Error::ucp(format!(
            "the plan's UCP image {image} is version {want}, but the ucp-controller on {} runs {} ({}); UCP restores only into its own version: set ucp.image to the running version's tag",
            other.node.as_deref().unwrap_or("?"),
            other
                .version
                .as_deref()
                .unwrap_or("an image without a version tag"),
            other.image
        )));
    }
    let mut facts = BTreeMap::from([("ucp_version".to_owned(), want.to_owned())]);
    if let Some(node) = &first.node {
        facts.insert("ucp_node".into(), node.clone());
    }
    Ok(facts)
}

/// The DTR replica to back up, its node and version.
async fn replica(ctx: &Ctx, engine: &docker::Engine) -> Result<BTreeMap<String, String>> {
    let plan = ctx.plan.clone();
    let found = docker::replicas(engine).await?;
    let stores = ctx.stores.clone();
    let listing = blocking(move || manifest::list(stores.backups.as_ref())).await?;
    for u in &listing.unreadable {
        ctx.warn(u.warning());
    }
    let last = listing
        .complete
        .into_iter()
        .rev()
        .find_map(|m| m.dtr.replica.map(|r| (m.backup_id, r)));
    let chosen = docker::choose(
        &found,
        &plan.dtr.replica,
        last.as_ref().map(|(_, r)| r.as_str()),
    )?;

    if let Some((id, last_replica)) = &last
        && *last_replica != chosen.id
    {
        let msg = format!(
            "the last complete backup ({id}) is of replica {last_replica}, this one would be of {}: always back up from the same replica for a smooth restore",
            chosen.id
        );
        if !ctx.allow_replica_change {
            return Err(Error::replica(format!(
                "{msg}; if the change is deliberate (the old replica is gone), run again with --allow-replica-change"
            )));
        }
        ctx.warn(msg);
    }

    let version = match (&plan.dtr.version, &chosen.version) {
        (Some(want), Some(runs)) if want != runs => {
            return Err(Error::replica(format!(
                "the plan's DTR image {} is version {want}, but replica {} runs DTR {runs}; restore needs the same version: set dtr.image to the {runs} tag",
                plan.dtr.image.as_deref().unwrap_or("?"),
                chosen.id
            )));
        }
        (_, Some(runs)) => runs.clone(),
        (Some(want), None) => {
            ctx.warn(format!(
                "cannot read DTR_VERSION of dtr-registry-{}; trusting the plan's version {want}",
                chosen.id
            ));
            want.clone()
        }
        (None, None) => String::new(),
    };

    let mut facts = BTreeMap::from([("replica".to_owned(), chosen.id.clone())]);
    if let Some(node) = &chosen.node {
        facts.insert("node".into(), node.clone());
    }
    if !version.is_empty() {
        facts.insert("version".into(), version);
    }
    if let Some(ImagesCfg::Volume { name, .. }) = &plan.images {
        facts.insert(
            "volume".into(),
            name.clone()
                .unwrap_or_else(|| format!("dtr-registry-{}", chosen.id)),
        );
    }
    Ok(facts)
}
