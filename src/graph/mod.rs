//! Plan → step graph: which steps run, in which order, reading and writing what.
//!
//! The graph follows the domain: preflight → discover replica → metadata → images (metadata
//! first, so the images are a superset of what the metadata references) → manifest → verify →
//! retention. Steps for parts the plan leaves out do not appear. `render.rs` prints it.

mod render;

use serde::Serialize;

use crate::manifest;
use crate::plan::{DestinationCfg, EncryptionCfg, ImagesCfg, Order, Plan, UcpTls};

pub use render::{render_dot, render_json, render_text};

/// The closed set of step kinds. Each has one implementation in `crate::steps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Preflight,
    Discover,
    Metadata,
    Images,
    Manifest,
    Verify,
    Retention,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Preflight => "preflight",
            StepKind::Discover => "discover",
            StepKind::Metadata => "metadata",
            StepKind::Images => "images",
            StepKind::Manifest => "manifest",
            StepKind::Verify => "verify",
            StepKind::Retention => "retention",
        }
    }
}

/// One node of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Unique within the graph; the checkpoint journal records steps by id.
    pub id: String,
    pub kind: StepKind,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub depends_on: Vec<String>,
}

/// The steps of a plan, in an order that respects every dependency.
#[derive(Clone, Debug, Serialize)]
pub struct StepGraph {
    pub plan: String,
    pub steps: Vec<Step>,
}

fn destination_text(plan: &Plan) -> String {
    match &plan.destination {
        DestinationCfg::Local { path } => format!("{}/{}/<backup-id>/", path.display(), plan.name),
        DestinationCfg::S3(s3) => format!(
            "s3://{}/{}/<backup-id>/",
            s3.bucket,
            s3.plan_root(plan.name.as_str())
        ),
    }
}

/// Compiles a checked plan into its step graph. Pure.
pub fn compile(plan: &Plan) -> StepGraph {
    let mut steps: Vec<Step> = Vec::new();
    let dest = destination_text(plan);

    let mut pre_in = vec![format!("destination {dest}")];
    if plan.needs_docker() {
        pre_in.push(format!(
            "docker {}",
            plan.docker
                .host
                .as_deref()
                .or(plan.docker.bundle.as_ref().map(|_| "from bundle"))
                .unwrap_or("$DOCKER_HOST or unix:///var/run/docker.sock")
        ));
    }
    if let Some(ucp) = &plan.ucp {
        let login = if plan.check_ucp_login {
            " (login check)"
        } else {
            ""
        };
        pre_in.push(format!("ucp {}{login}", ucp.url));
    }
    match &plan.images {
        Some(ImagesCfg::Path { path, .. }) => {
            pre_in.push(format!("images path {}", path.display()))
        }
        Some(ImagesCfg::Nfs { path, server, .. }) => {
            pre_in.push(format!("nfs mount {} from {server}", path.display()))
        }
        _ => {}
    }
    match &plan.encryption {
        EncryptionCfg::Passphrase(s) => pre_in.push(format!("passphrase {}", s.redacted())),
        EncryptionCfg::Recipients(keys) => pre_in.extend(
            keys.iter()
                .map(|k| format!("recipient key {}", k.display())),
        ),
        EncryptionCfg::None => {}
    }
    steps.push(Step {
        id: "preflight".into(),
        kind: StepKind::Preflight,
        inputs: pre_in,
        outputs: vec![],
        depends_on: vec![],
    });

    let mut last = "preflight".to_owned();
    if plan.needs_docker() {
        steps.push(Step {
            id: "discover".into(),
            kind: StepKind::Discover,
            inputs: vec![format!("replica {}", plan.dtr.replica)],
            outputs: vec!["replica id, node, DTR version".into()],
            depends_on: vec![last.clone()],
        });
        last = "discover".into();
    }

    let metadata_step = plan.metadata.then(|| {
        let ucp = plan.ucp.as_ref();
        let mut inputs = vec![format!(
            "image {}",
            plan.dtr.image.as_deref().unwrap_or("(none)")
        )];
        if let Some(ucp) = ucp {
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
        Step {
            id: "metadata".into(),
            kind: StepKind::Metadata,
            inputs,
            outputs: vec![format!("{dest}{}", manifest::metadata_artifact(plan))],
            depends_on: vec![],
        }
    });
    let images_step = plan.images.as_ref().map(|images| {
        let volume =
            manifest::images_volume_name(plan).unwrap_or_else(|| "dtr-registry-<replica>".into());
        let source = match images {
            ImagesCfg::Volume { .. } => format!("volume {volume}"),
            ImagesCfg::Path { path, .. } => format!("path {}", path.display()),
            ImagesCfg::Nfs { path, server, .. } => {
                format!("nfs {} ({server})", path.display())
            }
            ImagesCfg::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        };
        let output = match images {
            ImagesCfg::S3(_) => format!(
                "{dest}objects/ and {}blobs/sha256/ (shared)",
                dest.trim_end_matches("<backup-id>/")
            ),
            _ => format!("{dest}{}", manifest::images_artifact(plan, &volume)),
        };
        Step {
            id: "images".into(),
            kind: StepKind::Images,
            inputs: vec![source],
            outputs: vec![output],
            depends_on: vec![],
        }
    });
    let ordered = match plan.order {
        Order::MetadataFirst => [metadata_step, images_step],
        Order::ImagesFirst => [images_step, metadata_step],
    };
    let mut artifacts = Vec::new();
    for mut step in ordered.into_iter().flatten() {
        step.depends_on.push(last.clone());
        last = step.id.clone();
        artifacts.extend(step.outputs.iter().cloned());
        steps.push(step);
    }

    steps.push(Step {
        id: "manifest".into(),
        kind: StepKind::Manifest,
        inputs: artifacts,
        outputs: vec![format!("{dest}manifest.json")],
        depends_on: vec![last.clone()],
    });
    last = "manifest".into();

    if plan.verify_after_apply {
        steps.push(Step {
            id: "verify".into(),
            kind: StepKind::Verify,
            inputs: vec![format!("{dest}manifest.json")],
            outputs: vec!["sizes, decryption (integrity protection), layout checked".into()],
            depends_on: vec![last.clone()],
        });
        last = "verify".into();
    }

    if let Some(r) = &plan.retention {
        steps.push(Step {
            id: "retention".into(),
            kind: StepKind::Retention,
            inputs: vec![format!(
                "keep_last {} daily {} weekly {} monthly {}",
                r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly
            )],
            outputs: vec!["older backups deleted".into()],
            depends_on: vec![last],
        });
    }

    StepGraph {
        plan: plan.name.to_string(),
        steps,
    }
}
