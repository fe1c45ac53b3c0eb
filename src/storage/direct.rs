//! Direct I/O (`O_DIRECT`) for artifacts in local folders.
//!
//! An artifact is written once and read once (by verification); passing it through the page
//! cache costs the registry node memory (a nightly backup of hundreds of GB would push the
//! registry's own hot data out of the cache) and CPU (on virtual machines, filling and writing
//! back the cache costs more than the disk: measured on the benchmark machine, 2 GiB took 4.6 s
//! of CPU through the cache and fsync, 0.2 s with direct I/O). So archives are written and
//! read back with `O_DIRECT`, which also makes verification read what the device holds rather
//! than what is still in memory.
//!
//! Direct I/O needs the buffer address, the length and the file offset aligned to the
//! device's block size ([`ALIGN`] covers 512 and 4096). Whole aligned blocks go out directly;
//! the tail of a file (not a whole block) is written through a second, ordinary handle. Where
//! the filesystem refuses `O_DIRECT` (tmpfs, some FUSE and network filesystems), the file is
//! read and written through the page cache instead, with the same results.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Alignment of buffers, lengths and offsets.
pub const ALIGN: usize = 4096;
/// Files smaller than this are read through the page cache.
pub const SMALL: u64 = 4 << 20;
/// Bytes per direct write or read.
const BLOCK: usize = 1 << 20;

/// `O_DIRECT` (Linux); elsewhere no flag, so files go through the cache.
#[cfg(target_os = "linux")]
const O_DIRECT: i32 = libc::O_DIRECT;
#[cfg(not(target_os = "linux"))]
const O_DIRECT: i32 = 0;

/// A heap buffer whose usable part starts at an [`ALIGN`]ed address.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        // The allocation never moves: `raw` is not resized.
        let start = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        Aligned { raw, start }
    }
    fn get(&self, len: usize) -> &[u8] {
        &self.raw[self.start..self.start + len]
    }
    fn get_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Creates `path` (mode 0600, truncated) for direct writes, or for ordinary writes where the
/// filesystem refuses direct I/O. Blocks are written behind, on a thread of their own, so that
/// the caller computes while the device works.
pub fn create(path: &Path) -> io::Result<DirectWriter> {
    let open = |flags: i32| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    let (file, direct) = match open(O_DIRECT) {
        Ok(f) => (f, O_DIRECT != 0),
        Err(e) if refused(&e) => (open(0)?, false),
        Err(e) => return Err(e),
    };
    let mut target = Target {
        file,
        direct,
        path: path.to_owned(),
    };
    let (to_io, blocks) = sync_channel::<(Aligned, usize, u64)>(1);
    let (give_back, from_io) = sync_channel::<Aligned>(WRITE_BUFFERS);
    let io = std::thread::Builder::new()
        .name("write-behind".into())
        .spawn(move || -> io::Result<Target> {
            while let Ok((buf, len, offset)) = blocks.recv() {
                target.write_at(buf.get(len), offset)?;
                let _ = give_back.send(buf);
            }
            Ok(target)
        })?;
    Ok(DirectWriter {
        buf: Some(Aligned::new(BLOCK)),
        spare: (1..WRITE_BUFFERS).map(|_| Aligned::new(BLOCK)).collect(),
        filled: 0,
        offset: 0,
        to_io: Some(to_io),
        from_io,
        io: Some(io),
        failed: None,
    })
}

/// Buffers of a writer: one being filled, the others being written.
const WRITE_BUFFERS: usize = 2;

/// The file being written, on the write-behind thread.
struct Target {
    file: File,
    direct: bool,
    path: PathBuf,
}

impl Target {
    /// Writes `bytes` (a multiple of [`ALIGN`] long when direct) at `offset`.
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        match self.file.write_all_at(bytes, offset) {
            // Accepted at open, refused at write (some filesystems): go through the cache.
            Err(e) if self.direct && refused(&e) => {
                self.file = OpenOptions::new().write(true).open(&self.path)?;
                self.direct = false;
                self.file.write_all_at(bytes, offset)
            }
            other => other,
        }
    }
}

/// Writes whole blocks with direct I/O, behind the caller; the tail at
/// [`DirectWriter::finish`].
pub struct DirectWriter {
    buf: Option<Aligned>,
    spare: Vec<Aligned>,
    filled: usize,
    /// Where the block being filled goes.
    offset: u64,
    to_io: Option<SyncSender<(Aligned, usize, u64)>>,
    from_io: Receiver<Aligned>,
    io: Option<std::thread::JoinHandle<io::Result<Target>>>,
    /// The first error: every later call returns it again (the file is incomplete).
    failed: Option<Sticky>,
}

/// An I/O error kept to be returned again (`io::Error` is not `Clone`).
struct Sticky(io::ErrorKind, String);

impl Sticky {
    fn keep(e: io::Error) -> (Sticky, io::Error) {
        (Sticky(e.kind(), e.to_string()), e)
    }
    fn again(&self) -> io::Error {
        io::Error::new(self.0, self.1.clone())
    }
}

impl DirectWriter {
    /// Records the first error and returns it.
    fn fail(&mut self, e: io::Error) -> io::Error {
        let (kept, e) = Sticky::keep(e);
        self.failed.get_or_insert(kept);
        e
    }

    /// The first error, if any.
    fn check(&self) -> io::Result<()> {
        self.failed.as_ref().map_or(Ok(()), |f| Err(f.again()))
    }

    /// Hands the first `len` bytes of the current buffer to the write-behind thread.
    fn send(&mut self, len: usize) -> io::Result<()> {
        self.check()?;
        let Some(buf) = self.buf.take() else {
            return Err(self.fail(io::Error::other(
                "no buffer to write (an earlier write failed)",
            )));
        };
        let sent = self
            .to_io
            .as_ref()
            .is_some_and(|tx| tx.send((buf, len, self.offset)).is_ok());
        if !sent {
            let e = self.stopped();
            return Err(self.fail(e));
        }
        self.offset += len as u64;
        Ok(())
    }

    /// The write-behind thread's error, once it has stopped.
    fn stopped(&mut self) -> io::Error {
        self.to_io = None;
        match self.io.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the write-behind thread stopped"),
        }
    }

    /// Writes what is buffered and makes the file durable (data and size).
    pub fn finish(mut self) -> io::Result<File> {
        self.check()?;
        let whole = self.filled / ALIGN * ALIGN;
        let tail = match &self.buf {
            Some(b) if self.filled > 0 => b.get(self.filled)[whole..].to_vec(),
            _ => Vec::new(),
        };
        if whole > 0 {
            self.send(whole)?;
        }
        self.to_io = None;
        let target = match self.io.take().map(|h| h.join()) {
            Some(Ok(result)) => result?,
            _ => return Err(io::Error::other("the write-behind thread stopped")),
        };
        let file = if target.direct {
            // The tail is shorter than a block: an ordinary handle writes it.
            OpenOptions::new().write(true).open(&target.path)?
        } else {
            target.file
        };
        if !tail.is_empty() {
            file.write_all_at(&tail, self.offset)?;
        }
        file.sync_all()?;
        Ok(file)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        let buf = match &mut self.buf {
            Some(b) => b,
            None => {
                let next = match self.spare.pop() {
                    Some(b) => b,
                    None => match self.from_io.recv() {
                        Ok(b) => b,
                        Err(_) => {
                            let e = self.stopped();
                            return Err(self.fail(e));
                        }
                    },
                };
                self.buf.insert(next)
            }
        };
        let n = (BLOCK - self.filled).min(data.len());
        buf.get_mut(BLOCK)[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == BLOCK {
            self.send(BLOCK)?;
            self.filled = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DirectWriter {
    /// Abandoned (an error upstream): stop the thread before the caller removes the file.
    fn drop(&mut self) {
        self.to_io = None;
        if let Some(h) = self.io.take() {
            let _ = h.join();
        }
    }
}

/// Opens `path` for reading with direct I/O, blocks read ahead on a thread of their own (so
/// that the device works while the caller computes); or, where the filesystem refuses direct
/// I/O, an ordinary buffered reader.
pub fn open(path: &Path) -> io::Result<Box<dyn Read + Send + Sync>> {
    // Small files (blobs of manifests and configs, kept one per object) are not worth a
    // thread and the aligned buffers.
    let plain = File::open(path)?;
    if plain.metadata()?.len() < SMALL {
        return Ok(Box::new(io::BufReader::new(plain)));
    }
    drop(plain);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(path)
    {
        Ok(f) if O_DIRECT != 0 => f,
        Ok(_) => {
            return Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                File::open(path)?,
            )));
        }
        Err(e) if refused(&e) => {
            return Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                File::open(path)?,
            )));
        }
        Err(e) => return Err(e),
    };
    // Several reads in flight: on the benchmark machine's virtual disk, one 1 MiB read at a
    // time gave 1.2 GB/s and four at a time 1.6 GB/s (`dd iflag=direct`).
    let mut lanes = Vec::with_capacity(LANES);
    for lane in 0..LANES {
        let (full_tx, full_rx) = sync_channel::<io::Result<(Aligned, usize)>>(PER_LANE);
        let (empty_tx, empty_rx) = sync_channel::<Aligned>(PER_LANE);
        for _ in 0..PER_LANE {
            empty_tx
                .send(Aligned::new(BLOCK))
                .map_err(|_| io::Error::other("read-ahead"))?;
        }
        let (file, path) = (file.try_clone()?, path.to_owned());
        std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || read_ahead(file, &path, lane, &full_tx, &empty_rx))?;
        lanes.push(Lane {
            full: std::sync::Mutex::new(full_rx),
            empty: empty_tx,
        });
    }
    Ok(Box::new(DirectReader {
        lanes,
        next: 0,
        cur: None,
        pos: 0,
        len: 0,
        end: false,
        failed: None,
    }))
}

/// Threads reading ahead; block `i` of the file is read by lane `i % LANES`.
const LANES: usize = 4;
/// Blocks read ahead per lane at most.
const PER_LANE: usize = 2;

/// Reads the blocks of one lane until the end of the file, an error, or the reader goes
/// away.
fn read_ahead(
    mut file: File,
    path: &Path,
    lane: usize,
    full: &SyncSender<io::Result<(Aligned, usize)>>,
    empty: &Receiver<Aligned>,
) {
    let mut direct = true;
    let mut block = lane as u64;
    while let Ok(mut buf) = empty.recv() {
        let offset = block * BLOCK as u64;
        let mut n = 0;
        // Fill the block (reads may return less); a short block means the end of the file.
        let result = loop {
            if n == BLOCK {
                break Ok(());
            }
            match file.read_at(&mut buf.get_mut(BLOCK)[n..], offset + n as u64) {
                Ok(0) => break Ok(()),
                Ok(k) if direct && k % ALIGN != 0 => {
                    n += k;
                    break Ok(());
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if direct && refused(&e) => {
                    // Accepted at open, refused at read: go through the cache.
                    match File::open(path) {
                        Ok(f) => (file, direct) = (f, false),
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        block += LANES as u64;
        let end = n < BLOCK;
        let failed = result.is_err();
        if full.send(result.map(|()| (buf, n))).is_err() || end || failed {
            return;
        }
    }
}

/// One read-ahead thread's blocks, full and empty.
struct Lane {
    full: std::sync::Mutex<Receiver<io::Result<(Aligned, usize)>>>,
    empty: SyncSender<Aligned>,
}

struct DirectReader {
    lanes: Vec<Lane>,
    /// The lane of the next block.
    next: usize,
    /// The block being consumed, from lane `next - 1`.
    cur: Option<Aligned>,
    pos: usize,
    len: usize,
    end: bool,
    /// A lane's error: returned by every later read, never the blocks after it (a hole).
    failed: Option<Sticky>,
}

impl Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failed {
            return Err(f.again());
        }
        if self.pos == self.len {
            let lanes = self.lanes.len();
            if let Some(done) = self.cur.take() {
                let _ = self.lanes[(self.next + lanes - 1) % lanes].empty.send(done);
            }
            if self.end {
                return Ok(0);
            }
            let next = self.lanes[self.next]
                .full
                .get_mut()
                .map_err(|_| io::Error::other("read-ahead"))?
                .recv();
            self.next = (self.next + 1) % lanes;
            match next {
                // The lane's thread ended: the end of the file was reached.
                Err(_) => {
                    self.end = true;
                    return Ok(0);
                }
                Ok(Err(e)) => {
                    let (kept, e) = Sticky::keep(e);
                    self.failed = Some(kept);
                    return Err(e);
                }
                Ok(Ok((buf, n))) => {
                    // A short block is the last one.
                    self.end = n < BLOCK;
                    self.cur = Some(buf);
                    (self.pos, self.len) = (0, n);
                    if n == 0 {
                        return Ok(0);
                    }
                }
            }
        }
        let Some(buf) = &self.cur else {
            return Ok(0);
        };
        let n = (self.len - self.pos).min(out.len());
        out[..n].copy_from_slice(&buf.get(self.len)[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn round_trip(dir: &Path) {
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            BLOCK - 1,
            BLOCK,
            BLOCK + 4097,
            3 * BLOCK + 10,
            // Read back directly from here on (smaller files go through the cache).
            SMALL as usize,
            SMALL as usize + ALIGN + 7,
            6 * BLOCK + 1,
            // Every lane ending the file, with a short block or an empty one.
            8 * BLOCK,
            9 * BLOCK + 5,
            10 * BLOCK + ALIGN,
            11 * BLOCK - 1,
        ] {
            let path = dir.join(format!("direct-{len}"));
            let data = pattern(len);
            let mut w = create(&path).unwrap();
            for piece in data.chunks(1_000_003) {
                w.write_all(piece).unwrap();
            }
            w.finish().unwrap();
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                data,
                "{len} bytes, read normally"
            );
            let mut back = Vec::new();
            open(&path).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes, read directly");
        }
    }

    /// A write that fails (here: a device that is full) fails every later write and
    /// `finish` too, with the same error, and never panics.
    #[test]
    fn a_write_error_is_sticky() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            eprintln!("no /dev/full here");
            return;
        }
        let mut w = create(full).unwrap();
        let block = vec![7u8; BLOCK];
        let mut first = None;
        for _ in 0..8 {
            if let Err(e) = w.write_all(&block) {
                first = Some(e.to_string());
                break;
            }
        }
        let first = first.expect("writing to /dev/full fails");
        assert!(first.contains("No space left"), "{first}");
        assert_eq!(w.write(&block).unwrap_err().to_string(), first);
        assert_eq!(w.finish().unwrap_err().to_string(), first);
    }

    /// After a lane's error the reader returns that error again, never the blocks of the
    /// lanes after it.
    #[test]
    fn a_read_error_is_sticky() {
        let mut lanes = Vec::new();
        for lane in 0..3 {
            let (full_tx, full_rx) = sync_channel::<io::Result<(Aligned, usize)>>(1);
            let (empty_tx, _empty_rx) = sync_channel::<Aligned>(4);
            let block = if lane == 1 {
                Err(io::Error::other("bad sector"))
            } else {
                let mut b = Aligned::new(BLOCK);
                b.get_mut(BLOCK).fill(lane as u8 + 1);
                Ok((b, BLOCK))
            };
            full_tx.send(block).unwrap();
            std::mem::forget(full_tx);
            lanes.push(Lane {
                full: std::sync::Mutex::new(full_rx),
                empty: empty_tx,
            });
        }
        let mut r = DirectReader {
            lanes,
            next: 0,
            cur: None,
            pos: 0,
            len: 0,
            end: false,
            failed: None,
        };
        let mut buf = vec![0u8; BLOCK];
        assert_eq!(r.read(&mut buf).unwrap(), BLOCK);
        assert!(buf.iter().all(|&b| b == 1));
        for _ in 0..3 {
            assert_eq!(r.read(&mut buf).unwrap_err().to_string(), "bad sector");
        }
    }

    #[test]
    fn writes_and_reads_any_length_on_disk() {
        let dir = std::env::current_dir()
            .unwrap()
            .join("target")
            .join(format!("direct-io-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        round_trip(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// tmpfs: it refuses O_DIRECT before Linux 6.6 (the files then go through the cache) and
    /// takes it since; either way the same bytes come back.
    #[test]
    fn falls_back_where_direct_io_is_refused() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("no /dev/shm here; the fallback is covered where tmpfs exists");
            return;
        }
        let dir = shm.join(format!("dtr-backup-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        round_trip(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
