//! What a run tells the world: a closed set of events. `--output json` prints each as one line
//! of JSON (NDJSON); the human output renders the same events as lines or progress bars.

use serde::Serialize;

use crate::manifest::Artifact;

/// One event of a run. The `event` field names the kind.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        format_version: u32,
        plan: String,
        backup_id: String,
        resumed: bool,
        time: String,
    },
    StepStarted {
        step: String,
        kind: String,
    },
    /// A step completed by an earlier, interrupted run: not done again.
    StepSkipped {
        step: String,
        reason: String,
    },
    StepProgress {
        step: String,
        bytes: u64,
        total_bytes: Option<u64>,
        /// Objects done, for steps that copy object by object.
        #[serde(skip_serializing_if = "Option::is_none")]
        objects: Option<u64>,
    },
    StepFinished {
        step: String,
        duration_ms: u64,
        artifacts: Vec<Artifact>,
    },
    StepFailed {
        step: String,
        error: String,
    },
    /// Something the operator should know; the run goes on.
    Warning {
        message: String,
    },
    /// Image content copied object by object: how many objects were copied and how many were
    /// already in the blob store.
    ObjectsCopied {
        step: String,
        copied: u64,
        already_present: u64,
        bytes_copied: u64,
        small_objects: u64,
        /// Copied by the S3 server itself (same bucket, no encryption).
        server_side: bool,
    },
    /// One named check and its outcome (a restore drill's).
    Check {
        step: String,
        name: String,
        ok: bool,
        detail: String,
    },
    /// A line of output from a step (for example the `dtr backup` container's log).
    Log {
        step: String,
        message: String,
    },
    RunFinished {
        status: RunStatus,
        backup_id: Option<String>,
        exit_code: u8,
        error: Option<String>,
        summary: Summary,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    Failed,
    Interrupted,
    Locked,
    InvalidPlan,
}

impl RunStatus {
    /// How a run that ended with `e` ended.
    pub fn of(e: &crate::error::Error) -> RunStatus {
        match e {
            crate::error::Error::Interrupted => RunStatus::Interrupted,
            crate::error::Error::Locked(_) => RunStatus::Locked,
            _ => RunStatus::Failed,
        }
    }

    /// The word hooks, `last-run.json` and notifiers use: `ok`, `failed` or `interrupted`
    /// (a run locked out or given an invalid plan failed).
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed | RunStatus::Locked | RunStatus::InvalidPlan => "failed",
        }
    }
}

/// Totals of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub steps_run: usize,
    pub steps_skipped: usize,
    pub artifacts: usize,
    pub bytes: u64,
    pub duration_ms: u64,
    /// How long DTR was read-only (`dtr.read_only_during_backup`), when this run set it so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_ms: Option<u64>,
}

/// Receives events. Implementations print them (see `cli::report`).
pub trait Reporter: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Collects events in memory.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Event>>);

impl Reporter for Recorder {
    fn emit(&self, event: &Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event.clone());
        }
    }
}
