//! `dtr-backup backups copy PLAN --to OTHER_PLAN [--backup ID|latest|all]`: a second copy of
//! complete backups, at another plan's destination (the same `name`, another destination).

use std::path::PathBuf;
use std::sync::Arc;

use super::Output;
use super::report::{Human, JsonLines, human_bytes};
use crate::cancel::Cancel;
use crate::events::Reporter;
use crate::exec::copy::{self, Select};
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan whose backups are copied.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// The plan whose destination receives them (same `name`, another destination).
    #[arg(long, value_name = "OTHER_PLAN")]
    pub to: PathBuf,
    /// `all` (every complete backup not there yet), `latest`, or a backup id.
    #[arg(long, default_value = "all", value_name = "ID")]
    pub backup: String,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &Args) -> Exit {
    let from = match super::load_plan(&args.plan) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let to = match super::load_plan(&args.to) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let select: Select = match args.backup.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: --backup {}: {e}; write all, latest or a backup id",
                args.backup
            );
            return Exit::Usage;
        }
    };
    let reporter: Arc<dyn Reporter> = match args.output {
        Output::Json => Arc::new(JsonLines::default()),
        Output::Text => Arc::new(Human::new(false)),
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let cancel = Cancel::new();
    let result = runtime.block_on(async {
        super::cancel_on_signals(cancel.clone());
        copy::copy(&from, &to, &select, reporter, &cancel).await
    });
    let exit = match &result {
        Ok(_) => Exit::Ok,
        Err(e) => e.exit(),
    };
    match args.output {
        Output::Json => {
            let mut doc = match &result {
                Ok(c) => serde_json::to_value(c).unwrap_or_default(),
                Err(_) => serde_json::json!({}),
            };
            doc["event"] = "copy_finished".into();
            doc["plan"] = from.name.to_string().into();
            doc["to"] = to.file.display().to_string().into();
            doc["exit_code"] = exit.code().into();
            doc["error"] = result
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .map_or(serde_json::Value::Null, Into::into);
            println!("{doc}");
        }
        Output::Text => match &result {
            Ok(c) => println!(
                "copied {} backups to {} ({} complete there already): {} objects copied, {} there already, {}",
                c.copied.len(),
                to.file.display(),
                c.present.len(),
                c.objects,
                c.objects_present,
                human_bytes(c.bytes)
            ),
            Err(e) => eprintln!("error: {e}"),
        },
    }
    exit
}
