//! `restore`: a stored backup's image content back into a folder, under the plan's lock, and
//! the drill that proves a backup restores without touching anything live.
//!
//! The order: which backup (`manifest::resolve`), its checks of layout and integrity
//! (`verify::check_backup`: nothing is written when they fail), then the image content
//! (`steps::images::restore`: every blob checked against its digest before it gets its name).
//! The content is restored into a staging folder inside the target and moved into place only
//! once all of it is in and checked: a restore that fails leaves the target as it was.
//! A drill restores into a scratch folder, checks that every blob the metadata references is
//! there, and removes what it wrote whatever the outcome.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lock;
use super::state::{self, RestoreState};
use crate::cancel::Cancel;
use crate::clock;
use crate::crypto;
use crate::docker::{Engine, container};
use crate::error::{Error, Result, io};
use crate::events::{Event, Reporter, Summary};
use crate::failpoint;
use crate::manifest::{self, ArtifactKind, Manifest, Which};
use crate::plan::{ImagesCfg, Plan};
use crate::progress::{Meter, Ticker};
use crate::secret;
use crate::steps::images::restore::{self as images, Restored};
use crate::steps::images::volume::VolumeTarget;
use crate::steps::metadata_restore;
use crate::steps::ucp::restore as ucp_restore;
use crate::storage::metered::Metered;
use crate::storage::{self, Store};
use crate::verify::{self, Check, ReadData, Rehash};

/// Which parts of a backup to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Only {
    Images,
    Metadata,
    Ucp,
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub which: Which,
    /// The parts asked for (`--only`); empty: every part the backup holds.
    pub only: Vec<Only>,
    /// Restore the image content here instead of the plan's own source.
    pub images_to: Option<PathBuf>,
    pub drill: bool,
    pub lock_timeout: Option<Duration>,
    /// Abandon an unfinished restore instead of finishing it.
    pub fresh: bool,
}

/// What a restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    /// Where the image content went (removed again after a drill).
    pub target: PathBuf,
    pub drill: bool,
    /// The parts restored (`ucp`, `images`, `metadata`), in the order they were.
    pub parts: Vec<String>,
    pub restored: Restored,
    /// The checks of a drill (empty otherwise).
    pub checks: Vec<Check>,
}

/// Where the image content goes, and whether it is a scratch folder of a drill.
pub fn target(plan: &Plan, opts: &RestoreOptions) -> Result<(PathBuf, bool)> {
    if let Some(p) = &opts.images_to {
        return Ok((p.clone(), false));
    }
    if opts.drill {
        let scratch = std::env::temp_dir().join(format!(
            "dtr-backup-drill-{}-{}",
            plan.name,
            clock::random_hex(4)
        ));
        return Ok((scratch, true));
    }
    match &plan.images {
        Some(ImagesCfg::Path { path, .. }) => Ok((path.clone(), false)),
        Some(ImagesCfg::Nfs { path, server, .. }) => {
            storage::nfs::check_mounted(path, server)?;
            Ok((path.clone(), false))
        }
        Some(ImagesCfg::Volume { .. }) => Err(Error::internal(
            "a volume is not a folder target: see `volume_target`",
        )),
        Some(ImagesCfg::S3(_)) => Err(Error::internal(
            "S3 is not a folder target: see `s3_target`",
        )),
        None => Err(Error::Usage(
            "the plan has no `images` section saying where image content goes: pass --images-to PATH".into(),
        )),
    }
}

/// The Docker volume the image content goes into: the plan's source is a volume and neither
/// `--images-to` nor `--drill` says otherwise. Its name is the one the backup recorded.
fn volume_target(plan: &Plan, m: &Manifest, opts: &RestoreOptions) -> Result<Option<String>> {
    if opts.images_to.is_some() || opts.drill {
        return Ok(None);
    }
    if !matches!(plan.images, Some(ImagesCfg::Volume { .. })) {
        return Ok(None);
    }
    m.dtr
        .volume
        .clone()
        .or_else(|| manifest::images_volume_name(plan))
        .map(Some)
        .ok_or_else(|| {
            Error::Verify(format!(
                "the manifest of {} names no image-content volume (dtr.volume): restore into the volume's folder with --images-to",
                m.backup_id
            ))
        })
}

/// The S3 bucket and prefix the image content goes into: the plan's source is S3 and neither
/// `--images-to` nor `--drill` says otherwise.
fn s3_target<'p>(plan: &'p Plan, opts: &RestoreOptions) -> Option<&'p crate::plan::S3Cfg> {
    if opts.images_to.is_some() || opts.drill {
        return None;
    }
    match &plan.images {
        Some(ImagesCfg::S3(cfg)) => Some(cfg),
        _ => None,
    }
}

/// Where a restore puts the image content.
enum Destination<'p> {
    /// The restore brings no image content back.
    Nowhere,
    Folder(PathBuf),
    /// A Docker volume, by the name the backup recorded.
    Volume(String),
    S3(&'p crate::plan::S3Cfg),
}

/// The one answer to where the image content of the backup `m` goes (`images`: whether
/// the restore brings image content back at all).
fn destination<'p>(
    plan: &'p Plan,
    m: &Manifest,
    opts: &RestoreOptions,
    images: bool,
) -> Result<Destination<'p>> {
    if !images {
        return Ok(Destination::Nowhere);
    }
    if let Some(v) = volume_target(plan, m, opts)? {
        return Ok(Destination::Volume(v));
    }
    if let Some(cfg) = s3_target(plan, opts) {
        return Ok(Destination::S3(cfg));
    }
    Ok(Destination::Folder(target(plan, opts)?.0))
}

/// The image of the helper containers that write a volume: `images.helper_image`, else the
/// plan's DTR image.
fn helper_image(plan: &Plan) -> Option<String> {
    match &plan.images {
        Some(ImagesCfg::Volume { helper_image, .. }) => helper_image.clone(),
        _ => None,
    }
    .or_else(|| plan.dtr.image.clone())
}

/// How an S3 target is named in the journal and in messages.
fn s3_describe(cfg: &crate::plan::S3Cfg) -> String {
    match &cfg.endpoint {
        Some(e) => format!("s3://{}/{} at {e}", cfg.bucket, cfg.prefix),
        None => format!("s3://{}/{}", cfg.bucket, cfg.prefix),
    }
}

/// The name of the staging folders inside a target.
const STAGING: &str = ".dtr-backup-restore-";

/// An absent folder is created (private, for a drill's scratch folder); an existing one must
/// be an empty folder, but for the staging folders of interrupted restores, which are
/// removed. Returns whether the folder existed.
fn prepare(target: &Path, scratch: bool, reporter: &dyn Reporter) -> Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    let entries = match std::fs::read_dir(target) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = std::fs::DirBuilder::new();
            if scratch {
                b.mode(0o700);
            } else {
                b.recursive(true);
            }
            b.create(target)
                .map_err(|e| io(e, format!("creating {}", target.display())))?;
            return Ok(false);
        }
        Err(e) => {
            return Err(io(
                e,
                format!("{} cannot be read as a folder", target.display()),
            ));
        }
    };
    let mut others = 0usize;
    for entry in entries {
        let entry = entry.map_err(|e| io(e, format!("reading {}", target.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(STAGING) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| io(e, format!("removing {}", entry.path().display())))?;
            reporter.emit(&Event::Warning {
                message: format!(
                    "removed {}, left by an interrupted restore",
                    entry.path().display()
                ),
            });
        } else {
            others += 1;
        }
    }
    if others > 0 {
        return Err(Error::refused(format!(
            "{} is not empty: restore writes only into an absent or empty folder; empty it, or choose another with --images-to",
            target.display()
        )));
    }
    Ok(true)
}

/// Moves what the staging folder holds into the target, then removes it. Idempotent: a
/// publication interrupted half-way is finished by the next one (a staging folder that is
/// gone was published whole).
fn publish(staging: &Path, target: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(staging) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e, format!("reading {}", staging.display()))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(e, format!("reading {}", staging.display())))?;
        let to = target.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(|e| {
            io(
                e,
                format!("moving the restored {} into place", to.display()),
            )
        })?;
    }
    failpoint::hit("restore.moved");
    std::fs::remove_dir(staging).map_err(|e| io(e, format!("removing {}", staging.display())))?;
    std::fs::File::open(target)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(e, format!("syncing {}", target.display())))
}

/// Removes, when dropped, what a restore wrote: the staging folder of a restore that did not
/// finish; a drill's scratch folder (or, when it existed before, what the drill put in it).
struct Cleanup {
    staging: Option<PathBuf>,
    drill: Option<(PathBuf, bool)>,
    /// A target this restore created: removed again (when still empty) if it fails.
    created: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(s) = self.staging.take() {
            let _ = std::fs::remove_dir_all(s);
        }
        if let Some(c) = self.created.take() {
            let _ = std::fs::remove_dir(c);
        }
        match self.drill.take() {
            Some((dir, false)) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Some((dir, true)) => {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let p = e.path();
                        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                            std::fs::remove_dir_all(p)
                        } else {
                            std::fs::remove_file(p)
                        };
                    }
                }
            }
            None => {}
        }
    }
}

/// Runs the restore (or drill) and reports it: `run_started`, a step per part,
/// `run_finished` with the exit code.
pub async fn restore(
    plan: Arc<Plan>,
    opts: &RestoreOptions,
    reporter: Arc<dyn Reporter>,
    cancel: Cancel,
) -> Result<RestoreReport> {
    let start = Instant::now();
    let mut summary = Summary::default();
    let result = run(&plan, opts, reporter.clone(), &cancel, &mut summary).await;
    summary.duration_ms = start.elapsed().as_millis() as u64;
    reporter.emit(&super::run_finished(
        result.as_ref().map(|r| r.backup_id.clone()),
        summary,
    ));
    result
}

async fn run(
    plan: &Plan,
    opts: &RestoreOptions,
    reporter: Arc<dyn Reporter>,
    cancel: &Cancel,
    summary: &mut Summary,
) -> Result<RestoreReport> {
    let stores = storage::open(plan)?;
    let operation = if opts.drill {
        "restore --drill"
    } else {
        "restore"
    };
    let _lock = lock::acquire(
        stores.state.clone(),
        plan.name.as_str(),
        operation,
        opts.lock_timeout,
        plan.lock_lease,
        reporter.as_ref(),
        cancel,
    )
    .await?;
    failpoint::hit("restore.locked");
    let state = stores.state.clone();
    let store = stores.backups.clone();
    let (mut journal, manifest, parts, resumed) = open_restore(
        plan,
        opts,
        state.as_ref(),
        store.as_ref(),
        reporter.as_ref(),
    )?;
    reporter.emit(&Event::RunStarted {
        format_version: 1,
        plan: plan.name.to_string(),
        backup_id: journal.backup_id.clone(),
        resumed,
        time: clock::rfc3339(clock::now_unix()),
    });
    state::save_restore(state.as_ref(), &journal)?;
    failpoint::hit("restore.journal-created");
    let result = run_steps(
        plan,
        opts,
        &mut journal,
        state.as_ref(),
        store,
        &manifest,
        parts,
        reporter,
        cancel,
        summary,
    )
    .await;
    match &result {
        Ok(_) => state::clear_restore(state.as_ref())?,
        // Something is in place: the next restore finishes the job from the journal.
        Err(_) if live(&journal) => {}
        // Nothing is: what the restore wrote is gone with it, the next one starts afresh.
        Err(_) => {
            let _ = state::clear_restore(state.as_ref());
        }
    }
    result
}

/// An unfinished restore has put content where it is served (a drill never does).
fn live(j: &RestoreState) -> bool {
    !j.drill
        && (j.container.is_some()
            || ["images.begun", "images.staged", "images", "metadata", "ucp"]
                .iter()
                .any(|s| j.is_done(s)))
}

/// The journal's restore to finish (the options agree with it), or a new one. An unfinished
/// restore that the options disagree with is abandoned when nothing of it is in place (its
/// partial work removed), else refused unless `--fresh`.
fn open_restore(
    plan: &Plan,
    opts: &RestoreOptions,
    state: &dyn Store,
    store: &dyn Store,
    reporter: &dyn Reporter,
) -> Result<(RestoreState, Manifest, Parts, bool)> {
    let warn = |w: String| reporter.emit(&Event::Warning { message: w });
    let only_images = opts.only.contains(&Only::Images);
    let only_metadata = opts.only.contains(&Only::Metadata);
    let only_ucp = opts.only.contains(&Only::Ucp);
    if let Some(e) = state::load_restore(state)? {
        // Folders are this host's: a journal kept with the backups (in S3, say) may come
        // from another machine, whose folders are not here to finish or to remove.
        let here = crate::process::hostname();
        let foreign = !e.host.is_empty() && e.host != here && e.volume.is_none() && e.s3.is_none();
        if foreign && !opts.fresh {
            return Err(Error::Usage(format!(
                "an unfinished restore of backup {} into {} was begun on host {}, not on {here}: finish it there, or abandon it with --fresh (nothing on that host is touched)",
                e.backup_id,
                e.target.display(),
                e.host
            )));
        }
        if foreign {
            state::clear_restore(state)?;
            warn(format!(
                "abandoned the unfinished restore of backup {} begun on host {}; what it wrote there stays",
                e.backup_id, e.host
            ));
            return new_restore(plan, opts, store, &warn);
        }
        let same_backup = match &opts.which {
            Which::Latest => true,
            Which::Id(id) => *id == e.backup_id,
        };
        let same_target = match (&opts.images_to, opts.drill) {
            (Some(p), _) => *p == e.target,
            (None, true) => true,
            (None, false) => match &e.volume {
                None if e.s3.is_some() => s3_target(plan, opts).map(s3_describe) == e.s3,
                Some(v) => manifest::read(store, &e.backup_id)
                    .and_then(|m| volume_target(plan, &m, opts))
                    .is_ok_and(|w| w.as_ref() == Some(v)),
                None => {
                    e.target.as_os_str().is_empty()
                        || target(plan, opts).is_ok_and(|(t, _)| t == e.target)
                }
            },
        };
        let same = same_backup
            && same_target
            && e.drill == opts.drill
            && e.only_images == only_images
            && e.only_metadata == only_metadata
            && e.only_ucp == only_ucp;
        let begun = clock::rfc3339(e.started_at);
        if same && !opts.fresh {
            let m = manifest::read(store, &e.backup_id).map_err(|err| {
                err.context(format!(
                    "finishing the restore of backup {} begun at {begun}",
                    e.backup_id
                ))
            })?;
            let p = parts(&m, opts)?;
            return Ok((e, m, p, true));
        }
        if live(&e) && !opts.fresh {
            return Err(Error::Usage(format!(
                "an unfinished restore of backup {} into {}, begun at {begun}, has put content in place; finish it with the same options (`restore --backup {}{}`), or abandon it with --fresh (what it put in place stays)",
                e.backup_id,
                e.target.display(),
                e.backup_id,
                {
                    let only: Vec<&str> = [
                        (e.only_ucp, "ucp"),
                        (e.only_images, "images"),
                        (e.only_metadata, "metadata"),
                    ]
                    .into_iter()
                    .filter_map(|(on, part)| on.then_some(part))
                    .collect();
                    if only.is_empty() {
                        String::new()
                    } else {
                        format!(" --only {}", only.join(","))
                    }
                },
            )));
        }
        abandon(&e);
        state::clear_restore(state)?;
        warn(format!(
            "abandoned the unfinished {} of backup {} begun at {begun}; removed its partial work",
            if e.drill { "drill" } else { "restore" },
            e.backup_id
        ));
    }
    new_restore(plan, opts, store, &warn)
}

/// A restore that starts afresh: which backup, its parts, where they go.
fn new_restore(
    plan: &Plan,
    opts: &RestoreOptions,
    store: &dyn Store,
    warn: &dyn Fn(String),
) -> Result<(RestoreState, Manifest, Parts, bool)> {
    let only_images = opts.only.contains(&Only::Images);
    let only_metadata = opts.only.contains(&Only::Metadata);
    let only_ucp = opts.only.contains(&Only::Ucp);
    let backup_id = manifest::resolve(store, &opts.which, warn)?;
    let m = manifest::read(store, &backup_id)?;
    let p = parts(&m, opts)?;
    let (target, volume, s3) = match destination(plan, &m, opts, p.images)? {
        Destination::Nowhere => (PathBuf::new(), None, None),
        Destination::Folder(t) => (t, None, None),
        Destination::Volume(v) => (PathBuf::new(), Some(v), None),
        Destination::S3(cfg) => (PathBuf::new(), None, Some(s3_describe(cfg))),
    };
    let journal = RestoreState {
        s3,
        backup_id,
        started_at: clock::now_unix(),
        drill: opts.drill,
        only_images,
        only_metadata,
        only_ucp,
        host: crate::process::hostname(),
        target,
        volume,
        created_target: false,
        staging: None,
        container: None,
        container_of: None,
        restored: None,
        done: Default::default(),
    };
    Ok((journal, m, p, false))
}

/// Removes the partial work of an unfinished restore: its staging folder, a drill's scratch
/// folder that it created, a target it created that is still empty.
fn abandon(j: &RestoreState) {
    // A staging folder in a volume or an S3 prefix is not a local path: the next restore
    // into that volume removes it.
    if let Some(s) = j.staging.as_ref().filter(|s| s.is_absolute()) {
        let _ = std::fs::remove_dir_all(s);
    }
    if j.created_target {
        let _ = if j.drill {
            std::fs::remove_dir_all(&j.target)
        } else {
            std::fs::remove_dir(&j.target)
        };
    }
}

/// Records a completed step in the journal.
fn mark(j: &mut RestoreState, state: &dyn Store, step: &str) -> Result<()> {
    j.done.insert(step.to_owned(), clock::now_unix());
    state::save_restore(state, j)
}

fn skipped(reporter: &dyn Reporter, summary: &mut Summary, id: &str) {
    summary.steps_skipped += 1;
    reporter.emit(&Event::StepSkipped {
        step: id.into(),
        reason: "completed by an interrupted restore (its journal says so)".into(),
    });
}

/// DTR's restore container that an interrupted restore started: waited for, then judged by
/// its exit status (0: the metadata is restored), then removed.
async fn adopt(
    engine: &Engine,
    j: &mut RestoreState,
    state: &dyn Store,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<()> {
    let Some(id) = j.container.clone() else {
        return Ok(());
    };
    // Whose restore it ran: UCP's, or DTR's (journals before UCP say nothing: DTR's).
    let ucp = j.container_of.as_deref() == Some("ucp");
    let (part, whose, archive, undo) = if ucp {
        (
            "ucp",
            "UCP's restore",
            "UCP archive",
            "uninstall the UCP it may have installed (`docker container run --rm -it -v /var/run/docker.sock:/var/run/docker.sock <ucp image> uninstall-ucp --interactive`)",
        )
    } else {
        (
            "metadata",
            "DTR's restore",
            "metadata archive",
            "remove the DTR replica it may have made (`docker run -it --rm docker/dtr:<version> destroy --ucp-insecure-tls`)",
        )
    };
    let warn = |w: String| reporter.emit(&Event::Warning { message: w });
    let status = container::wait_exit(engine, &id, cancel).await?;
    let mut unknown = None;
    match status {
        Some(0) if j.is_done(&format!("{part}.fed")) => {
            warn(format!(
                "{whose} in container {id}, started by the interrupted restore, had completed (status 0) with the whole {archive}: it is restored"
            ));
            j.done.insert(part.into(), clock::now_unix());
        }
        // Its input may have ended where the killed process stopped feeding it.
        Some(0) => {
            unknown = Some(Error::refused(format!(
                "{whose} in container {id}, started by the interrupted restore, exited 0 before it was given the whole {archive}: what it restored is unknown; {undo}, then run this restore again"
            )));
        }
        Some(code) => warn(format!(
            "{whose} in container {id}, started by the interrupted restore, ended with status {code}; it runs again"
        )),
        None => {}
    }
    if status.is_some()
        && let Err(e) = container::remove(engine, &id).await
    {
        warn(format!(
            "{e}; remove it by hand (`docker rm -f {id}`){}",
            if ucp {
                ""
            } else {
                ": it holds the UCP password in its environment"
            }
        ));
    }
    j.container = None;
    j.container_of = None;
    state::save_restore(state, j)?;
    unknown.map_or(Ok(()), Err)
}

#[allow(clippy::too_many_arguments)]
async fn run_steps(
    plan: &Plan,
    opts: &RestoreOptions,
    journal: &mut RestoreState,
    state: &dyn Store,
    store: Arc<dyn Store>,
    manifest: &Manifest,
    parts: Parts,
    reporter_arc: Arc<dyn Reporter>,
    cancel: &Cancel,
    summary: &mut Summary,
) -> Result<RestoreReport> {
    let reporter = reporter_arc.as_ref();
    let backup_id = journal.backup_id.clone();
    let target = journal.target.clone();
    let (_, dec) = crypto::for_plan(plan)?;

    // 0. What UCP's and DTR's restores need, before anything is written; a restore
    //    container that an interrupted restore left is waited for and judged first. With UCP
    //    restored first, UCP cannot answer yet: its login is checked once it is back.
    let mut ucp_left = parts.ucp && !journal.is_done("ucp");
    let password = if parts.metadata && !journal.is_done("metadata") {
        Some(secret::resolve(&metadata_restore::ucp_of(plan)?.password)?)
    } else {
        None
    };
    let engine = if password.is_some() || ucp_left {
        started(reporter, "preflight", "preflight");
        let start = Instant::now();
        let engine: Result<(Engine, bool)> = async {
            let engine = metadata_restore::engine(plan).await?;
            // A leftover container may have finished a part: judged before what is left.
            adopt(&engine, journal, state, reporter, cancel).await?;
            let ucp_left = parts.ucp && !journal.is_done("ucp");
            let warn = |w: String| reporter.emit(&Event::Warning { message: w });
            crate::steps::preflight::remove_leftovers(&engine, plan, true, &warn).await?;
            if ucp_left {
                ucp_restore::preflight(plan, manifest, &engine).await?;
            }
            if let Some(password) = &password
                && !journal.is_done("metadata")
            {
                metadata_restore::preflight(plan, manifest, &engine, password, !ucp_left).await?;
            }
            Ok((engine, ucp_left))
        }
        .await;
        ended(reporter, summary, "preflight", start, &engine);
        let (engine, left) = engine?;
        ucp_left = left;
        Some(engine)
    } else {
        None
    };

    // 1. Before UCP's or DTR's restore reads its archive, the whole backup's checks
    //    (integrity, and the blobs the metadata references present): nothing is written when
    //    they fail. The image content alone needs no pass of its own: its integrity and every
    //    blob's digest are checked while it is restored, and nothing is moved into place
    //    before they hold.
    if parts.metadata || parts.ucp {
        // Checked again on a resumed run: the archives may have changed since.
        let left = (parts.metadata && !journal.is_done("metadata")) || ucp_left;
        if !left {
            skipped(reporter, summary, "verify");
        } else {
            step(reporter, summary, "verify", "verify", || {
                let meter = Meter::default();
                let ticker = Ticker::start(
                    &meter,
                    reporter_arc.clone(),
                    "verify",
                    verify::to_read(
                        store.as_ref(),
                        manifest,
                        verify::Pass::Verify(ReadData::Layout),
                        dec.as_ref(),
                    ),
                );
                let checks = verify::check_backup(
                    Metered::wrap(store.clone(), &meter).as_ref(),
                    manifest,
                    dec.as_ref(),
                    ReadData::Layout,
                    Rehash::Undecrypted,
                    cancel,
                );
                ticker.finish();
                if cancel.is_cancelled() {
                    return Err(Error::Interrupted);
                }
                failed(&checks, &backup_id)
            })?;
            mark(journal, state, "verify")?;
        }
    }

    // 2. The image content: staged inside the (absent or empty) target, moved into place
    //    once all of it is in and checked.
    let mut cleanup = Cleanup {
        staging: None,
        drill: None,
        created: None,
    };
    let scratch = opts.drill && opts.images_to.is_none();
    // What the image content's restore reads, reported as its progress.
    let meter = Meter::default();
    let mut ticker = (parts.images
        && !journal.is_done("images")
        && !journal.is_done("images.staged"))
    .then(|| {
        let total = verify::to_read(
            store.as_ref(),
            manifest,
            verify::Pass::RestoreImages,
            dec.as_ref(),
        );
        Ticker::start(&meter, reporter_arc.clone(), "images", total)
    });
    let unmetered = store.clone();
    let store = Metered::wrap(store, &meter);
    let restored = if !parts.images {
        Restored::default()
    } else if journal.is_done("images") {
        skipped(reporter, summary, "images");
        journal.restored.clone().unwrap_or_default()
    } else if let Some(cfg) = s3_target(plan, opts).filter(|_| journal.s3.is_some()) {
        let restored = step(reporter, summary, "images", "restore_images", || {
            let dest = storage::open_s3(cfg, cfg.prefix.as_str())?;
            let existing: std::collections::BTreeMap<String, u64> =
                dest.list_sized("")?.into_iter().collect();
            // Objects under the prefix are this restore's own only when its journal says it
            // began writing there.
            let resumed = journal.is_done("images.begun");
            if !resumed {
                if let Some(k) = existing.keys().next() {
                    return Err(Error::refused(format!(
                        "{} is not empty ({} objects, {k} among them): restore writes only under an empty prefix; empty it, or restore into a folder with --images-to",
                        s3_describe(cfg),
                        existing.len()
                    )));
                }
                mark(journal, state, "images.begun")?;
            }
            let restored = crate::steps::images::s3::restore_objects(
                store.as_ref(),
                manifest,
                dec.as_ref(),
                dest,
                existing,
                resumed,
                cancel,
            );
            match restored {
                Ok(r) => {
                    if let Some(t) = ticker.take() {
                        t.finish();
                    }
                    Ok(r)
                }
                Err(Error::Verify(m)) => {
                    if !resumed {
                        // Nothing of it is left under the prefix: nothing to finish.
                        journal.done.remove("images.begun");
                    }
                    Err(Error::Verify(format!(
                        "{m}; nothing of it left under {}",
                        s3_describe(cfg)
                    )))
                }
                Err(e) => Err(e),
            }
        })?;
        failpoint::hit("restore.step.images.done-not-journaled");
        journal.restored = Some(restored.clone());
        mark(journal, state, "images")?;
        failpoint::hit("restore.step.images.journaled");
        restored
    } else if let Some(volume) = journal.volume.clone() {
        started(reporter, "images", "restore_images");
        let start = Instant::now();
        let done = to_volume(
            plan,
            manifest,
            &volume,
            journal,
            state,
            &store,
            dec.clone(),
            reporter,
            cancel,
        )
        .await;
        if let (Ok(_), Some(t)) = (&done, ticker.take()) {
            t.finish();
        }
        ended(reporter, summary, "images", start, &done);
        let restored = done?;
        failpoint::hit("restore.step.images.done-not-journaled");
        journal.staging = None;
        mark(journal, state, "images")?;
        failpoint::hit("restore.step.images.journaled");
        restored
    } else {
        let restored = step(reporter, summary, "images", "restore_images", || {
            if !journal.is_done("images.staged") {
                // The staging folder of the interrupted restore is its own partial work.
                if let Some(s) = journal.staging.take() {
                    match std::fs::remove_dir_all(&s) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io(e, format!("removing {}", s.display())));
                        }
                        _ => {}
                    }
                }
                if !prepare(&target, scratch, reporter)? {
                    journal.created_target = true;
                }
                let staging = target.join(format!("{STAGING}{}", clock::random_hex(4)));
                journal.staging = Some(staging.clone());
                state::save_restore(state, journal)?;
                {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&staging)
                        .map_err(|e| io(e, format!("creating {}", staging.display())))?;
                }
                cleanup.staging = Some(staging.clone());
                cleanup.drill = opts
                    .drill
                    .then(|| (target.clone(), !journal.created_target));
                cleanup.created = (journal.created_target && !opts.drill).then(|| target.clone());
                let restored =
                    images::to_folder(store.as_ref(), manifest, dec.as_ref(), &staging, cancel)
                        .map_err(|e| match e {
                            Error::Verify(m) => Error::Verify(format!(
                                "{m}; nothing restored: {} is as it was",
                                target.display()
                            )),
                            e => e,
                        })?;
                journal.restored = Some(restored);
                mark(journal, state, "images.staged")?;
                // Staged whole: kept for the publication, whatever happens from here.
                cleanup.staging = None;
                failpoint::hit("restore.staged");
            }
            if let Some(s) = &journal.staging {
                publish(s, &target)?;
            }
            if let Some(t) = ticker.take() {
                t.finish();
            }
            Ok(journal.restored.clone().unwrap_or_default())
        })?;
        failpoint::hit("restore.step.images.done-not-journaled");
        journal.staging = None;
        mark(journal, state, "images")?;
        failpoint::hit("restore.step.images.journaled");
        cleanup.created = None;
        restored
    };
    drop(ticker);
    let store = unmetered;
    if opts.drill && parts.images {
        cleanup.drill = Some((target.clone(), !journal.created_target));
    }
    summary.bytes = restored.bytes;

    // 2b. UCP before DTR's restore, as a whole cluster restores (Swarm, UCP, then DTR); after
    //     the image content, so that every check dtr-backup makes of its own (the target
    //     empty, the content whole) has passed before UCP is touched.
    if parts.ucp && journal.is_done("ucp") {
        skipped(reporter, summary, "ucp");
    } else if let (true, Some(engine)) = (parts.ucp, &engine) {
        started(reporter, "ucp", "restore_ucp");
        let start = Instant::now();
        let done = ucp_restore::run(
            plan,
            manifest,
            engine,
            store.clone(),
            dec.clone(),
            reporter_arc.clone(),
            cancel.clone(),
            &mut |p| {
                match p {
                    metadata_restore::Progress::Created(id) => {
                        journal.container = Some(id.to_owned());
                        journal.container_of = Some("ucp".into());
                        journal.done.remove("ucp.fed");
                    }
                    metadata_restore::Progress::Fed => {
                        journal.done.insert("ucp.fed".into(), clock::now_unix());
                    }
                }
                state::save_restore(state, journal)
            },
        )
        .await;
        ended(reporter, summary, "ucp", start, &done);
        let id = done?;
        failpoint::hit("restore.step.ucp.done-not-journaled");
        journal.container = None;
        journal.container_of = None;
        mark(journal, state, "ucp")?;
        if let Err(e) = container::remove(engine, &id).await {
            reporter.emit(&Event::Warning {
                message: format!("{e}; remove it by hand (`docker rm -f {id}`)"),
            });
        }
    }

    // 3. The metadata, through DTR's restore, once the image content is in place.
    if parts.metadata && journal.is_done("metadata") {
        skipped(reporter, summary, "metadata");
    } else if let (Some(engine), Some(password)) = (&engine, &password) {
        started(reporter, "metadata", "restore_metadata");
        let start = Instant::now();
        // UCP restored just now: it must answer and accept the login before DTR's restore;
        // it takes a while to come up.
        let back = if ucp_left {
            ucp_back(plan, password, reporter, cancel).await
        } else {
            Ok(())
        };
        if back.is_err() {
            ended(reporter, summary, "metadata", start, &back);
            back?;
        }
        let done = metadata_restore::run(
            plan,
            manifest,
            engine,
            store.clone(),
            dec.clone(),
            password,
            reporter_arc.clone(),
            cancel.clone(),
            &mut |p| {
                match p {
                    metadata_restore::Progress::Created(id) => {
                        journal.container = Some(id.to_owned());
                        journal.container_of = None;
                        journal.done.remove("metadata.fed");
                    }
                    metadata_restore::Progress::Fed => {
                        journal
                            .done
                            .insert("metadata.fed".into(), clock::now_unix());
                    }
                }
                state::save_restore(state, journal)
            },
        )
        .await;
        ended(reporter, summary, "metadata", start, &done);
        let id = done?;
        failpoint::hit("restore.step.metadata.done-not-journaled");
        journal.container = None;
        journal.container_of = None;
        mark(journal, state, "metadata")?;
        if let Err(e) = container::remove(engine, &id).await {
            reporter.emit(&Event::Warning {
                message: format!(
                    "{e}; remove it by hand (`docker rm -f {id}`): it holds the UCP password in its environment"
                ),
            });
        }
    }

    // 4. A drill: what a registry started on the folder could serve.
    let checks = if opts.drill {
        step(reporter, summary, "drill", "drill", || {
            let checks = drill_checks(
                store.as_ref(),
                manifest,
                dec.as_ref(),
                &target,
                &restored,
                cancel,
            );
            if cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            for c in &checks {
                reporter.emit(&Event::Check {
                    step: "drill".into(),
                    name: c.name.clone(),
                    ok: c.ok,
                    detail: c.detail.clone(),
                });
            }
            failed(&checks, &backup_id)?;
            Ok(checks)
        })?
    } else {
        Vec::new()
    };
    Ok(RestoreReport {
        backup_id,
        target: match (&journal.volume, &journal.s3) {
            (Some(v), _) => PathBuf::from(format!("the volume {v}")),
            (_, Some(s3)) => PathBuf::from(s3),
            _ => target,
        },
        drill: opts.drill,
        parts: [
            (parts.images, "images"),
            (parts.ucp, "ucp"),
            (parts.metadata, "metadata"),
        ]
        .into_iter()
        .filter(|&(on, _)| on)
        .map(|(_, part)| part.to_owned())
        .collect(),
        restored,
        checks,
    })
}

/// How long a restored UCP is given to answer and accept the login before DTR's restore.
const UCP_BACK: Duration = Duration::from_secs(300);

/// Waits for a UCP restored by this run to answer and accept the plan's login (at most
/// [`UCP_BACK`], asking every 5 seconds).
async fn ucp_back(
    plan: &Plan,
    password: &secret::Secret,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<()> {
    let ucp = metadata_restore::ucp_of(plan)?;
    let start = Instant::now();
    let mut said = false;
    loop {
        let last = match crate::ucp::check(ucp, password, true).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= UCP_BACK {
            return Err(last.context(format!(
                "UCP was restored, but did not answer within {} s; once it does, run the same restore again to restore DTR's metadata",
                UCP_BACK.as_secs()
            )));
        }
        if !said {
            reporter.emit(&Event::Log {
                step: "metadata".into(),
                message: format!(
                    "waiting for the restored UCP at {} to answer (at most {} s): {last}",
                    ucp.url,
                    UCP_BACK.as_secs()
                ),
            });
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = cancel.cancelled() => return Err(Error::Interrupted),
        }
    }
}

/// Which parts a restore brings back.
#[derive(Clone, Copy, Debug)]
struct Parts {
    ucp: bool,
    images: bool,
    metadata: bool,
}

/// What the backup holds and the options ask for; refuses a restore of nothing.
fn parts(m: &Manifest, opts: &RestoreOptions) -> Result<Parts> {
    let has = |k| m.artifacts.iter().any(|a| a.kind == k);
    let wants = |part| opts.only.is_empty() || opts.only.contains(&part);
    let p = Parts {
        // A drill changes nothing live: UCP's backup goes only into a UCP, metadata only into
        // a DTR.
        ucp: has(ArtifactKind::Ucp) && wants(Only::Ucp) && !opts.drill,
        images: has(ArtifactKind::Images) && wants(Only::Images),
        metadata: has(ArtifactKind::Metadata) && wants(Only::Metadata) && !opts.drill,
    };
    if opts.drill
        && opts
            .only
            .iter()
            .any(|o| matches!(o, Only::Metadata | Only::Ucp))
    {
        return Err(Error::Usage(
            "a drill restores image content into a scratch folder; --only metadata or --only ucp would go into a live DTR or UCP: leave out --drill or --only".into(),
        ));
    }
    if opts.drill && !p.images {
        return Err(Error::Usage(format!(
            "backup {} holds no image content to drill",
            m.backup_id
        )));
    }
    if opts.only.contains(&Only::Ucp) && !p.ucp {
        return Err(Error::Usage(format!(
            "backup {} holds no UCP backup (its plan's `parts` did not list ucp)",
            m.backup_id
        )));
    }
    if !p.images && !p.metadata && !p.ucp {
        return Err(Error::Usage(format!(
            "backup {} holds nothing that --only asks for",
            m.backup_id
        )));
    }
    Ok(p)
}

fn failed(checks: &[Check], backup_id: &str) -> Result<()> {
    let bad: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Verify(format!(
        "backup {backup_id} fails {} of {} checks, nothing restored from it: {}",
        bad.len(),
        checks.len(),
        bad.iter()
            .take(3)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

fn drill_checks(
    store: &dyn Store,
    m: &Manifest,
    dec: Option<&crypto::Decryption>,
    target: &Path,
    restored: &Restored,
    cancel: &Cancel,
) -> Vec<Check> {
    let mut checks = vec![match images::rehash_blobs(target, cancel) {
        Ok((n, bad)) => Check {
            name: "restored: blobs read back from disk hash to their digests".into(),
            ok: bad.is_empty(),
            detail: if bad.is_empty() {
                format!(
                    "{n} blobs read back ({} files, {} bytes restored)",
                    restored.files, restored.bytes
                )
            } else {
                format!("{} of {n} blobs do not: {}", bad.len(), bad.join(", "))
            },
        },
        Err(e) => Check {
            name: "restored: blobs read back from disk hash to their digests".into(),
            ok: false,
            detail: e.to_string(),
        },
    }];
    let present = images::blobs_in(target).map_err(|e| e.to_string());
    let refs = verify::metadata_references(store, m, dec, cancel);
    checks.push(match (refs, present) {
        (Ok(Some(refs)), Ok(present)) => verify::references_present(
            "restored: blobs referenced by metadata are in the restored folder",
            &refs,
            present.len(),
            |d| present.contains(d),
        ),
        // No metadata to check the blobs against: the read-back above is the drill's check.
        (Ok(None), Ok(_)) => return checks,
        (Err(e), _) | (_, Err(e)) => Check {
            name: "restored: blobs referenced by metadata are in the restored folder".into(),
            ok: false,
            detail: e,
        },
    });
    checks
}

fn started(reporter: &dyn Reporter, id: &str, kind: &str) {
    reporter.emit(&Event::StepStarted {
        step: id.into(),
        kind: kind.into(),
    });
}

fn ended<T>(
    reporter: &dyn Reporter,
    summary: &mut Summary,
    id: &str,
    start: Instant,
    r: &Result<T>,
) {
    match r {
        Ok(_) => {
            summary.steps_run += 1;
            reporter.emit(&Event::StepFinished {
                step: id.into(),
                duration_ms: start.elapsed().as_millis() as u64,
                artifacts: vec![],
            });
        }
        Err(e) => reporter.emit(&Event::StepFailed {
            step: id.into(),
            error: e.to_string(),
        }),
    }
}

/// The image content into a Docker volume through helper containers: staged in the volume,
/// moved into place once all of it is in and checked (`steps::images::volume::VolumeTarget`).
#[allow(clippy::too_many_arguments)]
async fn to_volume(
    plan: &Plan,
    m: &Manifest,
    volume: &str,
    journal: &mut RestoreState,
    state: &dyn Store,
    store: &Arc<dyn Store>,
    dec: Option<crypto::Decryption>,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Restored> {
    let image = helper_image(plan).ok_or_else(|| {
        Error::Usage(
            "set `images.helper_image` or `dtr.image`: the volume is written through a container of that image".into(),
        )
    })?;
    let vt = VolumeTarget {
        engine: metadata_restore::engine(plan).await?,
        image,
        volume: volume.to_owned(),
        node: m.dtr.node.clone(),
        plan: plan.name.to_string(),
        backup_id: m.backup_id.clone(),
    };
    let warn = |w: String| reporter.emit(&Event::Warning { message: w });
    // Helpers that a killed run left (an upload's, created and never started).
    crate::steps::preflight::remove_leftovers(&vt.engine, plan, false, &warn).await?;
    if !journal.is_done("images.staged") {
        // Any staging folder in the volume, the interrupted restore's own included, goes.
        vt.prepare(&warn, cancel).await?;
        let staging = format!("{STAGING}{}", clock::random_hex(4));
        journal.staging = Some(PathBuf::from(&staging));
        state::save_restore(state, journal)?;
        match vt.upload(store.clone(), m, dec, &staging, cancel).await {
            Ok(restored) => {
                // Durable in the volume before the journal says it is staged.
                vt.sync(cancel).await?;
                journal.restored = Some(restored);
                mark(journal, state, "images.staged")?;
                failpoint::hit("restore.staged");
            }
            Err(e) => {
                // Removed even after an interruption: the stream stopped, the helper is quick.
                if let Err(d) = vt.discard(&staging, &Cancel::new()).await {
                    reporter.emit(&Event::Warning {
                        message: format!(
                            "{d}; the next restore removes the staging folder {staging} from the volume {volume}"
                        ),
                    });
                }
                return Err(match e {
                    Error::Verify(msg) => Error::Verify(format!(
                        "{msg}; nothing restored: the volume {volume} is as it was"
                    )),
                    e => e,
                });
            }
        }
    }
    if let Some(staging) = &journal.staging {
        vt.publish(&staging.to_string_lossy(), cancel).await?;
    }
    Ok(journal.restored.clone().unwrap_or_default())
}

/// Runs one part as a step: `step_started`, then `step_finished` or `step_failed`.
fn step<T>(
    reporter: &dyn Reporter,
    summary: &mut Summary,
    id: &str,
    kind: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    started(reporter, id, kind);
    let start = Instant::now();
    let result = f();
    ended(reporter, summary, id, start, &result);
    result
}

/// What `restore --dry-run` prints: each part with what it would do. Reads the listing of
/// backups only when `which` is `latest`; touches nothing, takes no lock.
pub fn dry_run(plan: &Plan, opts: &RestoreOptions) -> Result<Vec<(String, Vec<String>)>> {
    let stores = storage::open(plan)?;
    let store = stores.backups.as_ref();
    let backup_id = manifest::resolve(store, &opts.which, &|_| {})?;
    let m = manifest::read(store, &backup_id)?;
    let parts = parts(&m, opts)?;
    let dest = destination(plan, &m, opts, parts.images)?;
    // The blobs the backup keeps in the blob store (its list is read, nothing else).
    let blobs = if parts.images {
        // Every line read: a damaged list or base fails the dry run instead of being counted.
        crate::snapshot::blobs_of(store, &m)?.try_fold(0usize, |n, b| b.map(|_| n + 1))?
    } else {
        0
    };
    let mut steps = vec![];
    let lock = format!(
        "take the lock of plan {} (no backup runs during the restore)",
        plan.name
    );
    let mut preflight = vec![];
    if parts.ucp {
        let image = ucp_restore::image(plan, &m)?;
        preflight.extend([
            format!(
                "check that the plan's UCP image {image} is UCP {} (the backup's version)",
                m.ucp
                    .as_ref()
                    .and_then(|u| u.version.as_deref())
                    .unwrap_or("?")
            ),
            "check that UCP is not installed (no container named ucp-controller)".into(),
        ]);
    }
    if parts.metadata {
        let ucp = plan.ucp.as_ref().ok_or_else(|| {
            Error::Usage(
                "restoring metadata needs the plan's `ucp` section; or pass --only images".into(),
            )
        })?;
        preflight.extend([
            format!(
                "check that the plan's DTR image {} is DTR {} (the backup's version)",
                plan.dtr.image.as_deref().unwrap_or("?"),
                m.dtr.version.as_deref().unwrap_or("?")
            ),
            "check that no DTR replica runs (no container named dtr-rethinkdb-<replica>)".into(),
            format!(
                "GET {}/_ping; POST {}/auth/login as {} with the password {}{}",
                ucp.url,
                ucp.url,
                ucp.username,
                ucp.password.redacted(),
                if parts.ucp {
                    " (after UCP's restore, before DTR's)"
                } else {
                    ""
                }
            ),
        ]);
    }
    if !preflight.is_empty() {
        preflight.insert(0, lock.clone());
        steps.push(("preflight".to_owned(), preflight));
    }
    if parts.metadata || parts.ucp {
        steps.push((
            "verify".to_owned(),
            vec![format!(
                "check backup {backup_id} at {}: every artifact's size, decryption (integrity protection) and layout, and the blobs the metadata references; stop if any check fails",
                store.describe()
            )],
        ));
    }
    let mut images = if parts.metadata || parts.ucp {
        vec![]
    } else {
        vec![lock]
    };
    if let Destination::Volume(v) = &dest {
        let image = helper_image(plan).unwrap_or_else(|| "?".into());
        let node = m.dtr.node.as_deref().unwrap_or("?");
        images.extend([
            format!(
                "check with a helper container of {image} on node {node} (the volume {v} at /storage) that the volume is empty, but for staging folders of interrupted restores, which are removed"
            ),
            format!(
                "decrypt the images artifact of {backup_id} and stream it through the archive upload of a created helper into /storage/{STAGING}<random>/ (no links, nothing outside it; every blob checked against its digest on the way; nothing staged on local disk)"
            ),
            format!(
                "move the staged content into the root of the volume {v} with `sh -c mv` in a helper once all of it is in and checked; sync"
            ),
        ]);
        if blobs > 0 {
            images.insert(
                images.len() - 1,
                format!(
                    "decrypt {blobs} blobs from the blob store into the same stream (each checked against its digest on the way)"
                ),
            );
        }
        steps.push(("images".to_owned(), images));
        images = Vec::new();
    }
    if let Destination::S3(cfg) = dest {
        images.extend([
            format!(
                "check that {} holds no object (else stop)",
                s3_describe(cfg)
            ),
            format!(
                "decrypt the images artifact of {backup_id} and put each file as an object under {} once its content matched its digest (no links but server-side copies, nothing outside the prefix)",
                s3_describe(cfg)
            ),
        ]);
        if blobs > 0 {
            images.push(format!(
                "decrypt {blobs} blobs from the blob store into {} (each checked against its digest before its upload completes)",
                s3_describe(cfg)
            ));
        }
        steps.push(("images".to_owned(), images));
        images = Vec::new();
    }
    if let Destination::Folder(target) = &dest {
        images.push(if opts.drill {
            format!(
                "create the scratch folder {} (absent or empty)",
                target.display()
            )
        } else {
            format!(
                "check that {} is absent or empty; create it if absent",
                target.display()
            )
        });
        for a in m
            .artifacts
            .iter()
            .filter(|a| a.kind == ArtifactKind::Images)
        {
            images.push(format!(
            "decrypt {backup_id}/{} and extract {}/_data/... into a staging folder inside {} (nothing outside it, no links; each file under a temporary name, fsynced, renamed; every blob checked against its digest first; the integrity protection checked at the end)",
            a.path,
            m.dtr.volume.as_deref().unwrap_or("?"),
            target.display()
        ));
        }
        if blobs > 0 {
            images.push(format!(
            "decrypt {blobs} blobs from the blob store into {} (each checked against its digest)",
            target.display()
        ));
        }
        images.push(format!(
            "move the staged content into {} once all of it is in and checked",
            target.display()
        ));
        steps.push(("images".to_owned(), images));
    }
    if parts.ucp {
        let artifact = ucp_restore::artifact(&m)
            .map(|a| a.path.clone())
            .unwrap_or_default();
        steps.push((
            "ucp".to_owned(),
            vec![
                format!(
                    "docker create {} {} (bind {}; stdin open once, no tty, log driver none, on node {})",
                    ucp_restore::image(plan, &m)?,
                    ucp_restore::command().join(" "),
                    crate::steps::ucp::socket_bind(plan),
                    m.ucp.as_ref().and_then(|u| u.node.as_deref()).unwrap_or("?"),
                ),
                format!(
                    "attach, start, stream the decrypted {backup_id}/{artifact} into its standard input; its output as log events; remove the container"
                ),
            ],
        ));
    }
    if parts.metadata {
        let cmd =
            metadata_restore::command(plan, &m, |p| Ok(format!("<content of {}>", p.display())))?;
        let artifact = metadata_restore::artifact(&m)
            .map(|a| a.path.clone())
            .unwrap_or_default();
        let ucp_password = plan
            .ucp
            .as_ref()
            .map(|u| u.password.redacted())
            .unwrap_or_default();
        steps.push((
            "metadata".to_owned(),
            vec![
                format!(
                    "docker create {} {} (stdin open once, no tty, log driver none, on node {})",
                    plan.dtr.image.as_deref().unwrap_or("?"),
                    cmd.join(" "),
                    m.dtr.node.as_deref().unwrap_or("?")
                ),
                format!("env UCP_PASSWORD={ucp_password}"),
                format!(
                    "attach, start, stream the decrypted {backup_id}/{artifact} into its standard input; its output as log events; remove the container"
                ),
            ],
        ));
    }
    if let (true, Destination::Folder(scratch)) = (opts.drill, &dest) {
        steps.push((
            "drill".to_owned(),
            vec![
                "check that every blob the metadata references is in the scratch folder".into(),
                format!("remove {}", scratch.display()),
            ],
        ));
    }
    Ok(steps)
}
