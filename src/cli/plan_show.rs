//! `dtr-backup plan show PLAN`: the step graph a plan compiles to.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::exit::Exit;
use crate::graph;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(args: &Args) -> Exit {
    let plan = match super::load_plan(&args.plan) {
        Ok(plan) => plan,
        Err(exit) => return exit,
    };
    let graph = graph::compile(&plan);
    let text = match args.format {
        Format::Text => graph::render_text(&graph),
        Format::Json => graph::render_json(&graph) + "\n",
        Format::Dot => graph::render_dot(&graph),
    };
    print!("{text}");
    Exit::Ok
}
