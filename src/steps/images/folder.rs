//! Image content in a folder on this machine: `images.type: path`, or `nfs` (the folder must
//! be the NFS mount of the plan's server, checked at preflight and again right before
//! reading, so that a dropped mount never produces a "successful" backup of an empty folder).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use std::io::Read;

use super::blobs::{self, BlobSource, Listed};
use super::{ImageSource, outcome, volume_name};
use crate::archive::tree;
use crate::error::{Error, Result, io};
use crate::manifest;
use crate::plan::ImagesMode;
use crate::snapshot::{self, Sha};
use crate::steps::stream::store_stream;
use crate::steps::{Ctx, Outcome, blocking};

pub struct Folder {
    pub path: PathBuf,
    /// `nfs`: the server the folder must be mounted from.
    pub nfs_server: Option<String>,
    pub allow_empty: bool,
    pub mode: ImagesMode,
}

impl Folder {
    fn check(&self) -> Result<()> {
        if let Some(server) = &self.nfs_server {
            crate::storage::nfs::check_mounted(&self.path, server)?;
        }
        check_registry_tree(&self.path, self.allow_empty)
    }
}

impl ImageSource for Folder {
    fn input(&self, _volume: &str) -> String {
        match &self.nfs_server {
            Some(server) => format!("nfs {} ({server})", self.path.display()),
            None => format!("path {}", self.path.display()),
        }
    }

    fn describe(&self, _volume: &str) -> String {
        self.path.display().to_string()
    }

    fn preflight_inputs(&self) -> Vec<String> {
        vec![match &self.nfs_server {
            Some(server) => format!("nfs mount {} from {server}", self.path.display()),
            None => format!("images path {}", self.path.display()),
        }]
    }

    fn describe_preflight(&self) -> Vec<String> {
        vec![format!(
            "check that {} holds docker/registry/v2",
            self.path.display()
        )]
    }

    fn preflight(&self) -> Result<()> {
        self.check()
    }

    fn back_up(&self, ctx: Ctx) -> BoxFuture<'static, Result<Outcome>> {
        let root = self.path.clone();
        let nfs = self.nfs_server.clone();
        let incremental = self.mode == ImagesMode::Incremental;
        Box::pin(async move {
            if let Some(server) = &nfs {
                // Checked again right before reading: the mount may have dropped since.
                crate::storage::nfs::check_mounted(&root, server)?;
            }
            let plan = ctx.plan.clone();
            let volume = volume_name(&ctx)?;
            let name = manifest::images_artifact(&plan, &volume);
            let path = ctx.backup_path(&name);

            // Incremental: the blobs go to the blob store, each repository's own content
            // (`_layers`, `_manifests`, `_uploads`) is a tree there, the rest is the archive.
            let scan_root = root.clone();
            let (tree, repos) = blocking(move || {
                let mut repos: Vec<PathBuf> = Vec::new();
                let tree = tree::scan_where(&scan_root, &mut |rel, kind| {
                    if !incremental {
                        return false;
                    }
                    if kind == tree::Kind::Dir && rel == Path::new(BLOBS) {
                        return true;
                    }
                    match super::trees::starts_a_tree(rel) {
                        Some(repo) => {
                            repos.push(repo);
                            true
                        }
                        None => false,
                    }
                })
                .map_err(|e| io(e, format!("reading {}", scan_root.display())))?;
                repos.sort_unstable();
                repos.dedup();
                // Each repository's own folder is the first member of its tree.
                let mut tree = tree;
                tree.entries
                    .retain(|e| e.kind != tree::Kind::Dir || repos.binary_search(&e.rel).is_err());
                Ok((tree, repos))
            })
            .await?;
            let progress = ctx.progress(Some(tree.total));
            let counter = progress.bytes.clone();
            let prefix = format!("{volume}/_data");
            let (stores, encryption, cancel) = (
                ctx.stores.clone(),
                Arc::new(ctx.secrets.encryption.clone()),
                ctx.cancel.clone(),
            );
            let object_path = path.clone();
            let written = blocking(move || {
                let tar_cancel = cancel.clone();
                store_stream(
                    move |pipe| tree::write_tar(&tree, &prefix, pipe, &tar_cancel).map(drop),
                    stores.backups.as_ref(),
                    &object_path,
                    &encryption,
                    &cancel,
                    counter,
                )
            })
            .await?;
            drop(progress);
            let mut done = outcome(&ctx, name, path, written, &volume);
            if incremental {
                let list_path = ctx.backup_path(snapshot::TREES_FILE);
                let (stores, enc, cancel, lp, tree_root) = (
                    ctx.stores.clone(),
                    ctx.secrets.encryption.clone(),
                    ctx.cancel.clone(),
                    list_path.clone(),
                    root.clone(),
                );
                let prefix = format!("{volume}/_data");
                let read_all = ctx.read_all;
                let (kept, note) = blocking(move || {
                    // What the last run saw of each repository: those listed the same are
                    // not read again (unless `--read-all`).
                    let (known, note) = if read_all {
                        (Vec::new(), None)
                    } else {
                        super::known::load(stores.state.as_ref())
                    };
                    let mut kept = super::trees::keep(
                        &tree_root,
                        &repos,
                        &prefix,
                        stores.backups.as_ref(),
                        &enc,
                        &lp,
                        &known,
                        std::thread::available_parallelism().map_or(2, |n| n.get()),
                        &cancel,
                    )?;
                    drop(known);
                    // Only a shortcut for the next run: a record that cannot be written is
                    // said, and the backup goes on (the next run reads every repository).
                    let saved = super::known::save(
                        stores.state.as_ref(),
                        std::mem::take(&mut kept.records),
                    )
                    .err()
                    .map(|e| format!("{e}: the next run reads every repository"));
                    Ok((kept, note.into_iter().chain(saved).collect::<Vec<_>>()))
                })
                .await?;
                for note in note {
                    ctx.warn(note);
                }
                ctx.reporter.emit(&crate::events::Event::Log {
                    step: ctx.step_id.clone(),
                    message: format!(
                        "repositories: {} stored, {} unchanged, {} read again (changed while read), {} not read (listed as the last run saw them)",
                        kept.copied, kept.reused, kept.reread, kept.trusted
                    ),
                });
                done.artifacts.push(crate::manifest::Artifact {
                    kind: crate::manifest::ArtifactKind::Trees,
                    path: snapshot::TREES_FILE.to_owned(),
                    size: kept.list.size,
                    sha256: kept.list.sha256,
                    encrypted: false,
                });
                done.files
                    .push(crate::steps::FileRef::new(list_path, kept.list.size));
                // After the archive: every blob its links name was there before the listing.
                blobs::back_up_blobs(
                    &ctx,
                    FolderBlobs {
                        root,
                        dir: std::sync::OnceLock::new(),
                    },
                    &mut done,
                )
                .await?;
            }
            Ok(done)
        })
    }
}

/// Where a registry tree keeps its blobs.
const BLOBS: &str = "docker/registry/v2/blobs";

/// The blobs of a registry tree on this machine.
struct FolderBlobs {
    root: PathBuf,
    /// `docker/registry/v2/blobs/sha256`, once listed: blobs are opened relative to it.
    dir: std::sync::OnceLock<std::os::fd::OwnedFd>,
}

impl BlobSource for FolderBlobs {
    fn list(&self, cancel: &crate::cancel::Cancel) -> Result<(Vec<Listed>, Vec<String>)> {
        let (listed, odd, dir) = list_blobs(&self.root, cancel)?;
        if let Some(dir) = dir {
            let _ = self.dir.set(dir);
        }
        Ok((listed, odd))
    }

    fn open(&self, digest: &Sha) -> std::io::Result<Option<Box<dyn Read + Send + '_>>> {
        let opened = match self.dir.get() {
            Some(dir) => {
                let hex = snapshot::sha_hex(digest);
                rustix::fs::openat(
                    dir,
                    format!("{}/{hex}/data", &hex[..2]),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map(std::fs::File::from)
                .map_err(std::io::Error::from)
            }
            None => std::fs::File::open(self.root.join(snapshot::registry_key(digest))),
        };
        match opened {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn describe(&self, digest: &Sha) -> String {
        self.root
            .join(snapshot::registry_key(digest))
            .display()
            .to_string()
    }
}

/// The blobs under `root` (`docker/registry/v2/blobs/sha256/<ab>/<digest>/data`), sorted by
/// digest, with their sizes; what else lies there (not registry content: reported); and
/// the folder `sha256` itself, open, when there is one. Each folder is read relative to its
/// parent, so the long path of a blob is not walked for each.
#[allow(clippy::type_complexity)]
fn list_blobs(
    root: &Path,
    cancel: &crate::cancel::Cancel,
) -> Result<(Vec<Listed>, Vec<String>, Option<std::os::fd::OwnedFd>)> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dir = root.join(BLOBS).join("sha256");
    let what = |p: &Path, e: rustix::io::Errno| io(e.into(), format!("listing {}", p.display()));
    let open = |at: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr, p: &Path| {
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| what(p, e))
    };
    // The names in a folder, sorted, with their types.
    let sorted =
        |fd: &std::os::fd::OwnedFd, p: &Path| -> Result<Vec<(std::ffi::CString, FileType)>> {
            let mut names = Vec::new();
            for e in rustix::fs::Dir::read_from(fd).map_err(|e| what(p, e))? {
                let e = e.map_err(|e| what(p, e))?;
                let name = e.file_name();
                if name != c"." && name != c".." {
                    names.push((name.to_owned(), e.file_type()));
                }
            }
            names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(names)
        };
    let mut listed = Vec::new();
    let mut odd = Vec::new();
    if !dir.is_dir() {
        return Ok((listed, odd, None));
    }
    let top = rustix::fs::openat(
        rustix::fs::CWD,
        &dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| what(&dir, e))?;
    for (ab, t) in sorted(&top, &dir)? {
        let ab_str = ab.to_string_lossy().into_owned();
        let sub = dir.join(&ab_str);
        // A filesystem that does not give types in its listings: asked.
        let t = match t {
            FileType::Unknown => rustix::fs::statat(&top, &ab, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .map_err(|e| what(&sub, e))?,
            t => t,
        };
        if t != FileType::Directory || ab_str.len() != 2 {
            odd.push(sub.display().to_string());
            continue;
        }
        cancel.check().map_err(|e| io(e, "listing blobs"))?;
        let ab_fd = open(std::os::fd::AsFd::as_fd(&top), &ab, &sub)?;
        for (name, _) in sorted(&ab_fd, &sub)? {
            let name = name.to_string_lossy().into_owned();
            let digest = snapshot::parse_sha(&name).filter(|_| name.starts_with(&ab_str));
            let data =
                rustix::fs::statat(&ab_fd, format!("{name}/data"), AtFlags::SYMLINK_NOFOLLOW);
            match (digest, data) {
                (Some(digest), Ok(st))
                    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile =>
                {
                    listed.push(Listed {
                        digest,
                        size: u64::try_from(st.st_size).unwrap_or(0),
                    })
                }
                // Removed since the folder was read (garbage collection): not there.
                (Some(_), Err(rustix::io::Errno::NOENT)) => {}
                _ => odd.push(sub.join(&name).display().to_string()),
            }
        }
    }
    Ok((listed, odd, Some(top)))
}

/// A registry tree holds `docker/registry/v2`; an empty one is refused unless allowed, so that a
/// missing disk never produces a "successful" backup of nothing.
pub fn check_registry_tree(path: &Path, allow_empty: bool) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::source(format!(
            "the image content folder {} cannot be read: {e}; check `images.path`",
            path.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::source(format!(
            "{} is not a folder; `images.path` must be the folder that holds docker/registry/v2",
            path.display()
        )));
    }
    if !allow_empty && !path.join("docker/registry/v2").is_dir() {
        return Err(Error::source(format!(
            "{} holds no docker/registry/v2: is the storage mounted? Set `images.allow_empty: true` only if an empty registry is expected",
            path.display()
        )));
    }
    Ok(())
}
