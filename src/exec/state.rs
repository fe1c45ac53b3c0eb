//! The run journal: which steps of an unfinished run are done, with their outputs. Written
//! atomically after each step, only once the step's outputs are durable.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Artifact;
use crate::steps::FileRef;
use crate::storage::Store;

pub const FILE: &str = "run.json";

/// Every state file: `{"version": "1", ...}` and the fields of its record.
#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum Versioned<T> {
    #[serde(rename = "1")]
    V1(T),
}

/// Writes `record` at `path`, replacing the one this process last read or wrote.
fn save_record<T: Serialize>(store: &dyn Store, path: &str, what: &str, record: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(&Versioned::V1(record))
        .map_err(|e| Error::internal(format!("encoding {what}: {e}")))?;
    store.replace(path, &bytes)
}

/// The record at `path`; `None` when there is none. An unreadable one is an error, named
/// `{what}<store>/{path}`, followed by `then` (what to do).
fn load_record<T: DeserializeOwned>(
    store: &dyn Store,
    path: &str,
    what: &str,
    then: &str,
) -> Result<Option<T>> {
    let Some(bytes) = store.get(path)? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Versioned<T>>(&bytes) {
        Ok(Versioned::V1(r)) => Ok(Some(r)),
        Err(e) => Err(Error::stored(format!(
            "{what}{}/{path} is unreadable ({e}){then}",
            store.describe()
        ))),
    }
}

/// An unfinished run of a plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub backup_id: String,
    pub plan: String,
    pub plan_digest: String,
    /// The plan's text when the run started, to say what changed (plans hold no secrets).
    pub plan_source: String,
    pub started_at: i64,
    pub steps: BTreeMap<String, StepRecord>,
}

/// A completed step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepRecord {
    pub finished_at: i64,
    pub artifacts: Vec<Artifact>,
    /// Files the step left (relative to the plan root) with their sizes.
    pub files: Vec<FileRef>,
    /// What the step learned (replica, version, ...), for later steps.
    pub facts: BTreeMap<String, String>,
    /// Image-content objects kept by the step (images in S3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<crate::manifest::SnapshotObject>,
}

pub fn load(store: &dyn Store) -> Result<Option<RunState>> {
    load_record(
        store,
        FILE,
        "the run state ",
        "; start over with `plan apply --fresh`",
    )
}

pub fn save(store: &dyn Store, state: &RunState) -> Result<()> {
    save_record(store, FILE, "the run state", state)
}

pub fn clear(store: &dyn Store) -> Result<()> {
    store.delete(FILE)
}

/// DTR set read-only by a run (see `exec::read_only`).
pub const READ_ONLY: &str = "read-only.json";

/// DTR set read-only by a run, written before the setting is sent and removed once it is
/// back: a run killed in between leaves it, and the next run sets DTR back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnly {
    /// DTR's API.
    pub url: String,
    /// The run that set it.
    pub backup_id: String,
    /// Unix seconds.
    pub set_at: i64,
}

pub fn save_read_only(store: &dyn Store, r: &ReadOnly) -> Result<()> {
    save_record(store, READ_ONLY, "the read-only record", r)
}

pub fn load_read_only(store: &dyn Store) -> Result<Option<ReadOnly>> {
    load_record(
        store,
        READ_ONLY,
        "",
        ": a run left DTR read-only; set DTR writable (DTR's settings page, or POST /api/v0/meta/settings {\"readOnlyRegistry\": false}) and delete the file",
    )
}

pub fn clear_read_only(store: &dyn Store) -> Result<()> {
    store.delete(READ_ONLY)
}

/// The record of the last `plan apply` that held the lock, kept beside the journal for
/// `status`: how it ended, even when it left no backup.
pub const LAST_RUN: &str = "last-run.json";

/// How the last run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// The backup it made or was making; `None` when it stopped before it had one.
    pub backup_id: Option<String>,
    /// `ok`, `failed` or `interrupted`.
    pub status: String,
    pub exit_code: u8,
    pub error: Option<String>,
    /// Unix seconds.
    pub finished_at: i64,
    pub duration_ms: u64,
    pub bytes: u64,
}

pub fn save_last_run(store: &dyn Store, last: &LastRun) -> Result<()> {
    save_record(store, LAST_RUN, "the last run", last)
}

/// The last run's record; `None` when there is none. An unreadable one is an error that says
/// so (the next run replaces it).
pub fn load_last_run(store: &dyn Store) -> Result<Option<LastRun>> {
    load_record(
        store,
        LAST_RUN,
        "the record of the last run ",
        "; the next `plan apply` replaces it",
    )
}

/// Lines only in `old` or only in `new`, marked `-` and `+`: what changed in the plan.
pub fn plan_diff(old: &str, new: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let mut out = String::new();
    for l in &old_lines {
        if !new_lines.contains(l) {
            out.push_str(&format!("  - {l}\n"));
        }
    }
    for l in &new_lines {
        if !old_lines.contains(l) {
            out.push_str(&format!("  + {l}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("  (only the order of lines or whitespace changed)\n");
    }
    out
}

/// The journal of an unfinished restore, beside the run journal under the plan's state.
pub const RESTORE_FILE: &str = "restore.json";

/// An unfinished restore (or drill): what it restores where, and which of its steps are done.
/// Paths and names only: it holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreState {
    pub backup_id: String,
    pub started_at: i64,
    pub drill: bool,
    /// `--only images`.
    pub only_images: bool,
    /// The host the restore runs on (its folders are that host's).
    #[serde(default)]
    pub host: String,
    /// `--only metadata`.
    #[serde(default)]
    pub only_metadata: bool,
    /// `--only ucp`.
    #[serde(default)]
    pub only_ucp: bool,
    /// Where the image content goes (empty when the restore brings back none).
    pub target: std::path::PathBuf,
    /// The Docker volume the image content goes into, instead of a folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The S3 bucket and prefix (as described) the image content goes into, instead of a
    /// folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
    /// The restore created the target folder.
    #[serde(default)]
    pub created_target: bool,
    /// The staging folder inside the target, once named (before it is created).
    #[serde(default)]
    pub staging: Option<std::path::PathBuf>,
    /// DTR's (or UCP's) restore container, once created (before it is started).
    #[serde(default)]
    pub container: Option<String>,
    /// Whose restore `container` runs: `ucp` for UCP's, none for DTR's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_of: Option<String>,
    /// What the image content step wrote, once it is staged.
    #[serde(default)]
    pub restored: Option<crate::steps::images::restore::Restored>,
    /// Completed steps, with the time each completed.
    #[serde(default)]
    pub done: BTreeMap<String, i64>,
}

impl RestoreState {
    pub fn is_done(&self, step: &str) -> bool {
        self.done.contains_key(step)
    }
}

pub fn load_restore(store: &dyn Store) -> Result<Option<RestoreState>> {
    load_record(
        store,
        RESTORE_FILE,
        "the restore journal ",
        "; start over with `restore --fresh`",
    )
}

pub fn save_restore(store: &dyn Store, state: &RestoreState) -> Result<()> {
    save_record(store, RESTORE_FILE, "the restore journal", state)
}

pub fn clear_restore(store: &dyn Store) -> Result<()> {
    store.delete(RESTORE_FILE)
}
