//! The exit codes of `dtr-backup`: one table, documented in the README. CI jobs rely on it.

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done.
    Ok,
    /// A run failed (I/O, Docker, UCP, storage...). The message says what to check.
    RunFailed,
    /// The command line was wrong, or a named file cannot be read.
    Usage,
    /// The plan has errors (or warnings under `--deny-warnings`).
    InvalidPlan,
    /// Another run holds the plan's lock.
    Locked,
    /// A backup failed verification.
    VerifyFailed,
    /// `status --max-age`: a plan has no complete backup younger than that.
    Stale,
    /// Stopped by Ctrl-C or SIGTERM; the run can be resumed.
    Interrupted,
}

impl Exit {
    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::RunFailed => 1,
            Exit::Usage => 2,
            Exit::InvalidPlan => 3,
            Exit::Locked => 4,
            Exit::VerifyFailed => 5,
            Exit::Stale => 6,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}
