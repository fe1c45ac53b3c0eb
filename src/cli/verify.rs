//! `dtr-backup verify PLAN`: prove a stored backup whole, decryptable and restorable.

use std::path::PathBuf;

use clap::ValueEnum;

use super::Output;
use crate::cancel::Cancel;
use crate::crypto;
use crate::exit::Exit;
use crate::manifest::{self, Manifest};
use crate::storage;
use crate::verify::{self, Check, ReadData};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReadDataArg {
    /// Layout, sizes, sha256 and decryption; blob contents are not hashed.
    #[default]
    Layout,
    /// Also hash a fixed sample of the blobs (`--sample-percent`).
    Sample,
    /// Also hash every blob against its digest.
    Full,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// The backup id, or `latest`.
    #[arg(long, default_value = "latest", value_name = "ID")]
    pub backup: String,
    #[arg(long, value_enum, default_value_t)]
    pub read_data: ReadDataArg,
    /// With `--read-data sample`: the share of blobs hashed (same blobs every time).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub sample_percent: u8,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &Args) -> Exit {
    let plan = match super::load_plan(&args.plan) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let fail = |msg: String, exit: Exit| {
        match args.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"format_version": 1, "ok": false, "error": msg, "checks": []})
            ),
            Output::Text => eprintln!("error: {msg}"),
        }
        exit
    };
    let stores = match storage::open(&plan) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string(), e.exit()),
    };
    let store = stores.backups.as_ref();
    let id = if args.backup == "latest" {
        match manifest::list(store) {
            Ok(listing) => {
                for u in &listing.unreadable {
                    eprintln!("warning: {}", u.warning());
                }
                match listing.complete.last() {
                    Some(m) => m.backup_id.clone(),
                    None => {
                        return fail(
                            format!(
                                "plan {} has no complete backup at {}",
                                plan.name,
                                store.describe()
                            ),
                            Exit::VerifyFailed,
                        );
                    }
                }
            }
            Err(e) => return fail(e.to_string(), e.exit()),
        }
    } else if crate::clock::backup_id_time(&args.backup).is_none() {
        return fail(
            format!(
                "--backup {:?} is not a backup id (like 20261124T164428Z-4a2a) or `latest`: `dtr-backup backups list {}` shows the ids",
                args.backup,
                args.plan.display()
            ),
            Exit::Usage,
        );
    } else {
        args.backup.clone()
    };
    let read_data = match args.read_data {
        ReadDataArg::Layout => ReadData::Layout,
        ReadDataArg::Sample => ReadData::Sample(args.sample_percent),
        ReadDataArg::Full => ReadData::Full,
    };
    let mut checks = Vec::new();
    let manifest_path = format!("{id}/{}", manifest::FILE);
    let manifest = match store.get(&manifest_path) {
        Ok(Some(bytes)) => Manifest::parse(&bytes, &id, &manifest_path).map_err(|e| e.to_string()),
        Ok(None) => Err(format!(
            "{manifest_path} does not exist: no complete backup {id}"
        )),
        Err(e) => Err(e.to_string()),
    };
    checks.push(Check {
        name: "manifest.json exists and parses".into(),
        ok: manifest.is_ok(),
        detail: match &manifest {
            Ok(m) => format!(
                "{} artifacts, finished {}",
                m.artifacts.len(),
                m.finished_at
            ),
            Err(e) => e.clone(),
        },
    });
    if let Ok(m) = &manifest {
        let dec = match crypto::for_plan(&plan) {
            Ok((_, dec)) => dec,
            Err(e) => return fail(e.to_string(), e.exit()),
        };
        if dec.is_none() && m.artifacts.iter().any(|a| a.encrypted) {
            checks.push(Check {
                name: "a key to decrypt with".into(),
                ok: false,
                detail: "the artifacts are encrypted to recipients and the plan has no verify.key: set it to the secret key".into(),
            });
        }
        checks.extend(verify::check_backup(
            store,
            m,
            dec.as_ref(),
            read_data,
            verify::Rehash::Always,
            &Cancel::new(),
        ));
    }
    let ok = checks.iter().all(|c| c.ok);
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"format_version": 1, "plan": plan.name.to_string(), "backup_id": id, "ok": ok, "checks": checks})
        ),
        Output::Text => {
            println!("verify {} backup {id}", plan.name);
            for c in &checks {
                println!(
                    "  {} {}: {}",
                    if c.ok { "PASS" } else { "FAIL" },
                    c.name,
                    short(&c.detail)
                );
            }
            let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
            if failed.is_empty() {
                println!("all {} checks passed", checks.len());
            } else {
                println!("{} of {} checks failed", failed.len(), checks.len());
                for c in failed.iter().take(3) {
                    eprintln!("error: {}: {}", c.name, c.detail);
                }
            }
        }
    }
    if ok { Exit::Ok } else { Exit::VerifyFailed }
}

fn short(s: &str) -> String {
    if s.chars().count() > 110 {
        format!("{}…", s.chars().take(110).collect::<String>())
    } else {
        s.to_owned()
    }
}
