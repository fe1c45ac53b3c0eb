//! Retention: keeps the complete backups that any rule selects and deletes the others, then
//! removes incomplete runs older than the newest complete backup.

use std::collections::BTreeSet;

use crate::cancel::Cancel;
use crate::clock;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::manifest;
use crate::plan::{Plan, RetentionCfg};
use crate::snapshot::Listing;
use crate::storage::Store;

use super::{Ctx, Described, Outcome, blocking};

pub fn describe(plan: &Plan) -> Described {
    match &plan.retention {
        Some(r) => Described {
            inputs: vec![format!(
                "keep_last {} daily {} weekly {} monthly {}",
                r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly
            )],
            outputs: vec!["older backups deleted".into()],
            actions: vec![format!(
                "keep last {}, daily {}, weekly {}, monthly {} complete backups; delete the others and older incomplete runs",
                r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly
            )],
        },
        None => Described {
            actions: vec!["keep every backup".into()],
            ..Described::default()
        },
    }
}

/// The ids to keep among `backups` (id, time), under `cfg`. A backup kept by any rule is kept.
pub fn select(backups: &[(String, i64)], cfg: &RetentionCfg) -> BTreeSet<String> {
    let mut newest_first: Vec<&(String, i64)> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.0.cmp(&a.0));
    let mut keep = BTreeSet::new();
    for (id, _) in newest_first.iter().take(cfg.keep_last as usize) {
        keep.insert(id.clone());
    }
    let day = |t: i64| t.div_euclid(86_400);
    // 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday.
    let week = |t: i64| (day(t) + 3).div_euclid(7);
    let month = |t: i64| {
        let (y, m, _) = clock::civil_from_days(day(t));
        y * 12 + i64::from(m)
    };
    let rules: [(u32, &dyn Fn(i64) -> i64); 3] = [
        (cfg.keep_daily, &day),
        (cfg.keep_weekly, &week),
        (cfg.keep_monthly, &month),
    ];
    for (count, bucket) in rules {
        let mut seen = BTreeSet::new();
        for (id, t) in &newest_first {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(bucket(*t)) {
                keep.insert(id.clone());
            }
        }
    }
    keep
}

/// What retention removes (or, against a [`DryRun`](crate::storage::dry_run::DryRun) store,
/// would remove).
#[derive(Debug, Default)]
pub struct Pruned {
    /// Complete backups not kept by any rule.
    pub backups: Vec<String>,
    /// Folders of incomplete runs older than the newest complete backup.
    pub incomplete: Vec<String>,
    /// Blob-store objects that no kept backup lists.
    pub blobs: Vec<String>,
    /// Folders whose manifest cannot be read: left alone.
    pub unreadable: Vec<manifest::Unreadable>,
    /// Why no blob was deleted, when a kept backup's blob list cannot be read.
    pub warnings: Vec<String>,
}

/// Applies the plan's retention to the store. `current` (the running or unfinished run) and
/// `protected` (its blob-store objects) are never removed. Must run under the plan's lock.
pub fn prune(
    store: &dyn Store,
    cfg: &RetentionCfg,
    current: &str,
    protected: &BTreeSet<String>,
    cancel: &Cancel,
) -> Result<Pruned> {
    // Checked before each deletion: a cancelled prune stops between two, and what it did is
    // consistent (a backup loses its manifest first).
    let go_on = || {
        if cancel.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    };
    let listing = manifest::list(store)?;
    let complete = &listing.complete;
    let dated: Vec<(String, i64)> = complete
        .iter()
        .filter_map(|m| clock::backup_id_time(&m.backup_id).map(|t| (m.backup_id.clone(), t)))
        .collect();
    let mut keep = select(&dated, cfg);
    keep.insert(current.to_owned());
    let mut pruned = Pruned::default();
    for (id, _) in &dated {
        if !keep.contains(id) {
            go_on()?;
            // The manifest first: a backup interrupted while it is deleted is then an
            // incomplete run (never listed, removed by a later retention), not a "complete"
            // backup with missing files.
            store.delete(&format!("{id}/{}", manifest::FILE))?;
            store.delete_all(id)?;
            pruned.backups.push(id.clone());
        }
    }
    let newest = dated.iter().map(|(id, _)| id.clone()).max();
    for id in store.list_dirs("")? {
        let incomplete = clock::backup_id_time(&id).is_some()
            && id != current
            && !dated.iter().any(|(d, _)| *d == id)
            && !listing.is_unreadable(&id)
            && newest.as_ref().is_some_and(|n| id < *n);
        if incomplete {
            go_on()?;
            store.delete_all(&id)?;
            pruned.incomplete.push(id);
        }
    }
    // Blobs: kept while any kept backup lists them. A folder with an unreadable manifest may
    // list blobs too: with one of those, no blob is deleted.
    if !listing.unreadable.is_empty() {
        pruned.unreadable = listing.unreadable;
        return Ok(pruned);
    }
    let mut referenced = Referenced::default();
    for p in protected {
        referenced.add(p);
    }
    // The blob and tree lists of the current run, once its images step wrote them (before
    // its manifest).
    let mut failed = None;
    if !current.is_empty() && !complete.iter().any(|m| m.backup_id == current) {
        for list in [crate::snapshot::FILE, crate::snapshot::TREES_FILE] {
            let path = format!("{current}/{list}");
            if store.size(&path)?.is_none() {
                continue;
            }
            if let Err(e) = list_paths(store, &path, &mut |p| referenced.add(p)) {
                failed = Some(e);
            }
        }
    }
    for m in complete.iter().filter(|m| keep.contains(&m.backup_id)) {
        if failed.is_some() {
            break;
        }
        let listed = crate::snapshot::blobs_of(store, m).and_then(|blobs| {
            for k in blobs.chain(crate::snapshot::trees_of(store, m)?) {
                referenced.add(&k?.path);
            }
            for base in crate::snapshot::bases_of(store, m)? {
                referenced.add(&base);
            }
            Ok(())
        });
        if let Err(e) = listed {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        pruned.warnings.push(format!(
            "no blob was deleted: {e}; run `dtr-backup verify` on that backup"
        ));
        return Ok(pruned);
    }
    referenced.seal();
    // One walk of the store: what no kept backup lists goes (a store's key check only with
    // its last blob, once the walk has seen whether any of its blobs stays).
    let mut live_stores = BTreeSet::new();
    let mut key_checks = Vec::new();
    let mut doomed = Vec::new();
    store.walk_sized(crate::blob_store::ROOT, &mut |path, _| {
        if path.ends_with("/key-check") && path.split('/').count() == 3 {
            key_checks.push(path.to_owned());
        } else if referenced.contains(path) {
            // `blobs/<store>/...` (the layout before stores had folders: `blobs/sha256/...`).
            live_stores.insert(path.split('/').nth(1).unwrap_or_default().to_owned());
        } else {
            doomed.push(path.to_owned());
        }
        Ok(())
    })?;
    doomed.sort();
    for path in doomed {
        go_on()?;
        store.delete(&path)?;
        pruned.blobs.push(path);
    }
    for path in key_checks {
        if !live_stores.contains(path.split('/').nth(1).unwrap_or_default()) {
            go_on()?;
            store.delete(&path)?;
        }
    }
    Ok(pruned)
}

/// The blob-store objects kept backups list, held compactly: a store's folder once, each
/// digest as 32 octets (a million blobs in about 40 MiB).
#[derive(Default)]
struct Referenced {
    stores: Vec<String>,
    /// Store index, kind (its folder), digest.
    blobs: Vec<(u16, Listing, crate::snapshot::Sha)>,
    /// Listed paths that are no blob-store path of either layout (kept as they are).
    other: BTreeSet<String>,
}

impl Referenced {
    /// `blobs/<store>/<folder>/<ab>/<digest>` of either kind, or `blobs/sha256/<ab>/<digest>`
    /// (store `""`).
    fn parse(path: &str) -> Option<(&str, Listing, crate::snapshot::Sha)> {
        fn in_folder(kind: Listing, tail: &str) -> Option<(Listing, &str)> {
            let t = tail.strip_prefix(kind.folder())?.strip_prefix('/')?;
            Some((kind, t))
        }
        let rest = path.strip_prefix("blobs/")?;
        let (store, (kind, tail)) = match in_folder(Listing::Blobs, rest) {
            Some(found) => ("", found),
            None => {
                let (store, tail) = rest.split_once('/')?;
                let found = [Listing::Blobs, Listing::Trees]
                    .into_iter()
                    .find_map(|k| in_folder(k, tail))?;
                (store, found)
            }
        };
        let (ab, digest) = tail.split_once('/')?;
        let d = crate::snapshot::parse_sha(digest)
            .filter(|_| digest.starts_with(ab) && ab.len() == 2)?;
        Some((store, kind, d))
    }

    fn store_index(&mut self, store: &str) -> u16 {
        match self.stores.iter().position(|s| s == store) {
            Some(i) => i as u16,
            None => {
                self.stores.push(store.to_owned());
                (self.stores.len() - 1) as u16
            }
        }
    }

    fn add(&mut self, path: &str) {
        match Self::parse(path) {
            Some((store, kind, d)) => {
                let i = self.store_index(store);
                self.blobs.push((i, kind, d));
            }
            None => {
                self.other.insert(path.to_owned());
            }
        }
    }

    fn seal(&mut self) {
        self.blobs.sort_unstable();
        self.blobs.dedup();
    }

    fn contains(&self, path: &str) -> bool {
        match Self::parse(path) {
            Some((store, kind, d)) => self
                .stores
                .iter()
                .position(|s| s == store)
                .is_some_and(|i| self.blobs.binary_search(&(i as u16, kind, d)).is_ok()),
            None => self.other.contains(path),
        }
    }
}

/// The blob-store paths of the blob or tree list at `path` (of a run not finished yet), its
/// base's among them.
fn list_paths(store: &dyn Store, path: &str, each: &mut dyn FnMut(&str)) -> Result<()> {
    let reader = crate::snapshot::open(store, path)?;
    if let Some(base) = reader.base_path() {
        each(&base);
    }
    let (blobs, kind) = (reader.store.clone(), reader.kind);
    for b in reader {
        each(&kind.path(&blobs, &b?.digest));
    }
    Ok(())
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let Some(cfg) = ctx.plan.retention else {
        return Ok(Outcome::default());
    };
    let (stores, current, cancel) = (
        ctx.stores.clone(),
        ctx.backup_id.clone(),
        ctx.cancel.clone(),
    );
    let protected: BTreeSet<String> = ctx.objects.iter().filter_map(|o| o.blob.clone()).collect();
    let pruned =
        blocking(move || prune(stores.backups.as_ref(), &cfg, &current, &protected, &cancel))
            .await?;
    for u in &pruned.unreadable {
        ctx.warn(u.warning());
    }
    for w in &pruned.warnings {
        ctx.warn(w.clone());
    }
    for id in pruned.backups.iter().chain(&pruned.incomplete) {
        ctx.reporter.emit(&Event::Log {
            step: ctx.step_id.clone(),
            message: format!("deleted {id}"),
        });
    }
    if !pruned.blobs.is_empty() {
        ctx.reporter.emit(&Event::Log {
            step: ctx.step_id.clone(),
            message: format!("deleted {} blobs no kept backup lists", pruned.blobs.len()),
        });
    }
    Ok(Outcome::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(days: &[i64]) -> Vec<(String, i64)> {
        days.iter()
            .map(|d| {
                let t = 1_795_534_200 + d * 86_400;
                (format!("{}-0000", clock::compact(t)), t)
            })
            .collect()
    }

    /// A store holding complete backups of the given ids (a manifest and one artifact each).
    fn store_with(ids: &[String]) -> crate::storage::memory::MemoryStore {
        let store = crate::storage::memory::MemoryStore::new();
        for id in ids {
            let m = manifest::Manifest {
                format_version: 1,
                plan: "p".into(),
                plan_digest: String::new(),
                backup_id: id.clone(),
                started_at: String::new(),
                finished_at: String::new(),
                dtr: Default::default(),
                ucp_url: None,
                ucp: None,
                storage: "path".into(),
                encryption: "none".into(),
                artifacts: vec![manifest::Artifact {
                    kind: manifest::ArtifactKind::Images,
                    path: "dtr-images-x.tar".into(),
                    size: 1,
                    sha256: String::new(),
                    encrypted: false,
                }],
                objects: Vec::new(),
            };
            store.put(&format!("{id}/dtr-images-x.tar"), b"x").unwrap();
            store
                .put(&format!("{id}/{}", manifest::FILE), &m.to_json())
                .unwrap();
        }
        store
    }

    #[test]
    fn a_backup_loses_its_manifest_before_anything_else() {
        let b: Vec<String> = ids(&[0, 1, 2]).into_iter().map(|(id, _)| id).collect();
        let store = store_with(&b);
        let cfg = RetentionCfg {
            keep_last: 1,
            ..Default::default()
        };
        let pruned = prune(&store, &cfg, "", &BTreeSet::new(), &Cancel::new()).unwrap();
        assert_eq!(pruned.backups, [b[0].clone(), b[1].clone()]);
        let log = store.log();
        for id in &b[..2] {
            let at = |what: &str| log.iter().position(|l| l == what);
            let manifest = at(&format!("delete {id}/{}", manifest::FILE)).expect("deleted");
            let rest = at(&format!("delete_all {id}")).expect("deleted");
            assert!(manifest < rest, "{log:?}");
        }
        assert!(store.paths().iter().all(|p| p.starts_with(&b[2])));
    }

    #[test]
    fn an_unreadable_manifest_keeps_its_folder_and_every_blob() {
        let b: Vec<String> = ids(&[0, 1, 2]).into_iter().map(|(id, _)| id).collect();
        let store = store_with(&b);
        store
            .put(
                &format!("{}/{}", b[0], manifest::FILE),
                b"{\"format_version\": 2}",
            )
            .unwrap();
        store.put("blobs/plain/sha256/ab/unlisted", b"x").unwrap();
        let cfg = RetentionCfg {
            keep_last: 1,
            ..Default::default()
        };
        let pruned = prune(&store, &cfg, "", &BTreeSet::new(), &Cancel::new()).unwrap();
        assert_eq!(pruned.backups, [b[1].clone()], "only the readable old one");
        assert_eq!(pruned.unreadable.len(), 1);
        assert!(pruned.blobs.is_empty());
        let paths = store.paths();
        assert!(paths.contains(&format!("{}/{}", b[0], manifest::FILE)));
        assert!(paths.contains(&format!("{}/dtr-images-x.tar", b[0])));
        assert!(paths.contains(&"blobs/plain/sha256/ab/unlisted".to_owned()));
    }

    #[test]
    fn the_blobs_and_trees_an_unfinished_run_lists_are_kept() {
        use crate::snapshot::{Blob, Listing, Writer};
        let b: Vec<String> = ids(&[0, 1, 2]).into_iter().map(|(id, _)| id).collect();
        let store = store_with(&b[..2]);
        let bs = crate::blob_store::BlobStore { id: "plain".into() };
        let (blob, tree, loose) = ([0xab; 32], [0xcd; 32], [0xef; 32]);
        for (kind, d) in [
            (Listing::Blobs, &blob),
            (Listing::Trees, &tree),
            (Listing::Trees, &loose),
        ] {
            store.put(&kind.path(&bs, d), b"x").unwrap();
        }
        // The unfinished run b[2] (no manifest yet) listed a blob and a tree.
        for (file, kind, d) in [
            (crate::snapshot::FILE, Listing::Blobs, blob),
            (crate::snapshot::TREES_FILE, Listing::Trees, tree),
        ] {
            let mut w = Writer::new(&store, &format!("{}/{file}", b[2]), &bs, kind).unwrap();
            w.push(&Blob {
                digest: d,
                size: 1,
                stored: 1,
                fresh: true,
            })
            .unwrap();
            w.finish().unwrap();
        }
        let cfg = RetentionCfg {
            keep_last: 1,
            ..Default::default()
        };
        let pruned = prune(&store, &cfg, &b[2], &BTreeSet::new(), &Cancel::new()).unwrap();
        let paths = store.paths();
        assert!(
            paths.contains(&Listing::Blobs.path(&bs, &blob)),
            "{paths:?}"
        );
        assert!(
            paths.contains(&Listing::Trees.path(&bs, &tree)),
            "{paths:?}"
        );
        assert_eq!(pruned.blobs, [Listing::Trees.path(&bs, &loose)]);
    }

    #[test]
    fn a_cancelled_prune_stops_before_deleting() {
        let b: Vec<String> = ids(&[0, 1, 2]).into_iter().map(|(id, _)| id).collect();
        let store = store_with(&b);
        let before = store.paths();
        let cancel = Cancel::new();
        cancel.cancel();
        let cfg = RetentionCfg {
            keep_last: 1,
            ..Default::default()
        };
        let err = prune(&store, &cfg, "", &BTreeSet::new(), &cancel).unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(store.paths(), before);
    }

    #[test]
    fn referenced_blobs_are_told_apart_by_store_and_layout() {
        let d = "ab".repeat(32);
        let mut r = Referenced::default();
        r.add(&format!("blobs/p-1/sha256/ab/{d}"));
        r.add(&format!("blobs/sha256/ab/{d}"));
        r.add("blobs/odd/path");
        r.seal();
        assert!(r.contains(&format!("blobs/p-1/sha256/ab/{d}")));
        assert!(r.contains(&format!("blobs/sha256/ab/{d}")));
        assert!(
            !r.contains(&format!("blobs/p-2/sha256/ab/{d}")),
            "another store"
        );
        assert!(!r.contains(&format!("blobs/p-1/sha256/ab/{}", "cd".repeat(32))));
        assert!(
            !r.contains(&format!("blobs/p-1/sha256/cd/{d}")),
            "wrong folder"
        );
        assert!(r.contains("blobs/odd/path"));
        let mut r = Referenced::default();
        r.add(&format!("blobs/p-1/trees/ab/{d}"));
        r.seal();
        assert!(r.contains(&format!("blobs/p-1/trees/ab/{d}")));
        assert!(
            !r.contains(&format!("blobs/p-1/sha256/ab/{d}")),
            "a tree is not a blob"
        );
    }

    #[test]
    fn keep_last_and_daily() {
        let b = ids(&[0, 1, 2, 3, 4, 5]);
        let keep = select(
            &b,
            &RetentionCfg {
                keep_last: 2,
                ..Default::default()
            },
        );
        assert_eq!(keep.len(), 2);
        assert!(keep.contains(&b[5].0) && keep.contains(&b[4].0));
        let keep = select(
            &b,
            &RetentionCfg {
                keep_daily: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            keep,
            [b[3].0.clone(), b[4].0.clone(), b[5].0.clone()].into()
        );
    }

    #[test]
    fn rules_add_up_and_weekly_takes_newest_of_each_week() {
        // Two backups a day for 21 days.
        let mut b = Vec::new();
        for d in 0..21 {
            for h in [0, 6] {
                let t = 1_795_534_200 + d * 86_400 + h * 3600;
                b.push((format!("{}-0000", clock::compact(t)), t));
            }
        }
        let keep = select(
            &b,
            &RetentionCfg {
                keep_last: 1,
                keep_weekly: 3,
                ..Default::default()
            },
        );
        // Newest overall, plus the newest of each of the last three weeks (one is the same).
        assert!(keep.contains(&b.last().unwrap().0));
        assert!(keep.len() <= 4 && keep.len() >= 3, "{keep:?}");
        let keep_all = select(
            &b,
            &RetentionCfg {
                keep_daily: 100,
                ..Default::default()
            },
        );
        assert_eq!(keep_all.len(), 21, "one per day");
    }
}
