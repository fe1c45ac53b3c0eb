//! `dtr-backup plan validate PLAN...`: every problem of every plan, offline.

use std::path::PathBuf;

use serde::Serialize;

use super::Output;
use crate::exit::Exit;
use crate::plan::diag::{DiagJson, render_all};
use crate::plan::{self, FileReport, Severity};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Plan files to check.
    #[arg(required = true, value_name = "PLAN")]
    pub plans: Vec<PathBuf>,
    /// Fail (exit 3) on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
    /// `json` prints one JSON document on stdout, whatever the outcome.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// The document printed by `--output json` (format_version 1).
#[derive(Serialize)]
struct JsonReport {
    format_version: u32,
    valid: bool,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<DiagJson>,
}

pub fn run(args: &Args) -> Exit {
    let mut reports: Vec<FileReport> = Vec::new();
    let mut unreadable: Vec<DiagJson> = Vec::new();
    for path in &args.plans {
        match plan::load(path) {
            Ok(loaded) => reports.push(loaded.report),
            Err(e) => unreadable.push(DiagJson {
                severity: Severity::Error,
                code: "plan::unreadable",
                message: format!("cannot read {}: {e}", path.display()),
                file: path.display().to_string(),
                line: 0,
                column: 0,
                label: String::new(),
                help: Some("check the path and its permissions".into()),
            }),
        }
    }
    let errors = reports.iter().map(|r| r.errors().count()).sum::<usize>() + unreadable.len();
    let warnings = reports.iter().map(|r| r.warnings().count()).sum::<usize>();
    let valid = errors == 0 && !(args.deny_warnings && warnings > 0);

    match args.output {
        Output::Json => {
            let mut diagnostics = unreadable.clone();
            diagnostics.extend(reports.iter().flat_map(FileReport::json));
            let doc = JsonReport {
                format_version: 1,
                valid,
                errors,
                warnings,
                diagnostics,
            };
            match serde_json::to_string_pretty(&doc) {
                Ok(text) => println!("{text}"),
                Err(_) => println!("{{\"format_version\":1,\"valid\":false,\"diagnostics\":[]}}"),
            }
        }
        Output::Text => {
            let handler = super::diagnostic_handler();
            for d in &unreadable {
                eprintln!("error: {}", d.message);
            }
            for report in &reports {
                eprint!("{}", render_all(report, &handler));
            }
            for report in &reports {
                println!("{}", summary(report, args.deny_warnings));
            }
        }
    }

    if !unreadable.is_empty() && reports.iter().all(|r| !r.has_errors()) {
        Exit::Usage
    } else if valid {
        Exit::Ok
    } else {
        Exit::InvalidPlan
    }
}

fn summary(report: &FileReport, deny_warnings: bool) -> String {
    let e = report.errors().count();
    let w = report.warnings().count();
    let verdict = if e > 0 || (deny_warnings && w > 0) {
        "invalid"
    } else {
        "valid"
    };
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}: {verdict} ({}, {})",
        report.file.display(),
        plural(e, "error"),
        plural(w, "warning")
    )
}
