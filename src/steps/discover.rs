//! Discover: find the DTR replica (and its node and version) through the Docker API, and hold
//! the rules that keep backups restorable: same replica as last time, same DTR version as the
//! plan's image.

use std::collections::BTreeMap;

use crate::docker;
use crate::error::{Error, Result};
use crate::manifest;
use crate::plan::{ImagesCfg, Plan};

use super::{Ctx, Described, Outcome, blocking};

pub fn describe(plan: &Plan) -> Described {
    let actions = vec![
        "list running containers matching (?:^|/)dtr-rethinkdb-([0-9a-f]{12})$".into(),
        "read DTR_VERSION from each replica's dtr-registry-<replica> container".into(),
        format!(
            "choose replica {} (the last complete backup's replica must not change)",
            plan.dtr.replica
        ),
    ];
    Described {
        inputs: vec![format!("replica {}", plan.dtr.replica)],
        outputs: vec!["replica id, node, DTR version".into()],
        actions,
    }
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let plan = ctx.plan.clone();
    let engine = docker::connect(&plan.docker)?;
    let found = docker::replicas(&engine).await?;
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
    Ok(Outcome {
        facts,
        ..Outcome::default()
    })
}
