//! Where the members of each kind of artifact must be, and what the walk collects: the blob
//! digests metadata references and those image content holds.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::sync::OnceLock;

use regex::Regex;

use crate::archive::HashReader;
use crate::manifest::{ArtifactKind, Manifest};

use super::ReadData;

/// What one artifact's walk found.
#[derive(Default)]
pub(super) struct Walk {
    /// Blob digests referenced by metadata documents.
    pub(super) references: BTreeSet<String>,
    /// Blob digests present in image content.
    pub(super) blobs: BTreeSet<String>,
    pub(super) hashed: usize,
    pub(super) bad_blobs: Vec<String>,
}

fn digest_ref() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"sha256:([0-9a-f]{64})").expect("valid regex"))
}

fn blob_path() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"/docker/registry/v2/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})/data$")
            .expect("valid regex")
    })
}

/// Walks the archive (gzip or plain tar, sniffed) and checks where its members are: image
/// content under `<volume>/_data/docker/registry/v2/`, metadata under
/// `dtr-backup-v<version>[-online|-offline]/` with `rethink/properties/0`.
pub(super) fn walk_archive(
    plain: &mut dyn Read,
    kind: ArtifactKind,
    manifest: &Manifest,
    read_data: ReadData,
) -> Result<(String, Walk), String> {
    let mut buffered = io::BufReader::with_capacity(1 << 16, plain);
    if matches!(kind, ArtifactKind::Blobs | ArtifactKind::Trees) {
        return walk_blob_list(buffered);
    }
    let gzip = io::BufRead::fill_buf(&mut buffered)
        .map_err(|e| format!("cannot read: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(crate::archive::records::CappedRecords::new(reader));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let volume = manifest.dtr.volume.clone().unwrap_or_default();
    let registry = format!("{volume}/_data/docker/registry/v2/");
    let version = manifest.dtr.version.clone().unwrap_or_default();
    let mut walk = Walk::default();
    let mut members = 0u64;
    let mut under_registry = 0u64;
    let mut top: Option<String> = None;
    let mut tables = BTreeSet::new();
    let mut properties = false;
    let mut ucp_key = false;
    let mut buf = vec![0u8; 1 << 16];
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
            ArtifactKind::Ucp => {
                let mut rest = name.as_str();
                while let Some(r) = rest.strip_prefix("./") {
                    rest = r;
                }
                // A regular file with content: a folder, a link or an empty file is no key.
                ucp_key |= rest == crate::manifest::UCP_KEY_MEMBER
                    && entry.header().entry_type().is_file()
                    && entry.size() > 0;
            }
            ArtifactKind::Images => {
                if !(name == volume || name.starts_with(&format!("{volume}/"))) {
                    return Err(format!("member {name:?} is outside {volume}/"));
                }
                if name.starts_with(&registry) {
                    under_registry += 1;
                }
                if let Some(cap) = blob_path().captures(&name) {
                    let digest = cap[2].to_owned();
                    if cap[1] != digest[..2] {
                        walk.bad_blobs.push(format!("{name} (wrong folder)"));
                    }
                    if read_data.selects(&digest) {
                        let h = HashReader::new(&mut entry);
                        let (sha, _) = h.finish().map_err(|e| format!("reading {name}: {e}"))?;
                        walk.hashed += 1;
                        if sha != digest {
                            walk.bad_blobs
                                .push(format!("sha256:{digest} (content hashes to {sha})"));
                        }
                    }
                    walk.blobs.insert(digest);
                }
            }
            ArtifactKind::Blobs | ArtifactKind::Trees => {
                return Err("a blob list is not an archive".to_owned());
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
                    let doc = parts.next().filter(|d| !d.is_empty());
                    if table == "properties" && doc == Some("0") {
                        properties = true;
                    }
                    if doc.is_some() && matches!(table, "manifests" | "blobs" | "blob_links") {
                        let mut text = Vec::new();
                        (&mut entry)
                            .take(16 << 20)
                            .read_to_end(&mut text)
                            .map_err(|e| format!("reading {name}: {e}"))?;
                        for cap in digest_ref().captures_iter(&String::from_utf8_lossy(&text)) {
                            walk.references.insert(cap[1].to_owned());
                        }
                    }
                }
            }
        }
        // Read what is left of the member (the archive must be whole).
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("reading {name}: {e}")),
            }
        }
    }
    let detail = match kind {
        ArtifactKind::Blobs | ArtifactKind::Trees => String::new(),
        ArtifactKind::Ucp if gzip => return Err("gzip, not the tar UCP writes".to_owned()),
        ArtifactKind::Ucp if !ucp_key => {
            return Err(format!(
                "{members} members, none of them {}: not a UCP backup",
                crate::manifest::UCP_KEY_MEMBER
            ));
        }
        ArtifactKind::Ucp => format!(
            "tar of {members} members, {} among them",
            crate::manifest::UCP_KEY_MEMBER
        ),
        ArtifactKind::Images if under_registry == 0 => {
            return Err(format!("no member under {registry}"));
        }
        ArtifactKind::Images => format!(
            "{members} members under {volume}/, {} blobs",
            walk.blobs.len()
        ),
        ArtifactKind::Metadata if !properties => {
            return Err("rethink/properties/0 is missing".to_owned());
        }
        ArtifactKind::Metadata => format!(
            "{} archive {}/ with {} tables ({}), {} blob references",
            if gzip { "gzip" } else { "tar" },
            top.unwrap_or_default(),
            tables.len(),
            tables.into_iter().collect::<Vec<_>>().join(", "),
            walk.references.len()
        ),
    };
    Ok((detail, walk))
}

/// The list of the blobs a backup keeps in the blob store: every line well formed, in order
/// (`snapshot::summarize` checks each). What it lists, with its base, is checked against the
/// store by `objects::check_blob_store`.
fn walk_blob_list(list: impl io::BufRead) -> Result<(String, Walk), String> {
    let s = crate::snapshot::summarize(list, "the blob list").map_err(|e| e.to_string())?;
    let what = s.kind.noun();
    let detail = match s.base {
        Some(b) => format!(
            "{} {what} added or changed ({} bytes), {} dropped, against the base {} in the blob store {}",
            s.kept,
            s.bytes,
            s.dropped,
            &crate::snapshot::sha_hex(&b.sha)[..12],
            s.store.id
        ),
        None => format!(
            "{} {what} ({} bytes) in the blob store {}",
            s.kept, s.bytes, s.store.id
        ),
    };
    Ok((detail, Walk::default()))
}
