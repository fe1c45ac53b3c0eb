//! A local folder as a store. Every final file is written as a hidden temporary in the same
//! folder, fsynced, renamed, and the folder fsynced; archives and state are mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{ObjectWriter, Store, direct};
use crate::error::{Error, Result, io};

pub struct LocalStore {
    root: PathBuf,
    /// Folders known to exist (created or found by this store), so that each of many
    /// objects written into one folder does not look for it again; one removed since is
    /// created again (`create_temp`).
    folders: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore {
            root,
            folders: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// A temporary name next to the final name of `rel`, whose folder exists, created by
    /// `make`: the file and both names.
    fn create_temp<T>(
        &self,
        rel: &str,
        make: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<(T, PathBuf, PathBuf)> {
        let final_path = self.path(rel);
        let folder = final_path.parent().unwrap_or(&self.root).to_path_buf();
        let known = self.folders.lock().is_ok_and(|f| f.contains(&folder));
        if !known {
            self.ensure_parent(&final_path)?;
        }
        let temp = temp_name(&final_path);
        let made = match make(&temp) {
            // Removed since it was seen: made again.
            Err(e) if known && e.kind() == io::ErrorKind::NotFound => {
                self.ensure_parent(&final_path)?;
                make(&temp)
            }
            made => made,
        }
        .map_err(|e| io(e, format!("creating {}", temp.display())))?;
        if let Ok(mut f) = self.folders.lock() {
            f.insert(folder);
        }
        Ok((made, temp, final_path))
    }

    /// Creates the folders above `p` that are missing, each made durable in its parent
    /// (fsync of the parent folder), so that a file published in them survives a crash.
    fn ensure_parent(&self, p: &Path) -> Result<()> {
        let parent = p.parent().unwrap_or(&self.root);
        create_dirs_durably(parent).map_err(|e| io(e, format!("creating {}", parent.display())))
    }
}

impl LocalStore {
    /// Holds an exclusive `flock` on `.<name>.mutex` beside `rel` while the returned file
    /// lives: `put_new`, `swap` and `delete_if` of the same object take turns, between
    /// processes and machines (NFS locks). The kernel releases it when a process dies, so it
    /// never goes stale. `None` where the filesystem has no locks: those three then rely on
    /// their own atomic steps alone.
    fn exclusive(&self, rel: &str) -> Result<Option<File>> {
        let p = self.path(rel);
        self.ensure_parent(&p)?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mutex = p.with_file_name(format!(".{name}.mutex"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&mutex)
            .map_err(|e| io(e, format!("opening {}", mutex.display())))?;
        Ok(file.lock().ok().map(|()| file))
    }

    /// Writes `bytes` under `rel` only if nothing is there: written completely under a
    /// temporary name, then hard-linked to the final name; the link fails if the name
    /// exists, so exactly one of several writers wins, and a reader never sees a
    /// half-written object.
    fn create_new(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        let final_path = self.path(rel);
        self.ensure_parent(&final_path)?;
        let temp = temp_name(&final_path);
        let what = format!("creating {}", final_path.display());
        let mut file = new_private_file(&temp).map_err(|e| io(e, &what))?;
        let result = file
            .write_all(bytes)
            .and_then(|_| file.sync_all())
            .and_then(|_| fs::hard_link(&temp, &final_path));
        let _ = fs::remove_file(&temp);
        match result {
            Ok(()) => {
                sync_dir(final_path.parent().unwrap_or(&self.root)).map_err(|e| io(e, &what))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(e, &what)),
        }
    }

    /// Moves the small file `rel` out of the way if it holds exactly `old`: compared first,
    /// then renamed to a name of our own (of several callers, only one can rename it), then
    /// compared again on what was moved; a file that holds something else goes back.
    fn take_if(&self, rel: &str, old: &[u8]) -> Result<bool> {
        let p = self.path(rel);
        let what = format!("taking {}", p.display());
        match fs::read(&p) {
            Ok(held) if held == old => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e, &what)),
        }
        let moved = temp_name(&p);
        match fs::rename(&p, &moved) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e, &what)),
        }
        let held = fs::read(&moved).map_err(|e| io(e, &what));
        if held.as_ref().is_ok_and(|h| h == old) {
            fs::remove_file(&moved).map_err(|e| io(e, &what))?;
            sync_dir(p.parent().unwrap_or(&self.root)).map_err(|e| io(e, &what))?;
            return Ok(true);
        }
        // Changed between the two reads: put it back (unless a new one took the name).
        let back = fs::hard_link(&moved, &p);
        let _ = fs::remove_file(&moved);
        match back {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e, &what)),
        }
        held.map(|_| false)
    }
}

/// The temporary name of `final_path` while it is written.
fn temp_name(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(
        ".{name}.partial-{}-{}",
        std::process::id(),
        crate::clock::random_hex(4)
    ))
}

/// Whether a file name is the `flock` mutex of a small object (never listed).
fn is_mutex_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".mutex")
}

/// Whether a file name is one of our temporaries (left behind by a killed run).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".partial-")
}

fn new_private_file(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

/// `create_dir_all`, with an fsync of the parent of each folder it creates.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // Created meanwhile by another writer, which may not have made it durable yet: the
        // fsync below does, whoever created it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("/"),
    };
    sync_dir(parent)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes the whole filesystem that holds `dir` (data, sizes and folders: `syncfs(2)`,
/// which reports write-back errors since Linux 5.8).
fn syncfs(dir: &Path) -> io::Result<()> {
    rustix::fs::syncfs(File::open(dir)?).map_err(io::Error::from)
}

/// fsync the file, rename it to its final name, fsync the folder; or only rename, for an
/// object of [`Store::create_many`] (made durable by `sync_many`).
fn publish(file: &File, temp: &Path, final_path: &Path, sync: bool) -> io::Result<()> {
    if sync {
        file.sync_all()?;
    }
    fs::rename(temp, final_path)?;
    if sync {
        sync_dir(final_path.parent().unwrap_or(Path::new("/")))?;
    }
    Ok(())
}

/// Small files (state, manifests) go through the cache; streamed artifacts use direct I/O.
enum Sink {
    Buffered(io::BufWriter<File>),
    Direct(direct::DirectWriter),
}

struct LocalWriter {
    file: Option<Sink>,
    temp: PathBuf,
    final_path: PathBuf,
    /// fsync at commit (`false`: one of many, see `Store::create_many`).
    sync: bool,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(Sink::Buffered(f)) => f.write(buf),
            Some(Sink::Direct(f)) => f.write(buf),
            None => Err(io::Error::other("object already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(Sink::Buffered(f)) => f.flush(),
            Some(Sink::Direct(_)) | None => Ok(()),
        }
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let Some(sink) = self.file.take() else {
            return Ok(());
        };
        let what = format!("writing {}", self.final_path.display());
        let published = match sink {
            Sink::Buffered(b) => b.into_inner().map_err(|e| e.into_error()),
            Sink::Direct(d) => d.finish(),
        }
        .and_then(|file| publish(&file, &self.temp, &self.final_path, self.sync));
        if published.is_err() {
            // Nothing half-done stays behind under any name.
            let _ = fs::remove_file(&self.temp);
        }
        published.map_err(|e| io(e, &what))
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, rel: &str) -> Result<Box<dyn ObjectWriter>> {
        let (file, temp, final_path) = self.create_temp(rel, direct::create)?;
        Ok(Box::new(LocalWriter {
            file: Some(Sink::Direct(file)),
            temp,
            final_path,
            sync: true,
        }))
    }

    fn create_many(&self, rel: &str, size: u64) -> Result<Box<dyn ObjectWriter>> {
        // Large objects as `create` (direct I/O, their own fsync: its cost is small next to
        // theirs); small ones through the page cache, flushed together by `sync_many`.
        if size >= direct::SMALL {
            return self.create(rel);
        }
        let (file, temp, final_path) = self.create_temp(rel, new_private_file)?;
        Ok(Box::new(LocalWriter {
            file: Some(Sink::Buffered(io::BufWriter::with_capacity(1 << 16, file))),
            temp,
            final_path,
            sync: false,
        }))
    }

    fn sync_many(&self, prefix: &str) -> Result<()> {
        let dir = self.path(prefix);
        if !dir.exists() {
            return Ok(());
        }
        syncfs(&dir).map_err(|e| io(e, format!("flushing {}", dir.display())))
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let (file, temp, final_path) = self.create_temp(rel, new_private_file)?;
        let mut w = Box::new(LocalWriter {
            file: Some(Sink::Buffered(io::BufWriter::new(file))),
            temp,
            final_path,
            sync: true,
        });
        w.write_all(bytes)
            .map_err(|e| io(e, format!("writing {}", self.path(rel).display())))?;
        w.commit()
    }

    fn put_new(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        let _turn = self.exclusive(rel)?;
        self.create_new(rel, bytes)
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(rel);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e, format!("reading {}", p.display()))),
        }
    }

    fn open(&self, rel: &str) -> Result<Box<dyn Read + Send + Sync>> {
        let p = self.path(rel);
        direct::open(&p).map_err(|e| io(e, format!("opening {}", p.display())))
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        let p = self.path(rel);
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e, format!("reading {}", p.display()))),
        }
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let p = self.path(prefix);
        let rd = match fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e, format!("listing {}", p.display()))),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| io(e, format!("listing {}", p.display())))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        self.walk_sized(prefix, &mut |p, s| {
            out.push((p.to_owned(), s));
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    fn walk_sized(&self, prefix: &str, f: &mut dyn FnMut(&str, u64) -> Result<()>) -> Result<()> {
        let mut stack = vec![prefix.trim_end_matches('/').to_owned()];
        while let Some(rel) = stack.pop() {
            let p = self.path(&rel);
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e, format!("listing {}", p.display()))),
            };
            for e in rd {
                let e = e.map_err(|e| io(e, format!("listing {}", p.display())))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let meta = e
                    .metadata()
                    .map_err(|e| io(e, format!("listing {}", p.display())))?;
                if meta.is_dir() {
                    stack.push(child);
                } else if !is_mutex_name(&e.file_name().to_string_lossy()) {
                    f(&child, meta.len())?;
                }
            }
        }
        Ok(())
    }

    fn swap(&self, rel: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let _turn = self.exclusive(rel)?;
        Ok(self.take_if(rel, old)? && self.create_new(rel, new)?)
    }

    fn delete_if(&self, rel: &str, old: &[u8]) -> Result<bool> {
        let _turn = self.exclusive(rel)?;
        self.take_if(rel, old)
    }

    fn delete(&self, rel: &str) -> Result<()> {
        let p = self.path(rel);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e, format!("deleting {}", p.display()))),
        }
    }

    fn delete_all(&self, prefix: &str) -> Result<()> {
        if prefix.is_empty() {
            return Err(Error::internal("refusing to delete a whole store"));
        }
        let p = self.path(prefix);
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e, format!("deleting {}", p.display()))),
        }
    }

    /// Files read by the calling thread itself (an NFS mount's reads are ordered by no
    /// scheduler here, which is harmless).
    fn on_local_disk(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn store(tag: &str) -> (LocalStore, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("dtr-backup-local-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (LocalStore::new(dir.clone()), dir)
    }

    #[test]
    fn nothing_visible_before_commit_and_nothing_left_after_drop() {
        let (s, dir) = store("commit");
        let mut w = s.create("run/a.tar").unwrap();
        w.write_all(b"abc").unwrap();
        assert_eq!(s.size("run/a.tar").unwrap(), None);
        drop(w);
        assert!(s.list("").unwrap().is_empty(), "temporary removed on drop");
        let mut w = s.create("run/a.tar").unwrap();
        w.write_all(b"abc").unwrap();
        w.commit().unwrap();
        assert_eq!(s.size("run/a.tar").unwrap(), Some(3));
        let mode = fs::metadata(dir.join("run/a.tar"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_folder_removed_after_it_was_used_is_made_again() {
        let (s, dir) = store("folders");
        for name in ["x", "y"] {
            let mut w = s.create_many(&format!("blobs/ab/{name}"), 3).unwrap();
            w.write_all(b"abc").unwrap();
            w.commit().unwrap();
            assert_eq!(s.size(&format!("blobs/ab/{name}")).unwrap(), Some(3));
            // Removed behind the store's back (another run's retention, an operator).
            fs::remove_dir_all(dir.join("blobs")).unwrap();
        }
        s.put("blobs/ab/z", b"z").unwrap();
        assert_eq!(s.get("blobs/ab/z").unwrap().as_deref(), Some(&b"z"[..]));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn swap_and_delete_if_act_only_on_what_was_read_and_leave_nothing_behind() {
        let (s, dir) = store("swap");
        s.put("lock.json", b"stale").unwrap();
        assert!(s.swap("lock.json", b"stale", b"mine").unwrap());
        // A taker that read the stale lock before: it must not touch the new one.
        assert!(!s.swap("lock.json", b"stale", b"theirs").unwrap());
        assert!(!s.delete_if("lock.json", b"stale").unwrap());
        assert_eq!(s.get("lock.json").unwrap().as_deref(), Some(&b"mine"[..]));
        assert!(!s.put_new("lock.json", b"theirs").unwrap());
        assert!(s.delete_if("lock.json", b"mine").unwrap());
        assert_eq!(s.get("lock.json").unwrap(), None);
        assert!(!s.swap("lock.json", b"mine", b"x").unwrap(), "gone");
        // No temporary left; the mutex is never listed.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [".lock.json.mutex"]);
        assert!(s.list("").unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_commit_that_fails_leaves_no_temporary() {
        let (s, dir) = store("commitfail");
        // A folder where the file should go: the final rename fails.
        fs::create_dir_all(dir.join("run/a.tar/inside")).unwrap();
        let mut w = s.create("run/a.tar").unwrap();
        w.write_all(&vec![1u8; 3 << 20]).unwrap();
        assert!(w.commit().is_err());
        let mut names: Vec<String> = fs::read_dir(dir.join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.tar"], "the temporary was left");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn put_new_lets_exactly_one_writer_win() {
        let (s, dir) = store("putnew");
        let s = std::sync::Arc::new(s);
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.put_new("lock.json", format!("{i}").as_bytes()).unwrap()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(s.list("").unwrap(), vec!["lock.json".to_owned()]);
        fs::remove_dir_all(dir).unwrap();
    }
}
