//! Incremental image content in a Docker volume, through the Docker API (socket or client
//! bundle): a helper container lists the volume first (`find` and `stat` in `sh`: the
//! helper image needs them, as busybox and alpine have), so that only the blobs the blob
//! store lacks are ever streamed, each through the archive endpoint of a created (never
//! started) helper that mounts the volume read-only. The rest of the registry
//! (`docker/registry/v2/repositories`) is the backup's archive, streamed the same way.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use super::blobs::{BlobSource, Listed};
use crate::cancel::Cancel;
use crate::docker::{Engine, container};
use crate::error::{Error, Result};
use crate::snapshot::{self, Sha};

/// What the listing of a volume found.
pub struct Listing {
    pub blobs: Vec<Listed>,
    /// Whether `docker/registry/v2/repositories` is there.
    pub repositories: bool,
    /// Entries that are neither (left out of the backup, reported).
    pub other: Vec<String>,
}

/// The helper that lists `volume` (mounted read-only at `/storage`) with [`LIST`].
pub fn list_spec(
    image: &str,
    volume: &str,
    node: Option<String>,
    plan: &str,
    run: &str,
) -> container::Spec {
    container::Spec {
        image: image.to_owned(),
        cmd: vec![LIST.to_owned()],
        entrypoint: Some(vec!["sh".to_owned(), "-c".to_owned()]),
        env: Vec::new(),
        labels: HashMap::from([
            (container::LABEL_PLAN.to_owned(), plan.to_owned()),
            (container::LABEL_RUN.to_owned(), run.to_owned()),
            (container::LABEL_ROLE.to_owned(), "images-helper".to_owned()),
        ]),
        binds: vec![format!("{volume}:/storage:ro")],
        node,
        // Attached (and closed at once) for the output.
        stdin: true,
    }
}

/// The listing script: top-level entries, the entries of `docker/registry/v2`, every blob
/// with its size, and a last line that says it ran to its end (a helper that cannot list
/// the volume never makes it look empty).
pub const LIST: &str = "cd /storage || exit 3\n\
for e in * .[!.]* ..?*; do [ -e \"$e\" ] || [ -L \"$e\" ] || continue; echo \"top $e\"; done\n\
if [ -d docker/registry/v2 ]; then\n\
  cd docker/registry/v2 || exit 3\n\
  for e in * .[!.]* ..?*; do [ -e \"$e\" ] || [ -L \"$e\" ] || continue; echo \"v2 $e\"; done\n\
  if [ -d blobs/sha256 ]; then\n\
    find blobs/sha256 -type f -name data -exec stat -c 'blob %s %n' {} + || echo \"find failed $?\"\n\
  fi\n\
fi\n\
echo listed";

/// Lists the volume through a helper container (run with `sh -c`).
pub async fn list(engine: &Engine, spec: container::Spec, cancel: &Cancel) -> Result<Listing> {
    let id = container::create(engine, spec).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let ran = container::run_with_input(
        engine,
        &id,
        rx,
        Vec::new(),
        move |l| {
            if let Ok(mut v) = sink.lock() {
                v.push(l);
            }
        },
        || Ok(()),
        cancel.clone(),
    )
    .await;
    let _ = container::remove(engine, &id).await;
    ran.map_err(|e| e.context("listing the image-content volume through a helper container"))?;
    let lines = std::mem::take(&mut *lines.lock().map_err(|_| Error::internal("lines"))?);
    parse(&lines)
}

/// Reads the listing's lines.
fn parse(lines: &[String]) -> Result<Listing> {
    if lines.last().map(String::as_str) != Some("listed") {
        return Err(Error::container(format!(
            "the helper container could not list the volume: {}",
            lines
                .iter()
                .rev()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    if let Some(l) = lines.iter().find(|l| l.starts_with("find failed")) {
        return Err(Error::container(format!(
            "the helper container could not list the volume's blobs ({l}): does the helper image have `find` and `stat`? Set images.helper_image to one that does (busybox)"
        )));
    }
    let mut listing = Listing {
        blobs: Vec::new(),
        repositories: false,
        other: Vec::new(),
    };
    for l in lines {
        if let Some(e) = l.strip_prefix("top ") {
            if e != "docker" {
                listing.other.push(e.to_owned());
            }
        } else if let Some(e) = l.strip_prefix("v2 ") {
            match e {
                "repositories" => listing.repositories = true,
                "blobs" => {}
                other => listing.other.push(format!("docker/registry/v2/{other}")),
            }
        } else if let Some(rest) = l.strip_prefix("blob ") {
            let Some((size, path)) = rest.split_once(' ') else {
                continue;
            };
            // blobs/sha256/<ab>/<digest>/data
            let parts: Vec<&str> = path.split('/').collect();
            let digest = match parts.as_slice() {
                ["blobs", "sha256", ab, d, "data"] if d.starts_with(ab) && ab.len() == 2 => {
                    snapshot::parse_sha(d)
                }
                _ => None,
            };
            match (digest, size.parse::<u64>()) {
                (Some(digest), Ok(size)) => listing.blobs.push(Listed { digest, size }),
                _ => listing.other.push(format!("docker/registry/v2/{path}")),
            }
        }
        // Anything else is the helper's own output (a file that went away while `stat` ran).
    }
    listing.blobs.sort_unstable_by_key(|b| b.digest);
    listing.blobs.dedup_by_key(|b| b.digest);
    Ok(listing)
}

/// The blobs of a volume, streamed one by one through the archive endpoint of the created
/// helper `id`. Opened from the blob copy's threads: they enter the runtime of `handle`.
pub struct VolumeBlobs {
    pub engine: Engine,
    pub id: String,
    pub volume: String,
    pub listed: Vec<Listed>,
    pub handle: tokio::runtime::Handle,
    pub cancel: Cancel,
}

impl BlobSource for VolumeBlobs {
    fn list(&self, _cancel: &Cancel) -> Result<(Vec<Listed>, Vec<String>)> {
        Ok((self.listed.clone(), Vec::new()))
    }

    fn open(&self, digest: &Sha) -> io::Result<Option<Box<dyn Read + Send + '_>>> {
        let path = format!("/storage/{}", snapshot::registry_key(digest));
        let (feed, _task) = {
            let _in_runtime = self.handle.enter();
            container::download(&self.engine, &self.id, &path, self.cancel.clone())
        };
        let mut reader = feed.into_reader(Vec::new(), None);
        match member(&mut reader) {
            Ok(size) => Ok(Some(Box::new(reader.take(size)))),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn describe(&self, digest: &Sha) -> String {
        format!("{}/_data/{}", self.volume, snapshot::registry_key(digest))
    }
}

/// Whether a download failed because the path is not there (garbage collection since the
/// listing).
pub fn gone(e: &io::Error) -> bool {
    let m = e.to_string();
    m.contains("404") || m.contains("No such container:path") || m.contains("no such file")
}

/// Reads the headers of the archive of one file (Docker's: extended headers first where
/// Go's writer needs them) up to its data; returns the file's size. Reading further yields
/// the file's bytes.
fn member(r: &mut dyn Read) -> io::Result<u64> {
    let mut pax_size = None;
    for _ in 0..8 {
        let mut block = [0u8; 512];
        r.read_exact(&mut block)?;
        let h = tar::Header::from_byte_slice(&block);
        let size = h.entry_size()?;
        match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                return Ok(pax_size.unwrap_or(size));
            }
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {
                if size > 1 << 20 {
                    return Err(io::Error::other(
                        "an extended tar header of more than 1 MiB",
                    ));
                }
                let mut data = vec![0u8; size.div_ceil(512) as usize * 512];
                r.read_exact(&mut data)?;
                if h.entry_type() == tar::EntryType::XHeader {
                    for rec in tar::PaxExtensions::new(&data[..size as usize]).flatten() {
                        if rec.key() == Ok("size") {
                            pax_size = rec.value().ok().and_then(|v| v.parse().ok());
                        }
                    }
                }
            }
            other => {
                return Err(io::Error::other(format!(
                    "the blob's archive holds a {other:?} where its file was expected"
                )));
            }
        }
    }
    Err(io::Error::other(
        "too many extended headers before the blob's file",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_blobs_sorted_and_names_the_rest() {
        let d1 = "ab".repeat(32);
        let d2 = "01".repeat(32);
        let lines: Vec<String> = [
            "top docker".to_owned(),
            "top lost+found".to_owned(),
            "v2 blobs".to_owned(),
            "v2 repositories".to_owned(),
            format!("blob 10 blobs/sha256/ab/{d1}/data"),
            format!("blob 0 blobs/sha256/01/{d2}/data"),
            format!("blob 5 blobs/sha256/cd/{d1}/data"),
            "stat: can't stat 'x': No such file or directory".to_owned(),
            "listed".to_owned(),
        ]
        .into();
        let l = parse(&lines).unwrap();
        assert!(l.repositories);
        assert_eq!(l.blobs.len(), 2);
        assert_eq!(snapshot::sha_hex(&l.blobs[0].digest), d2);
        assert_eq!(l.blobs[1].size, 10);
        assert_eq!(l.other.len(), 2, "{:?}", l.other);
        let cut: Vec<String> = lines[..4].to_vec();
        assert!(parse(&cut).is_err(), "no sentinel, no listing");
        let mut failed = lines.clone();
        failed.insert(4, "find failed 127".into());
        assert!(parse(&failed).is_err());
    }

    #[test]
    fn the_file_of_a_one_file_archive_is_read_past_its_headers() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("mtime", b"1.5".as_slice())])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        b.append_data(&mut h, "data", &b"hello"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut r = &bytes[..];
        let size = member(&mut r).unwrap();
        assert_eq!(size, 5);
        let mut out = Vec::new();
        r.take(size).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello");
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_size(0);
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut dir, "x/", io::empty()).unwrap();
        let bytes = b.into_inner().unwrap();
        assert!(member(&mut &bytes[..]).is_err());
    }
}
