//! The plan's content-addressed blob store at the destination: blobs kept object by object,
//! each encrypted on its own, shared by every backup that lists them.
//!
//! A blob is reused only if it is encrypted the way the plan encrypts now, so the store is
//! split by encryption identity, one folder each: `blobs/<store>/sha256/<ab>/<digest>`.
//!
//! - `plain`: no encryption.
//! - `r-<16 hex>`: encrypted to a set of recipients (sha256 of their sorted fingerprints).
//! - `p-<16 hex>`: encrypted with a passphrase. The folder holds `key-check`, a short message
//!   encrypted with that passphrase; the store of the current passphrase is the one whose
//!   key check it opens. (The key check reveals nothing the blobs' own key packets do not.)
//!
//! After a key rotation, or once encryption is turned on, the next backup finds no store of
//! its identity and copies every blob again into a new one; the old store's blobs go when no
//! kept backup lists them. `blobs/sha256/...` (without a store folder) is where releases
//! before this layout kept blobs; manifests that list them stay readable.

use sha2::{Digest, Sha256};

use crate::crypto::{self, Decryption, Encryption};
use crate::error::{Result, io};
use crate::hex::{Sha, parse_sha, sha_hex};
use crate::storage::Store;

/// Where the blob store lives, relative to the plan's root at the destination.
pub const ROOT: &str = "blobs";
pub const KEY_CHECK: &str = "key-check";
const KEY_CHECK_TEXT: &[u8] = b"dtr-backup blob store key check\n";

/// What the blob store keeps, each kind in a folder of its own, each object named by its
/// sha256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Listing {
    /// Registry blobs (`blobs/<store>/sha256/...`).
    Blobs,
    /// Repository trees (`blobs/<store>/trees/...`).
    Trees,
}

impl Listing {
    /// The folder of this kind in a store.
    pub fn folder(self) -> &'static str {
        match self {
            Listing::Blobs => "sha256",
            Listing::Trees => "trees",
        }
    }

    /// What objects of this kind are, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Listing::Blobs => "blobs",
            Listing::Trees => "repository trees",
        }
    }

    /// Where an object of this kind lies in the blob store.
    pub fn path(self, store: &BlobStore, digest: &Sha) -> String {
        store.object_path(self, &sha_hex(digest))
    }
}

/// One folder of the blob store: the blobs encrypted one way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobStore {
    pub id: String,
}

impl BlobStore {
    /// Where a blob is kept: `blobs/<store>/sha256/<ab>/<digest>`.
    pub fn path(&self, digest: &str) -> String {
        self.object_path(Listing::Blobs, digest)
    }

    /// Where an object of `kind` is kept: `blobs/<store>/<folder>/<ab>/<digest>`.
    pub fn object_path(&self, kind: Listing, digest: &str) -> String {
        format!(
            "{}/{}/{}/{digest}",
            self.prefix(),
            kind.folder(),
            &digest[..2.min(digest.len())]
        )
    }

    /// The folder of this store: `blobs/<store>`.
    pub fn prefix(&self) -> String {
        format!("{ROOT}/{}", self.id)
    }

    /// The store for `enc` in `store`: found, or (for a new passphrase) created with its key
    /// check. Reads the passphrase stores' key checks; writes only a new key check.
    pub fn for_encryption(store: &dyn Store, enc: &Encryption) -> Result<BlobStore> {
        match enc {
            Encryption::None => Ok(BlobStore { id: "plain".into() }),
            Encryption::Recipients(certs) => {
                let mut fps: Vec<String> = certs.iter().map(|c| c.fingerprint().to_hex()).collect();
                fps.sort();
                fps.dedup();
                let h = crate::hex::encode(&Sha256::digest(fps.join("\n").as_bytes()));
                Ok(BlobStore {
                    id: format!("r-{}", &h[..16]),
                })
            }
            Encryption::Passphrase(secret) => {
                let dec = Decryption::Passphrase(secret.clone());
                for id in store.list_dirs(ROOT)? {
                    if !id.starts_with("p-") {
                        continue;
                    }
                    let Some(check) = store.get(&format!("{ROOT}/{id}/{KEY_CHECK}"))? else {
                        continue;
                    };
                    if opens(&check, &dec) {
                        return Ok(BlobStore { id });
                    }
                }
                let found = BlobStore {
                    id: format!("p-{}", crate::clock::random_hex(8)),
                };
                let mut sealed = Vec::new();
                {
                    let mut w = crypto::encrypt(&mut sealed, enc)
                        .map_err(|e| io(e, "encrypting the blob store's key check"))?;
                    std::io::Write::write_all(&mut w, KEY_CHECK_TEXT)
                        .map_err(|e| io(e, "encrypting the blob store's key check"))?;
                    w.finish()
                        .map_err(|e| io(e, "encrypting the blob store's key check"))?;
                }
                store.put(&format!("{}/{KEY_CHECK}", found.prefix()), &sealed)?;
                Ok(found)
            }
        }
    }

    /// Digest → stored size of every blob in this store.
    pub fn list(&self, store: &dyn Store) -> Result<std::collections::BTreeMap<String, u64>> {
        Ok(self
            .held(store, Listing::Blobs)?
            .into_iter()
            .map(|(d, s)| (sha_hex(&d), s))
            .collect())
    }

    /// Every object of `kind` in this store with its stored size, sorted by digest: 40
    /// octets each, the listing streamed (no path held as a string).
    pub fn held(&self, store: &dyn Store, kind: Listing) -> Result<Vec<(Sha, u64)>> {
        let mut held = Vec::new();
        store.walk_sized(
            &format!("{}/{}", self.prefix(), kind.folder()),
            &mut |p, s| {
                if let Some(d) = p.rsplit('/').next().and_then(parse_sha) {
                    held.push((d, s));
                }
                Ok(())
            },
        )?;
        held.sort_unstable();
        held.dedup_by_key(|(d, _)| *d);
        Ok(held)
    }
}

/// Whether `check` decrypts, whole and intact, to the key-check text.
fn opens(check: &[u8], dec: &Decryption) -> bool {
    let Ok(mut r) = crypto::decrypt(check, dec) else {
        return false;
    };
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut r, 4096), &mut plain).is_ok()
        && plain == KEY_CHECK_TEXT
}

/// Whether `path` is where a blob store keeps the blob `digest` (this layout, or the one
/// before it, `blobs/sha256/<ab>/<digest>`).
pub fn is_blob_path(path: &str, digest: &str) -> bool {
    if !crate::hex::is_sha256(digest) {
        return false;
    }
    let tail = format!("sha256/{}/{digest}", &digest[..2]);
    let Some(rest) = path.strip_prefix(&format!("{ROOT}/")) else {
        return false;
    };
    if rest == tail {
        return true;
    }
    rest.split_once('/').is_some_and(|(id, t)| {
        t == tail
            && !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn a_passphrase_finds_its_own_store_and_another_gets_a_new_one() {
        let store = MemoryStore::new();
        let a = Encryption::Passphrase(Secret::for_test("first passphrase"));
        let b = Encryption::Passphrase(Secret::for_test("second passphrase"));
        let sa = BlobStore::for_encryption(&store, &a).unwrap();
        assert!(sa.id.starts_with("p-"));
        assert_eq!(BlobStore::for_encryption(&store, &a).unwrap(), sa);
        let sb = BlobStore::for_encryption(&store, &b).unwrap();
        assert_ne!(sb, sa);
        assert_eq!(BlobStore::for_encryption(&store, &b).unwrap(), sb);
        assert_eq!(
            BlobStore::for_encryption(&store, &Encryption::None)
                .unwrap()
                .id,
            "plain"
        );
        // The key check does not hold the passphrase in clear.
        let check = store
            .get(&format!("{}/key-check", sa.prefix()))
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&check).contains("first passphrase"));
    }

    #[test]
    fn blob_paths_of_both_layouts_are_recognised_and_nothing_else() {
        let d = "ab".repeat(32);
        let s = BlobStore {
            id: "p-0123".into(),
        };
        assert!(is_blob_path(&s.path(&d), &d));
        assert!(is_blob_path(&format!("blobs/sha256/ab/{d}"), &d));
        for bad in [
            format!("blobs/../sha256/ab/{d}"),
            format!("blobs/p/../../sha256/ab/{d}"),
            format!("blobs/a/b/sha256/ab/{d}"),
            format!("blobs/p-1/sha256/cd/{d}"),
            format!("other/sha256/ab/{d}"),
        ] {
            assert!(!is_blob_path(&bad, &d), "{bad}");
        }
        assert!(!is_blob_path("blobs/sha256/../x", "../x"));
    }
}
