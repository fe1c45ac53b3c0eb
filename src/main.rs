//! `dtr-backup`: parse the command line, run, exit with the code from `exit.rs`.

fn main() -> std::process::ExitCode {
    dtr_backup::cli::main().into()
}
