//! Manifest: records what the backup holds and what a restore needs. Without verification
//! after apply it is written as `manifest.json` at once; otherwise as a pending manifest that
//! the verify step publishes when every check passed.

use crate::clock;
use crate::error::Result;
use crate::manifest::{self, DtrInfo, Manifest};
use crate::plan::{EncryptionCfg, Plan};
use crate::steps::FileRef;

use super::{Ctx, Described, Outcome, blocking};

/// The inputs are the artifacts of the steps before; `graph::compile` lists them.
pub fn describe(plan: &Plan) -> Described {
    let name = if plan.verify_after_apply {
        manifest::PENDING
    } else {
        manifest::FILE
    };
    Described {
        inputs: vec![],
        outputs: vec![format!(
            "{}{}",
            super::destination_text(plan),
            manifest::FILE
        )],
        actions: vec![format!(
            "write <backup-id>/{name}: plan digest, {}DTR version and image, replica, artifacts with sizes and sha256",
            if plan.ucp_backup {
                "UCP version and image, "
            } else {
                ""
            }
        )],
    }
}

pub fn build(ctx: &Ctx) -> Manifest {
    let plan = &ctx.plan;
    let fact = |k: &str| ctx.facts.get(k).cloned();
    // A backup whose blobs are listed in `blobs.list` is format 3 (its lists name a base in
    // the blob store; 2 had whole lists): releases that read only 1 or 2 skip it (and then
    // delete no blob), rather than take its blobs for unreferenced or misread its lists.
    let listed = ctx
        .artifacts
        .iter()
        .any(|a| a.kind == manifest::ArtifactKind::Blobs);
    // UCP's backup is format 4: releases that read only 1 to 3 refuse it by its format
    // instead of taking an unknown artifact kind for a damaged manifest.
    let with_ucp = ctx
        .artifacts
        .iter()
        .any(|a| a.kind == manifest::ArtifactKind::Ucp);
    Manifest {
        format_version: if with_ucp {
            4
        } else if listed {
            3
        } else {
            1
        },
        plan: plan.name.to_string(),
        plan_digest: plan.digest.clone(),
        backup_id: ctx.backup_id.clone(),
        started_at: clock::rfc3339(ctx.started_at),
        finished_at: clock::rfc3339(clock::now_unix()),
        dtr: DtrInfo {
            version: fact("version").or_else(|| plan.dtr.version.clone()),
            image: plan.dtr.image.clone(),
            replica: fact("replica"),
            node: fact("node"),
            volume: fact("volume"),
            external_url: plan.dtr.external_url.as_ref().map(|u| u.to_string()),
        },
        ucp_url: plan.ucp.as_ref().map(|u| u.url.to_string()),
        ucp: with_ucp.then(|| manifest::UcpInfo {
            version: fact("ucp_version").or_else(|| plan.ucp.as_ref()?.version.clone()),
            image: plan.ucp.as_ref().and_then(|u| u.image.clone()),
            node: fact("ucp_node"),
        }),
        storage: fact("storage").unwrap_or_else(|| "none".into()),
        encryption: match plan.encryption {
            EncryptionCfg::None => "none",
            EncryptionCfg::Passphrase(_) => "passphrase",
            EncryptionCfg::Recipients(_) => "recipients",
        }
        .into(),
        artifacts: ctx.artifacts.clone(),
        objects: ctx.objects.clone(),
    }
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let bytes = build(&ctx).to_json();
    let name = if ctx.plan.verify_after_apply {
        manifest::PENDING
    } else {
        manifest::FILE
    };
    let path = ctx.backup_path(name);
    let size = bytes.len() as u64;
    let stores = ctx.stores.clone();
    let object = path.clone();
    blocking(move || stores.backups.put(&object, &bytes)).await?;
    let published_as = (name == manifest::PENDING).then(|| ctx.backup_path(manifest::FILE));
    Ok(Outcome {
        files: vec![FileRef {
            path,
            size,
            published_as,
        }],
        ..Outcome::default()
    })
}
