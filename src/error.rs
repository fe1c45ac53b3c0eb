//! The errors of running a plan, each mapped to one exit code.

use std::fmt;

use crate::exit::Exit;

/// Why a run stopped. Every message says what to check or do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something failed; the message names what and what to check.
    #[error("{0}")]
    Failed(String),
    /// Another run holds the lock.
    #[error("{0}")]
    Locked(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
    /// The plan changed since the unfinished run started.
    #[error("{0}")]
    PlanChanged(String),
    /// A backup failed verification.
    #[error("{0}")]
    Verify(String),
    /// The command line asks for something malformed (a backup id that is not one).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Failed(_) => Exit::RunFailed,
            Error::Locked(_) => Exit::Locked,
            Error::Interrupted => Exit::Interrupted,
            Error::PlanChanged(_) => Exit::Usage,
            Error::Verify(_) => Exit::VerifyFailed,
            Error::Usage(_) => Exit::Usage,
        }
    }

    pub fn failed(msg: impl fmt::Display) -> Error {
        Error::Failed(msg.to_string())
    }
}

/// Adds what was being done to an I/O error: `io(e, "writing /x")`.
pub fn io(e: std::io::Error, doing: impl fmt::Display) -> Error {
    if crate::cancel::is_cancellation(&e) {
        return Error::Interrupted;
    }
    Error::Failed(format!("{doing}: {e}"))
}

pub type Result<T> = std::result::Result<T, Error>;
