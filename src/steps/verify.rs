//! Verify: reads the new backup back (sizes, decryption with its integrity protection, layout;
//! sha256 where an artifact cannot be decrypted). Only when every check passes is
//! `manifest.json` published: a backup that fails is never complete.

use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::plan::Plan;
use crate::steps::FileRef;
use crate::storage::metered::Metered;
use crate::verify;

use super::{Ctx, Described, Outcome, blocking};

pub fn describe(plan: &Plan) -> Described {
    let actions = vec![
        "read every artifact back: size, decryption (integrity protection, which covers every octet), tar layout; sha256 of artifacts not decrypted; every blob and repository tree of the backup's lists in the blob store with its size (the ones this run wrote were read back by the images step as it wrote them)"
            .into(),
        format!(
            "publish <backup-id>/{} when all checks pass",
            manifest::FILE
        ),
    ];
    Described {
        inputs: vec![format!(
            "{}{}",
            super::destination_text(plan),
            manifest::FILE
        )],
        outputs: vec!["sizes, decryption (integrity protection), layout checked".into()],
        actions,
    }
}

pub async fn run(ctx: Ctx) -> Result<Outcome> {
    let pending = ctx.backup_path(manifest::PENDING);
    let final_path = ctx.backup_path(manifest::FILE);
    let dec = ctx.secrets.decryption.clone();
    if dec.is_none() {
        ctx.warn(
            "no verify.key in the plan: the artifacts are checked by size and sha256, not decrypted",
        );
    }
    let (stores, cancel, backup_id, reporter, step) = (
        ctx.stores.clone(),
        ctx.cancel.clone(),
        ctx.backup_id.clone(),
        ctx.reporter.clone(),
        ctx.step_id.clone(),
    );
    let size = blocking(move || {
        let store = stores.backups.as_ref();
        // After a kill between publishing and journaling, only the final name exists.
        let bytes = match store.get(&pending)? {
            Some(b) => b,
            None => store.get(&final_path)?.ok_or_else(|| {
                Error::stored(format!("{pending} is missing; start over with --fresh"))
            })?,
        };
        let m = Manifest::parse(&bytes, &backup_id, &pending)?;
        // The read-back reads the artifacts and the lists (blob-store objects are checked by
        // their size).
        let meter = crate::progress::Meter::default();
        let total = verify::to_read(
            store,
            &m,
            verify::Pass::Verify(verify::ReadData::Layout),
            dec.as_ref(),
        );
        let ticker = crate::progress::Ticker::start(&meter, reporter, &step, total);
        let metered = Metered::wrap(stores.backups.clone(), &meter);
        let checks = verify::check_backup(
            metered.as_ref(),
            &m,
            dec.as_ref(),
            verify::ReadData::Layout,
            verify::Rehash::Undecrypted,
            &cancel,
        );
        ticker.finish();
        cancel
            .check()
            .map_err(|e| crate::error::io(e, "verifying"))?;
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        if !failed.is_empty() {
            return Err(Error::Verify(format!(
                "the new backup failed verification and is not complete: {}",
                failed.join("; ")
            )));
        }
        crate::failpoint::hit("verify.before-publish");
        cancel
            .check()
            .map_err(|e| crate::error::io(e, "publishing the manifest"))?;
        store.put(&final_path, &bytes)?;
        store.delete(&pending)?;
        Ok(bytes.len() as u64)
    })
    .await?;
    Ok(Outcome {
        files: vec![FileRef::new(ctx.backup_path(manifest::FILE), size)],
        ..Outcome::default()
    })
}
