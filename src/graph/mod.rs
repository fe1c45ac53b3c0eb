//! Plan → step graph: which steps run, in which order, reading and writing what.
//!
//! The graph follows the domain: preflight → discover replica → UCP (when the plan backs it
//! up; before DTR, as a cluster restores: Swarm, UCP, DTR) → metadata → images (metadata
//! first, so the images are a superset of what the metadata references) → manifest → verify →
//! retention. Steps for parts the plan leaves out do not appear. What each step reads and
//! writes is the step's own description (`steps::describe`). `render.rs` prints the graph.

mod render;

use serde::Serialize;

use crate::plan::{Order, Plan};
use crate::steps::{self, StepKind};

pub use render::{render_dot, render_json, render_text};

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

/// A node for a step of `kind`: its text is the step's own description (`steps::describe`).
fn node(kind: StepKind, plan: &Plan) -> Step {
    let d = steps::describe(kind, plan);
    Step {
        id: kind.as_str().into(),
        kind,
        inputs: d.inputs,
        outputs: d.outputs,
        depends_on: vec![],
    }
}

/// Compiles a checked plan into its step graph. Pure.
///
/// The graph decides which steps a plan has, their order and what each waits for; the
/// manifest step's inputs are the artifacts of the steps before it.
pub fn compile(plan: &Plan) -> StepGraph {
    let mut kinds = vec![StepKind::Preflight];
    if plan.needs_docker() {
        kinds.push(StepKind::Discover);
    }
    if plan.ucp_backup {
        kinds.push(StepKind::Ucp);
    }
    let parts = match plan.order {
        Order::MetadataFirst => [StepKind::Metadata, StepKind::Images],
        Order::ImagesFirst => [StepKind::Images, StepKind::Metadata],
    };
    for kind in parts {
        let wanted = match kind {
            StepKind::Metadata => plan.metadata,
            _ => plan.images.is_some(),
        };
        if wanted {
            kinds.push(kind);
        }
    }
    kinds.push(StepKind::Manifest);
    if plan.verify_after_apply {
        kinds.push(StepKind::Verify);
    }
    if plan.retention.is_some() {
        kinds.push(StepKind::Retention);
    }

    let mut steps: Vec<Step> = Vec::new();
    let mut artifacts = Vec::new();
    for kind in kinds {
        let mut step = node(kind, plan);
        if let Some(last) = steps.last() {
            step.depends_on.push(last.id.clone());
        }
        match kind {
            StepKind::Ucp | StepKind::Metadata | StepKind::Images => {
                artifacts.extend(step.outputs.iter().cloned());
            }
            StepKind::Manifest => step.inputs = std::mem::take(&mut artifacts),
            _ => {}
        }
        steps.push(step);
    }

    StepGraph {
        plan: plan.name.to_string(),
        steps,
    }
}
