//! Runs a plan's step graph with checkpoints.
//!
//! `apply` takes the plan's lock, finds an unfinished run of the same plan (the journal in
//! `state.rs`) or starts a new one, runs preflight, then each step in graph order. A step whose
//! outputs are recorded and still present is skipped; the others run and are recorded only
//! once their outputs are durable. Killed at any point, the next `apply` resumes.

pub mod copy;
pub mod lock;
pub mod prune;
pub mod read_only;
pub mod restore;
pub mod state;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::clock;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::graph;
use crate::ops;
use crate::plan::Plan;
use crate::steps::{self, Ctx, StepKind};
use crate::storage::{self, Store, Stores};

use crate::events::{self, Event, Reporter, RunStatus, Summary};
use state::{RunState, StepRecord};

/// Options of `plan apply`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Start a new run even if an unfinished one exists (its leftovers are removed).
    pub fresh: bool,
    /// Wait this long for another run's lock instead of failing at once.
    pub lock_timeout: Option<Duration>,
    /// Back up another replica than the last complete backup's.
    pub allow_replica_change: bool,
    /// Read every repository's files, trusting no record of the last run (`trees.cache`).
    pub read_all: bool,
}

/// Runs the plan against its stores. Emits `run_started` … `run_finished`; returns the
/// backup id.
pub async fn apply(
    plan: Arc<Plan>,
    source: &str,
    opts: &Options,
    reporter: Arc<dyn Reporter>,
    cancel: Cancel,
) -> Result<String> {
    let stores = storage::open(&plan).map(Arc::new);
    apply_to(plan, stores, source, opts, reporter, cancel).await
}

/// [`apply`] against the given stores (unit tests give in-memory ones). The plan's hooks,
/// notifiers and metrics (`ops`) run around it.
pub async fn apply_to(
    plan: Arc<Plan>,
    stores: Result<Arc<Stores>>,
    source: &str,
    opts: &Options,
    reporter: Arc<dyn Reporter>,
    cancel: Cancel,
) -> Result<String> {
    let start = Instant::now();
    let ops = ops::Operations::new(plan.clone(), reporter);
    let reporter = ops.reporter();
    ops.started().await;
    let kept_stores = stores.as_ref().ok().cloned();
    let mut summary = Summary::default();
    let mut backup_id = None;
    let result = run(
        plan.clone(),
        stores,
        source,
        opts,
        Around {
            reporter: reporter.clone(),
            ops: &ops,
            backup_id: &mut backup_id,
        },
        cancel,
        &mut summary,
    )
    .await;
    let result = ops.after(result).await;
    summary.duration_ms = start.elapsed().as_millis() as u64;
    let event = run_finished(result.as_ref().map(Clone::clone), summary.clone());
    let finished_at = clock::now_unix();
    if let Some(stores) = &kept_stores
        && let Some(last) = last_run(&event, backup_id, finished_at)
        && let Err(e) = state::save_last_run(stores.state.as_ref(), &last)
    {
        reporter.emit(&Event::Warning {
            message: format!("could not record how this run ended, for `status`: {e}"),
        });
    }
    let metrics = plan
        .metrics_textfile
        .as_ref()
        .map(|_| ops::metrics::RunMetrics {
            plan: plan.name.to_string(),
            finished_at,
            ok: result.is_ok(),
            duration_seconds: summary.duration_ms as f64 / 1000.0,
            bytes: summary.bytes,
            backups: kept_stores
                .as_ref()
                .and_then(|s| crate::manifest::list(s.backups.as_ref()).ok())
                .map(|l| l.complete.len() as u64),
        });
    ops.finished(&event, metrics).await;
    reporter.emit(&event);
    result
}

/// What the run reports to, and what runs around it.
struct Around<'a> {
    reporter: Arc<dyn Reporter>,
    ops: &'a ops::Operations,
    /// The run's backup id, once known (for hooks and the record of the last run).
    backup_id: &'a mut Option<String>,
}

/// The record of how a run ended, from its `run_finished` event; `None` for a run that found
/// another's lock (the record is the lock holder's to write).
fn last_run(event: &Event, backup_id: Option<String>, finished_at: i64) -> Option<state::LastRun> {
    let Event::RunFinished {
        status,
        exit_code,
        error,
        summary,
        ..
    } = event
    else {
        return None;
    };
    (*status != RunStatus::Locked).then(|| state::LastRun {
        backup_id,
        status: status.word().to_owned(),
        exit_code: *exit_code,
        error: error.clone(),
        finished_at,
        duration_ms: summary.duration_ms,
        bytes: summary.bytes,
    })
}

/// The `run_finished` event of a run that ended with `result` (the backup's id).
fn run_finished(result: std::result::Result<String, &Error>, summary: Summary) -> Event {
    match result {
        Ok(id) => Event::RunFinished {
            status: RunStatus::Ok,
            backup_id: Some(id),
            exit_code: crate::exit::Exit::Ok.code(),
            error: None,
            summary,
        },
        Err(e) => Event::RunFinished {
            status: RunStatus::of(e),
            backup_id: None,
            exit_code: e.exit().code(),
            error: Some(e.to_string()),
            summary,
        },
    }
}

async fn run(
    plan: Arc<Plan>,
    stores: Result<Arc<Stores>>,
    source: &str,
    opts: &Options,
    around: Around<'_>,
    cancel: Cancel,
    summary: &mut Summary,
) -> Result<String> {
    let stores = stores?;
    let lock = lock::acquire(
        stores.state.clone(),
        plan.name.as_str(),
        "plan apply",
        opts.lock_timeout,
        plan.lock_lease,
        around.reporter.as_ref(),
        &cancel,
    )
    .await?;
    let result = run_locked(plan.clone(), stores, source, opts, around, cancel, summary).await;
    match result {
        // Stopped because the lock was taken over: said as such (exit 4), not as Ctrl-C.
        Err(Error::Interrupted) if lock.lost() => Err(Error::Locked(format!(
            "plan {}: this run's lock was taken over (its lease ran out, or `plan unlock`), and the run stopped; the journal is kept for the next run",
            plan.name
        ))),
        other => other,
    }
}

/// [`run`] once the plan's lock is held.
async fn run_locked(
    plan: Arc<Plan>,
    stores: Arc<Stores>,
    source: &str,
    opts: &Options,
    around: Around<'_>,
    cancel: Cancel,
    summary: &mut Summary,
) -> Result<String> {
    let reporter = around.reporter;
    failpoint::hit("apply.locked");
    // Beside the journal, no other run writes while this one holds the lock; only the lock's
    // own temporaries may be another run's, taking its turn.
    let lock_temp = format!(".{}", lock::FILE);
    for path in remove_temporaries(stores.state.as_ref(), "", |n| n.starts_with(&lock_temp))? {
        reporter.emit(&Event::Warning {
            message: format!(
                "removed {}/{path}, left by an interrupted run",
                stores.state.describe()
            ),
        });
    }

    let (mut run, resumed) = open_run(&plan, source, opts, &stores, reporter.as_ref())?;
    reporter.emit(&Event::RunStarted {
        format_version: 1,
        plan: plan.name.to_string(),
        backup_id: run.backup_id.clone(),
        resumed,
        time: clock::rfc3339(clock::now_unix()),
    });
    *around.backup_id = Some(run.backup_id.clone());
    // A read-only window that a killed run left open is closed before anything else can fail.
    read_only::recover(&plan, stores.state.as_ref(), reporter.as_ref()).await?;
    around.ops.before(&run.backup_id, &cancel).await?;
    state::save(stores.state.as_ref(), &run)?;
    failpoint::hit("apply.journal-created");

    let graph = graph::compile(&plan);
    let mut ctx = Ctx {
        plan: plan.clone(),
        backup_id: run.backup_id.clone(),
        started_at: run.started_at,
        stores: stores.clone(),
        secrets: Arc::new(crate::crypto::Secrets {
            encryption: crate::crypto::Encryption::None,
            ucp_password: None,
            decryption: None,
        }),
        allow_replica_change: opts.allow_replica_change,
        read_all: opts.read_all,
        reporter: reporter.clone(),
        cancel: cancel.clone(),
        step_id: String::new(),
        facts: BTreeMap::new(),
        artifacts: Vec::new(),
        objects: Vec::new(),
    };

    let mut win = Window::new(&graph, &plan, &mut run, reporter.as_ref());
    let steps_result = run_steps(&graph, &mut run, &mut ctx, summary, &mut win).await;
    if let Some(w) = win.open.take() {
        // The run stopped inside the window (or its last step was the last of the window).
        match w.close(stores.state.as_ref(), reporter.as_ref()).await {
            Ok(open) => summary.read_only_ms = Some(open.as_millis() as u64),
            Err(e) if steps_result.is_ok() => return Err(e),
            Err(e) => reporter.emit(&Event::Warning {
                message: e.to_string(),
            }),
        }
    }
    steps_result?;
    state::clear(stores.state.as_ref())?;
    match win.close_failed {
        Some(e) => Err(e.context(format!("backup {} is complete, but", run.backup_id))),
        None => Ok(run.backup_id),
    }
}

/// DTR's read-only window of one run: it spans the metadata and images steps, and is closed
/// after the last of them, or when the run stops before.
struct Window {
    /// Index of the last window step in the graph.
    last: Option<usize>,
    open: Option<read_only::Window>,
    /// Opened once in this run.
    done: bool,
    /// It could not be closed after the images: the backup goes on, the run fails at its end
    /// (the record stays; the next run retries).
    close_failed: Option<Error>,
}

fn in_window(kind: StepKind) -> bool {
    matches!(kind, StepKind::Metadata | StepKind::Images)
}

impl Window {
    fn new(
        graph: &graph::StepGraph,
        plan: &Plan,
        run: &mut RunState,
        reporter: &dyn Reporter,
    ) -> Window {
        if plan.dtr.read_only_window {
            // Metadata and images are copied inside one window: if an earlier run did only
            // one of them, both run again (the registry may have changed in between).
            let ids: Vec<&str> = graph
                .steps
                .iter()
                .filter(|s| in_window(s.kind))
                .map(|s| s.id.as_str())
                .collect();
            let done = ids.iter().filter(|id| run.steps.contains_key(**id)).count();
            if done > 0 && done < ids.len() {
                for id in &ids {
                    run.steps.remove(*id);
                }
                reporter.emit(&Event::Warning {
                    message: format!(
                        "{} run again: they are copied inside one read-only window, and the interrupted run copied only part of them",
                        ids.join(" and ")
                    ),
                });
            }
        }
        Window {
            last: graph.steps.iter().rposition(|s| in_window(s.kind)),
            open: None,
            done: false,
            close_failed: None,
        }
    }
}

/// Runs the graph's steps in order, each recorded in the journal once its outputs are durable;
/// opens and closes DTR's read-only window around the window steps.
async fn run_steps(
    graph: &graph::StepGraph,
    run: &mut RunState,
    ctx: &mut Ctx,
    summary: &mut Summary,
    win: &mut Window,
) -> Result<()> {
    let (plan, stores, reporter, cancel) = (
        ctx.plan.clone(),
        ctx.stores.clone(),
        ctx.reporter.clone(),
        ctx.cancel.clone(),
    );
    for (index, step) in graph.steps.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if Some(index) > win.last
            && let Some(w) = win.open.take()
        {
            match w.close(stores.state.as_ref(), reporter.as_ref()).await {
                Ok(open) => summary.read_only_ms = Some(open.as_millis() as u64),
                Err(e) => {
                    reporter.emit(&Event::Warning {
                        message: format!("{e}; the backup goes on"),
                    });
                    win.close_failed = Some(e);
                }
            }
        }
        ctx.step_id = step.id.clone();
        // Inside a window this run opened, a window step runs whatever an earlier run did.
        let rerun = win.done && plan.dtr.read_only_window && in_window(step.kind);
        if let Some(record) = run.steps.get(&step.id).filter(|_| !rerun) {
            if outputs_intact(stores.backups.as_ref(), record)? {
                reporter.emit(&Event::StepSkipped {
                    step: step.id.clone(),
                    reason:
                        "completed by an earlier run; outputs present with their recorded sizes"
                            .into(),
                });
                summary.steps_skipped += 1;
                absorb(ctx, record);
                continue;
            }
            reporter.emit(&Event::Warning {
                message: format!(
                    "the outputs of step {} are gone or changed since it completed; running it again",
                    step.id
                ),
            });
            run.steps.remove(&step.id);
        }

        failpoint::hit(&format!("step.{}.before", step.id));
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if plan.dtr.read_only_window && !win.done && in_window(step.kind) {
            win.done = true;
            let password = ctx.secrets.ucp_password.as_ref().ok_or_else(|| {
                Error::internal("the read-only window without UCP credentials passed preflight")
            })?;
            win.open = read_only::open(
                &plan,
                stores.state.as_ref(),
                password,
                &run.backup_id,
                reporter.as_ref(),
            )
            .await?;
        }
        reporter.emit(&Event::StepStarted {
            step: step.id.clone(),
            kind: step.kind.as_str().into(),
        });
        let began = Instant::now();
        let outcome = if step.kind == StepKind::Preflight {
            let warn = |message: String| reporter.emit(&Event::Warning { message });
            steps::preflight::run(&plan, &stores, &warn)
                .await
                .map(|secrets| {
                    ctx.secrets = Arc::new(secrets);
                    steps::Outcome::default()
                })
        } else {
            remove_temporaries(stores.backups.as_ref(), &run.backup_id, |_| false)?;
            steps::run(step.kind, ctx.clone()).await
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let e = if cancel.is_cancelled() {
                    Error::Interrupted
                } else {
                    e
                };
                reporter.emit(&Event::StepFailed {
                    step: step.id.clone(),
                    error: e.to_string(),
                });
                return Err(e);
            }
        };
        summary.steps_run += 1;
        summary.artifacts += outcome.artifacts.len();
        summary.bytes += outcome.artifacts.iter().map(|a| a.size).sum::<u64>();
        reporter.emit(&Event::StepFinished {
            step: step.id.clone(),
            duration_ms: began.elapsed().as_millis() as u64,
            artifacts: outcome.artifacts.clone(),
        });
        if step.kind == StepKind::Preflight {
            continue;
        }
        failpoint::hit(&format!("step.{}.done-not-journaled", step.id));
        let record = StepRecord {
            finished_at: clock::now_unix(),
            artifacts: outcome.artifacts,
            files: outcome.files,
            facts: outcome.facts,
            objects: outcome.objects,
        };
        absorb(ctx, &record);
        run.steps.insert(step.id.clone(), record);
        state::save(stores.state.as_ref(), run)?;
        failpoint::hit(&format!("step.{}.journaled", step.id));
    }
    Ok(())
}

/// Adds a completed step's results to what later steps see.
fn absorb(ctx: &mut Ctx, record: &StepRecord) {
    ctx.artifacts.extend(record.artifacts.iter().cloned());
    ctx.objects.extend(record.objects.iter().cloned());
    ctx.facts
        .extend(record.facts.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// The cheap check before skipping a step: its files exist with their recorded sizes.
fn outputs_intact(store: &dyn Store, record: &StepRecord) -> Result<bool> {
    for f in &record.files {
        let here = store.size(&f.path)? == Some(f.size);
        let moved = match &f.published_as {
            Some(p) if !here => store.size(p)? == Some(f.size),
            _ => false,
        };
        if !here && !moved {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the temporaries that killed runs left under `prefix` (a backup's folder; the
/// journal's), but for those `keep` names; returns their paths.
fn remove_temporaries(
    store: &dyn Store,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for path in store.list(prefix)? {
        let name = path.rsplit('/').next().unwrap_or(&path);
        if storage::local::is_temp_name(name) && !keep(name) {
            store.delete(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The unfinished run to resume, or a new one.
fn open_run(
    plan: &Plan,
    source: &str,
    opts: &Options,
    stores: &Stores,
    reporter: &dyn Reporter,
) -> Result<(RunState, bool)> {
    if let Some(old) = state::load(stores.state.as_ref())? {
        if opts.fresh {
            discard(stores, &old, reporter)?;
        } else if old.plan_digest != plan.digest && old.steps.is_empty() {
            // Nothing of it was done: nothing to resume, nothing to refuse.
            discard(stores, &old, &events::Recorder::default())?;
        } else if old.plan_digest != plan.digest {
            return Err(Error::PlanChanged(format!(
                "the plan changed since the unfinished run {} started, so it cannot be resumed:\n{}\
                 Run again with --fresh to discard that run and start a new one, or restore the plan to resume it",
                old.backup_id,
                state::plan_diff(&old.plan_source, source)
            )));
        } else {
            return Ok((old, true));
        }
    }
    let now = clock::now_unix();
    Ok((
        RunState {
            backup_id: clock::new_backup_id(now),
            plan: plan.name.to_string(),
            plan_digest: plan.digest.clone(),
            plan_source: source.to_owned(),
            started_at: now,
            steps: BTreeMap::new(),
        },
        false,
    ))
}

/// Removes an unfinished run: its folder (it has no manifest, so it is no backup) and journal.
fn discard(stores: &Stores, old: &RunState, reporter: &dyn Reporter) -> Result<()> {
    let has_manifest = stores
        .backups
        .size(&format!("{}/{}", old.backup_id, crate::manifest::FILE))?
        .is_some();
    if !has_manifest {
        stores.backups.delete_all(&old.backup_id)?;
    }
    state::clear(stores.state.as_ref())?;
    reporter.emit(&Event::Warning {
        message: format!("--fresh: discarded the unfinished run {}", old.backup_id),
    });
    Ok(())
}

/// What `plan apply --dry-run` prints: each step in order with what it would do. No I/O.
pub fn dry_run(plan: &Plan) -> Vec<(graph::Step, Vec<String>)> {
    graph::compile(plan)
        .steps
        .into_iter()
        .map(|s| {
            let lines = steps::describe(s.kind, plan).actions;
            (s, lines)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Recorder;
    use crate::storage::memory::MemoryStore;

    /// The quickstart's registry tree, backed up unencrypted into memory.
    fn quickstart() -> (Arc<Plan>, String) {
        let registry =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/quickstart/registry");
        let source = format!(
            "version: 1\nname: qs\nparts: [images]\nimages: {{type: path, path: {}, name: dtr-registry-0a1b2c3d4e5f}}\n\
             destination: {{type: local, path: /nonexistent}}\nencryption: {{type: none}}\n",
            registry.display()
        );
        let loaded = crate::plan::load_str(std::path::Path::new("qs.yaml"), &source);
        (Arc::new(loaded.plan.expect("a valid plan")), source)
    }

    fn stores() -> (MemoryStore, MemoryStore, Arc<Stores>) {
        let (backups, state) = (MemoryStore::new(), MemoryStore::new());
        let stores = Arc::new(Stores {
            backups: Arc::new(backups.clone()),
            state: Arc::new(state.clone()),
        });
        (backups, state, stores)
    }

    fn events(r: &Recorder) -> Vec<Event> {
        r.0.lock().unwrap().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_publishes_its_manifest_last_and_leaves_no_journal_or_lock() {
        let (plan, source) = quickstart();
        let (backups, state, stores) = stores();
        let rec = Arc::new(Recorder::default());
        let id = apply_to(
            plan,
            Ok(stores),
            &source,
            &Options::default(),
            rec.clone(),
            Cancel::new(),
        )
        .await
        .expect("the run succeeds");
        let log = backups.log();
        let manifest = format!("put {id}/{}", crate::manifest::FILE);
        assert_eq!(
            log.last(),
            Some(&format!("delete {id}/{}", crate::manifest::PENDING))
        );
        let published = log.iter().position(|l| *l == manifest).expect("published");
        let artifact = log
            .iter()
            .position(|l| l.starts_with(&format!("put {id}/dtr-images-")))
            .expect("the artifact");
        assert!(artifact < published, "{log:?}");
        // Incremental by default: the blobs in the blob store, their list before the manifest.
        let list = log
            .iter()
            .position(|l| *l == format!("put {id}/{}", crate::snapshot::FILE))
            .expect("the blob list");
        assert!(list < published, "{log:?}");
        assert!(
            log.iter().any(|l| l.starts_with("put blobs/")),
            "blobs in the blob store: {log:?}"
        );
        assert_eq!(
            state.paths(),
            [state::LAST_RUN, crate::steps::images::known::FILE],
            "journal and lock gone; how the run ended, and what it saw of the repositories, recorded"
        );
        let last = state::load_last_run(&state).unwrap().expect("a record");
        assert_eq!(
            (last.status.as_str(), last.backup_id.as_deref()),
            ("ok", Some(id.as_str()))
        );
        let m = crate::manifest::read(&backups, &id).expect("a readable manifest");
        let kinds: Vec<_> = m.artifacts.iter().map(|a| a.kind).collect();
        use crate::manifest::ArtifactKind;
        assert_eq!(
            kinds,
            [
                ArtifactKind::Images,
                ArtifactKind::Trees,
                ArtifactKind::Blobs
            ]
        );
        assert_eq!(m.format_version, 3);
        assert!(matches!(
            events(&rec).last(),
            Some(Event::RunFinished {
                status: RunStatus::Ok,
                ..
            })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_run_keeps_its_journal_and_the_next_resumes_it() {
        let (plan, source) = quickstart();
        let (backups, state, stores) = stores();
        let cancel = Cancel::new();
        cancel.cancel();
        let rec = Arc::new(Recorder::default());
        let err = apply_to(
            plan.clone(),
            Ok(stores.clone()),
            &source,
            &Options::default(),
            rec,
            cancel,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(
            state.paths(),
            [state::LAST_RUN, state::FILE],
            "the journal stays, the lock goes"
        );
        let last = state::load_last_run(&state).unwrap().expect("a record");
        assert_eq!((last.status.as_str(), last.exit_code), ("interrupted", 130));
        let journal = state::load(&state).unwrap().expect("a journal");
        let rec = Arc::new(Recorder::default());
        let id = apply_to(
            plan,
            Ok(stores),
            &source,
            &Options::default(),
            rec.clone(),
            Cancel::new(),
        )
        .await
        .expect("the resumed run succeeds");
        assert_eq!(id, journal.backup_id, "the same backup");
        assert!(
            events(&rec)
                .iter()
                .any(|e| matches!(e, Event::RunStarted { resumed: true, .. }))
        );
        assert!(crate::manifest::read(&backups, &id).is_ok());
    }
}
