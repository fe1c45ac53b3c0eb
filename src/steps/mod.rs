//! One file per step kind. A step reads what earlier steps produced (artifacts and facts in
//! [`Ctx`]), does its work, and returns what it produced ([`Outcome`]). The executor
//! (`crate::exec`) records outcomes in the journal; steps know nothing of resuming.

mod discover;
pub mod images;
mod manifest;
mod metadata;
pub mod metadata_restore;
pub mod preflight;
pub mod retention;
mod stream;
pub mod ucp;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cancel::Cancel;
use crate::crypto::Secrets;
use crate::error::{Error, Result};
use crate::events::{Event, Reporter};
use crate::manifest::{Artifact, SnapshotObject};
use crate::plan::{DestinationCfg, Plan};
use crate::storage::Stores;

/// The closed set of step kinds, one file each in this module. Which of them a plan runs, and
/// in which order, is `crate::graph`'s business.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Preflight,
    Discover,
    Ucp,
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
            StepKind::Ucp => "ucp",
            StepKind::Metadata => "metadata",
            StepKind::Images => "images",
            StepKind::Manifest => "manifest",
            StepKind::Verify => "verify",
            StepKind::Retention => "retention",
        }
    }
}

/// Everything a step may use.
#[derive(Clone)]
pub struct Ctx {
    pub plan: Arc<Plan>,
    pub backup_id: String,
    pub started_at: i64,
    pub stores: Arc<Stores>,
    /// Secrets resolved by preflight; held in memory only.
    pub secrets: Arc<Secrets>,
    /// `--allow-replica-change`.
    pub allow_replica_change: bool,
    /// `--read-all`: no repository is trusted unread.
    pub read_all: bool,
    pub reporter: Arc<dyn Reporter>,
    pub cancel: Cancel,
    pub step_id: String,
    /// What earlier steps learned.
    pub facts: BTreeMap<String, String>,
    /// What earlier steps wrote.
    pub artifacts: Vec<Artifact>,
    /// Image-content objects earlier steps kept (images in S3).
    pub objects: Vec<SnapshotObject>,
}

impl Ctx {
    /// Path of a file of this backup, relative to the plan root.
    pub fn backup_path(&self, name: &str) -> String {
        format!("{}/{name}", self.backup_id)
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.reporter.emit(&Event::Warning {
            message: message.into(),
        });
    }

    /// Emits progress events every half second while the returned guard lives.
    pub fn progress(&self, total: Option<u64>) -> Progress {
        Progress::start(
            &crate::progress::Meter::default(),
            self.reporter.clone(),
            &self.step_id,
            total,
        )
    }
}

/// A byte counter reported as progress; stops reporting when dropped.
pub type Progress = crate::progress::Ticker;

/// A file a step wrote, recorded in the journal: a resumed run skips the step while the
/// file is there with this size.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileRef {
    pub path: String,
    pub size: u64,
    /// Where a later step may have moved the same bytes (the pending manifest, once
    /// verification published it); the file counts as present there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_as: Option<String>,
}

impl FileRef {
    pub fn new(path: String, size: u64) -> FileRef {
        FileRef {
            path,
            size,
            published_as: None,
        }
    }
}

/// What a step produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub artifacts: Vec<Artifact>,
    /// Files left (relative to the plan root) whose presence and size prove the step done.
    pub files: Vec<FileRef>,
    pub facts: BTreeMap<String, String>,
    /// Image content kept object by object (see `manifest::SnapshotObject`).
    pub objects: Vec<SnapshotObject>,
}

/// How a step kind describes itself for a plan, in one place: what it reads and writes (the
/// graph of `plan show`) and what it would do (`plan apply --dry-run`). Pure: no I/O, secrets
/// redacted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Described {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// What the step would do, line by line.
    pub actions: Vec<String>,
}

/// Runs one step.
pub async fn run(kind: StepKind, ctx: Ctx) -> Result<Outcome> {
    match kind {
        StepKind::Preflight => Err(Error::internal("preflight runs before the other steps")),
        StepKind::Discover => discover::run(ctx).await,
        StepKind::Ucp => ucp::run(ctx).await,
        StepKind::Metadata => metadata::run(ctx).await,
        StepKind::Images => images::run(ctx).await,
        StepKind::Manifest => manifest::run(ctx).await,
        StepKind::Verify => verify::run(ctx).await,
        StepKind::Retention => retention::run(ctx).await,
    }
}

/// How a step of `kind` describes itself for `plan`.
pub fn describe(kind: StepKind, plan: &Plan) -> Described {
    match kind {
        StepKind::Preflight => preflight::describe(plan),
        StepKind::Discover => discover::describe(plan),
        StepKind::Ucp => ucp::describe(plan),
        StepKind::Metadata => metadata::describe(plan),
        StepKind::Images => images::describe(plan),
        StepKind::Manifest => manifest::describe(plan),
        StepKind::Verify => verify::describe(plan),
        StepKind::Retention => retention::describe(plan),
    }
}

/// Where this plan's backups go, as the descriptions print it: `.../<plan>/<backup-id>/`.
pub fn destination_text(plan: &Plan) -> String {
    match &plan.destination {
        DestinationCfg::Local { path } => format!("{}/{}/<backup-id>/", path.display(), plan.name),
        DestinationCfg::S3(s3) => format!(
            "s3://{}/{}/<backup-id>/",
            s3.bucket,
            s3.plan_root(plan.name.as_str())
        ),
    }
}

/// Runs blocking work (tar, OpenPGP, file I/O) off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("a worker thread failed: {e}")))?
}
