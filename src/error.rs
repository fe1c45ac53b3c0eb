//! The errors of running a plan: each a kind a caller can match on, each mapped to one exit
//! code, each message saying what to check or do next.
//!
//! The kinds follow what an operator acts on: the Docker engine, the `dtr backup` container,
//! UCP, S3, keys, credentials, the image source, the replica, what is stored. Tests assert the
//! kind; the message is for the person reading it.

use std::fmt;

use crate::exit::Exit;

/// Why a run stopped.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    /// Reading or writing a file, a stored object or a stream failed.
    #[error("{doing}: {source}")]
    #[diagnostic(code(dtr_backup::io))]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    /// The Docker engine could not be reached, or refused or failed a request.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::docker))]
    Docker(String),
    /// The `dtr backup` container failed or wrote something that is not a DTR backup.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::container))]
    Container(String),
    /// UCP could not be reached, or refused the login.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::ucp))]
    Ucp(String),
    /// An S3 request failed (the destination or the image storage).
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::s3))]
    S3(String),
    /// A key, a passphrase or an encrypted stream is not usable.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::crypto))]
    Crypto(String),
    /// A credential reference (`env:`, `file:`, `command:`) could not be resolved.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::secret))]
    Secret(String),
    /// The image source is not what the plan says: missing layout, empty, not mounted,
    /// damaged.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::source))]
    Source(String),
    /// The replica rules: none found, the named one missing, a choice needed, a change since
    /// the last backup, a version that does not match the plan's image.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::replica))]
    Replica(String),
    /// Something stored (the run state, a lock record, a pending manifest) is missing or
    /// unreadable.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::stored))]
    Stored(String),
    /// Refused to protect something: another run's lock, a lock that changed underneath.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::refused))]
    Refused(String),
    /// A hook of the plan (`hooks.before`, `hooks.after`) failed or timed out.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::hook))]
    Hook(String),
    /// A broken invariant: a worker thread panicked, a dry run tried to write. A bug.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::internal))]
    Internal(String),
    /// Another run holds the lock.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::locked))]
    Locked(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; run the same command again to resume")]
    #[diagnostic(code(dtr_backup::interrupted))]
    Interrupted,
    /// The plan changed since the unfinished run started.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::plan_changed))]
    PlanChanged(String),
    /// A backup failed verification.
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::verify))]
    Verify(String),
    /// The command line asks for something malformed (a backup id that is not one).
    #[error("{0}")]
    #[diagnostic(code(dtr_backup::usage))]
    Usage(String),
}

macro_rules! constructors {
    ($($name:ident => $variant:ident),* $(,)?) => {
        $(
            #[doc = concat!("An [`Error::", stringify!($variant), "`] with this message.")]
            pub fn $name(msg: impl fmt::Display) -> Error {
                Error::$variant(msg.to_string())
            }
        )*
    };
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Locked(_) => Exit::Locked,
            Error::Interrupted => Exit::Interrupted,
            Error::PlanChanged(_) | Error::Usage(_) => Exit::Usage,
            Error::Verify(_) => Exit::VerifyFailed,
            Error::Io { .. }
            | Error::Docker(_)
            | Error::Container(_)
            | Error::Ucp(_)
            | Error::S3(_)
            | Error::Crypto(_)
            | Error::Secret(_)
            | Error::Source(_)
            | Error::Replica(_)
            | Error::Stored(_)
            | Error::Refused(_)
            | Error::Hook(_)
            | Error::Internal(_) => Exit::RunFailed,
        }
    }

    constructors! {
        docker => Docker,
        hook => Hook,
        container => Container,
        ucp => Ucp,
        s3 => S3,
        crypto => Crypto,
        secret => Secret,
        source => Source,
        replica => Replica,
        stored => Stored,
        refused => Refused,
        internal => Internal,
    }

    /// Says what was being done, in front of the message: `"{doing}: {message}"`. The kind
    /// stays. Errors that are about the run as a whole (the lock, an interruption, a changed
    /// plan, verification, usage) pass unchanged.
    pub fn context(self, doing: impl fmt::Display) -> Error {
        let pre = |m: String| format!("{doing}: {m}");
        match self {
            Error::Io { doing: d, source } => Error::Io {
                doing: pre(d),
                source,
            },
            Error::Docker(m) => Error::Docker(pre(m)),
            Error::Container(m) => Error::Container(pre(m)),
            Error::Ucp(m) => Error::Ucp(pre(m)),
            Error::S3(m) => Error::S3(pre(m)),
            Error::Crypto(m) => Error::Crypto(pre(m)),
            Error::Secret(m) => Error::Secret(pre(m)),
            Error::Source(m) => Error::Source(pre(m)),
            Error::Replica(m) => Error::Replica(pre(m)),
            Error::Stored(m) => Error::Stored(pre(m)),
            Error::Refused(m) => Error::Refused(pre(m)),
            Error::Internal(m) => Error::Internal(pre(m)),
            Error::Hook(m) => Error::Hook(pre(m)),
            other @ (Error::Locked(_)
            | Error::Interrupted
            | Error::PlanChanged(_)
            | Error::Verify(_)
            | Error::Usage(_)) => other,
        }
    }
}

/// Adds what was being done to an I/O error: `io(e, "writing /x")`.
pub fn io(e: std::io::Error, doing: impl fmt::Display) -> Error {
    if crate::cancel::is_cancellation(&e) {
        return Error::Interrupted;
    }
    Error::Io {
        doing: doing.to_string(),
        source: e,
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_prefixes_the_message() {
        let e = Error::docker("no such image").context("the metadata backup failed");
        assert!(matches!(e, Error::Docker(_)), "{e:?}");
        assert_eq!(e.to_string(), "the metadata backup failed: no such image");

        let e = io(std::io::Error::other("disk full"), "writing x").context("copying");
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(e.to_string(), "copying: writing x: disk full");

        let e = Error::Locked("held by run r".into()).context("copying");
        assert_eq!(e.to_string(), "held by run r");
    }

    #[test]
    fn run_failures_exit_1_and_the_others_keep_their_codes() {
        assert_eq!(Error::source("empty").exit(), Exit::RunFailed);
        assert_eq!(Error::internal("bug").exit(), Exit::RunFailed);
        assert_eq!(Error::Interrupted.exit(), Exit::Interrupted);
        assert_eq!(Error::Usage(String::new()).exit(), Exit::Usage);
        assert_eq!(Error::Verify(String::new()).exit(), Exit::VerifyFailed);
    }
}
