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

/// Walks the tar archive and checks where its members are.
fn check_layout(
    plain: &mut dyn Read,
    kind: ArtifactKind,
    manifest: &Manifest,
) -> Result<String, String> {
    let mut archive = tar::Archive::new(plain);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let volume = manifest.dtr.volume.clone().unwrap_or_default();
    let registry = format!("{volume}/_data/docker/registry/v2/");
    let mut members = 0u64;
    let mut under_registry = 0u64;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("tar archive broken after {members} members: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("member {members} has a bad name: {e}"))?
            .to_string_lossy()
            .into_owned();
        members += 1;
        if kind == ArtifactKind::Images {
            if !(name == volume || name.starts_with(&format!("{volume}/"))) {
                return Err(format!("member {name:?} is outside {volume}/"));
            }
            if name.starts_with(&registry) {
                under_registry += 1;
            }
        }
        io::copy(&mut entry, &mut io::sink()).map_err(|e| format!("reading {name}: {e}"))?;
    }
    if kind == ArtifactKind::Images && under_registry == 0 {
        return Err(format!("no member under {registry}"));
    }
    Ok(format!("{members} members"))
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
