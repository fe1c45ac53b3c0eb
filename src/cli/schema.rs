//! `dtr-backup schema`: the JSON Schema of plan files.

use crate::exit::Exit;

/// The schema as pretty JSON, ending in a newline (the form of `schemas/plan.schema.json`).
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(crate::plan::RawPlan);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

pub fn run() -> Exit {
    print!("{}", schema_json());
    Exit::Ok
}
