//! Verification of a stored backup: every artifact exists with its recorded size and sha256,
//! decrypts (the integrity protection holds), and has the layout a restore needs.

use std::io::{self, Read};

use serde::Serialize;

use crate::archive::HashReader;
use crate::cancel::Cancel;
use crate::crypto::{self, Decryption};
use crate::manifest::{Artifact, ArtifactKind, Manifest};
use crate::storage::Store;

/// One named check and its outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, result: Result<String, String>) -> Check {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            name: name.into(),
            ok,
            detail,
        }
    }
}

/// Checks every artifact of `manifest`, stored under `<backup_id>/`.
pub fn check_artifacts(
    store: &dyn Store,
    manifest: &Manifest,
    dec: &Decryption,
    cancel: &Cancel,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for a in &manifest.artifacts {
        checks.extend(check_artifact(store, manifest, a, dec, cancel));
    }
    checks
}

fn check_artifact(
    store: &dyn Store,
    manifest: &Manifest,
    a: &Artifact,
    dec: &Decryption,
    cancel: &Cancel,
) -> Vec<Check> {
    let path = format!("{}/{}", manifest.backup_id, a.path);
    let mut checks = Vec::new();
    match store.size(&path) {
        Ok(Some(size)) if size == a.size => {}
        Ok(Some(size)) => {
            checks.push(Check::new(
                format!("{}: size", a.path),
                Err(format!("{size} bytes stored, {} recorded", a.size)),
            ));
            return checks;
        }
        Ok(None) => {
            checks.push(Check::new(
                format!("{}: exists", a.path),
                Err("missing".into()),
            ));
            return checks;
        }
        Err(e) => {
            checks.push(Check::new(
                format!("{}: exists", a.path),
                Err(e.to_string()),
            ));
            return checks;
        }
    }
    let reader = match store.open(&path) {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::new(
                format!("{}: readable", a.path),
                Err(e.to_string()),
            ));
            return checks;
        }
    };
    // One pass: hash the stored bytes while decrypting and walking the archive.
    let mut hashed = HashReader::new(Guard {
        inner: reader,
        cancel,
    });
    let layout = {
        let plain: io::Result<Box<dyn Read + Send + Sync + '_>> = if a.encrypted {
            crypto::decrypt(&mut hashed, dec)
        } else {
            Ok(Box::new(&mut hashed))
        };
        match plain {
            Err(e) => {
                checks.push(Check::new(
                    format!("{}: decrypts", a.path),
                    Err(e.to_string()),
                ));
                Err("not checked: no plaintext".to_owned())
            }
            Ok(mut plain) => {
                let layout = check_layout(&mut plain, a.kind, manifest);
                // Reading to the end checks the OpenPGP integrity protection (MDC).
                let rest = io::copy(&mut plain, &mut io::sink());
                drop(plain);
                if a.encrypted {
                    checks.push(Check::new(
                        format!("{}: decrypts", a.path),
                        rest.map(|_| "integrity protection holds".to_owned())
                            .map_err(|e| e.to_string()),
                    ));
                }
                layout
            }
        }
    };
    checks.push(Check::new(format!("{}: layout", a.path), layout));
    checks.push(Check::new(
        format!("{}: sha256", a.path),
        match hashed.finish() {
            Ok((sha, n)) if sha == a.sha256 && n == a.size => {
                Ok(format!("{n} bytes, sha256 {sha}"))
            }
            Ok((sha, n)) => Err(format!(
                "{n} bytes with sha256 {sha}; recorded {} bytes with {}",
                a.size, a.sha256
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    checks
}

/// Walks the archive (gzip or plain tar, sniffed) and checks where its members are: image
/// content under `<volume>/_data/docker/registry/v2/`, metadata under
/// `dtr-backup-v<version>[-online|-offline]/` with `rethink/properties/0`.
fn check_layout(
    plain: &mut dyn Read,
    kind: ArtifactKind,
    manifest: &Manifest,
) -> Result<String, String> {
    let mut buffered = io::BufReader::with_capacity(1 << 16, plain);
    let gzip = io::BufRead::fill_buf(&mut buffered)
        .map_err(|e| format!("cannot read: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let volume = manifest.dtr.volume.clone().unwrap_or_default();
    let registry = format!("{volume}/_data/docker/registry/v2/");
    let version = manifest.dtr.version.clone().unwrap_or_default();
    let mut members = 0u64;
    let mut under_registry = 0u64;
    let mut top: Option<String> = None;
    let mut tables = std::collections::BTreeSet::new();
    let mut properties = false;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("archive broken after {members} members: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("member {members} has a bad name: {e}"))?
            .to_string_lossy()
            .into_owned();
        members += 1;
        match kind {
            ArtifactKind::Images => {
                if !(name == volume || name.starts_with(&format!("{volume}/"))) {
                    return Err(format!("member {name:?} is outside {volume}/"));
                }
                if name.starts_with(&registry) {
                    under_registry += 1;
                }
            }
            ArtifactKind::Metadata => {
                let first = name.split('/').next().unwrap_or("").to_owned();
                let top = top.get_or_insert_with(|| first.clone());
                let ok_top = top
                    .strip_prefix(&format!("dtr-backup-v{version}"))
                    .is_some_and(|r| r.is_empty() || r == "-online" || r == "-offline");
                if !ok_top {
                    return Err(format!(
                        "top folder {top:?} is not dtr-backup-v{version}[-online|-offline]"
                    ));
                }
                if first != *top {
                    return Err(format!("member {name:?} is outside {top}/"));
                }
                let mut parts = name.split('/').skip(1);
                if parts.next() == Some("rethink")
                    && let Some(table) = parts.next().filter(|t| !t.is_empty())
                {
                    tables.insert(table.to_owned());
                    if table == "properties" && parts.next() == Some("0") {
                        properties = true;
                    }
                }
            }
        }
        io::copy(&mut entry, &mut io::sink()).map_err(|e| format!("reading {name}: {e}"))?;
    }
    match kind {
        ArtifactKind::Images if under_registry == 0 => Err(format!("no member under {registry}")),
        ArtifactKind::Images => Ok(format!("{members} members under {volume}/")),
        ArtifactKind::Metadata if !properties => Err("rethink/properties/0 is missing".to_owned()),
        ArtifactKind::Metadata => Ok(format!(
            "{} archive {}/ with {} tables: {}",
            if gzip { "gzip" } else { "tar" },
            top.unwrap_or_default(),
            tables.len(),
            tables.into_iter().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Stops reading when cancelled.
struct Guard<'a, R> {
    inner: R,
    cancel: &'a Cancel,
}

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}
