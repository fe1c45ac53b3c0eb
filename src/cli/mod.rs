//! The command line: one file per subcommand. Parsing and printing only.

mod backups_copy;
mod backups_list;
mod backups_prune;
mod plan_apply;
mod plan_show;
mod plan_unlock;
mod plan_validate;
mod report;
mod restore;
mod schema;
mod status;
mod verify;

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};

use crate::exit::Exit;

/// Declarative backups of Docker Trusted Registry.
#[derive(Debug, Parser)]
#[command(name = "dtr-backup", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, show and run backup plans.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// List the backups of a plan.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Prove a stored backup whole, decryptable and restorable (exit 5 when not).
    Verify(verify::Args),
    /// Bring a backup's image content back into a folder, or drill it (exit 5 when the backup
    /// does not restore whole).
    Restore(restore::Args),
    /// Each plan's newest backup, last run and lock (exit 6 when older than --max-age).
    Status(status::Args),
    /// Print the JSON Schema of plan files.
    Schema,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// List the complete backups at the plan's destination.
    List(backups_list::Args),
    /// Apply the plan's retention now (under the plan's lock).
    Prune(backups_prune::Args),
    /// Copy complete backups to another plan's destination (a second copy), each object
    /// checked on the way; resumable; a second copy copies nothing.
    Copy(backups_copy::Args),
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Check plan files offline: no credentials, no network, no Docker.
    Validate(plan_validate::Args),
    /// Print the step graph a plan compiles to.
    Show(plan_show::Args),
    /// Run a plan (resumes an unfinished run of it).
    Apply(plan_apply::Args),
    /// Remove a lock left by a run that no longer exists.
    Unlock(plan_unlock::Args),
}

/// Machine-readable or human output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Parses the command line, runs it, and returns the exit code.
pub fn main() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
        }
    };
    run(cli)
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Plan(PlanCommand::Validate(args)) => plan_validate::run(&args),
        Command::Plan(PlanCommand::Show(args)) => plan_show::run(&args),
        Command::Plan(PlanCommand::Apply(args)) => plan_apply::run(&args),
        Command::Plan(PlanCommand::Unlock(args)) => plan_unlock::run(&args),
        Command::Backups(BackupsCommand::List(args)) => backups_list::run(&args),
        Command::Backups(BackupsCommand::Prune(args)) => backups_prune::run(&args),
        Command::Backups(BackupsCommand::Copy(args)) => backups_copy::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Restore(args) => restore::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Schema => schema::run(),
    }
}

/// The miette handler for diagnostics: colour only on a terminal without `NO_COLOR`.
pub fn diagnostic_handler() -> miette::GraphicalReportHandler {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let theme = if colour {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    miette::GraphicalReportHandler::new_themed(theme).with_width(100)
}

/// The async runtime for commands that run steps: two workers (the machine's cores), blocking
/// pipeline stages on their own threads.
pub fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            Exit::RunFailed
        })
}

/// Ctrl-C and SIGTERM cancel the run: it stops promptly and stays resumable. A second one
/// ends the process at once (exit 130): the journal is kept, and the lock, left by a process
/// that no longer runs, is taken over by the next run on this host.
pub fn cancel_on_signals(cancel: crate::cancel::Cancel) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Not `eprintln!`: it panics on a closed stderr, and this must exit whatever happens.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"error: a second signal: stopping now. Run the same command again to resume; the lock left behind is taken over by the next run in this host's same kernel and pid namespace, else remove it with `dtr-backup plan unlock`\n",
        );
        std::process::exit(i32::from(Exit::Interrupted.code()));
    });
}

/// Loads a plan for a command that needs a valid one. Diagnostics (warnings included) go to
/// stderr; on errors the caller gets the exit code to return.
/// Loads every plan of a many-plan command; if one cannot be loaded, none is returned (the
/// worst exit), so that nothing runs on part of them.
pub fn load_plans(paths: &[std::path::PathBuf]) -> Result<Vec<crate::plan::Plan>, Exit> {
    let mut plans = Vec::new();
    let mut worst = Exit::Ok;
    for path in paths {
        match load_plan(path) {
            Ok(p) => plans.push(p),
            Err(exit) => worst = worst.worst(exit),
        }
    }
    if worst != Exit::Ok {
        if paths.len() > 1 {
            eprintln!("error: nothing was done: every plan must be valid first");
        }
        return Err(worst);
    }
    Ok(plans)
}

pub fn load_plan(path: &std::path::Path) -> Result<crate::plan::Plan, Exit> {
    let loaded = match crate::plan::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: cannot read the plan {}: {e}", path.display());
            return Err(Exit::Usage);
        }
    };
    if !loaded.report.diags.is_empty() {
        eprint!(
            "{}",
            crate::plan::diag::render_all(&loaded.report, &diagnostic_handler())
        );
    }
    loaded.plan.ok_or_else(|| {
        eprintln!(
            "error: {} is not a valid plan; `dtr-backup plan validate {}` lists the problems",
            path.display(),
            path.display()
        );
        Exit::InvalidPlan
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
