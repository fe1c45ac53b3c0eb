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

impl Exit {
    /// Of several outcomes (one per plan), the one a many-plan invocation exits with:
    /// interrupted (130) > verification failed (5) > run failed (1) > invalid plan (3) >
    /// usage (2) > locked (4) > stale (6) > ok (0).
    pub fn worst(self, other: Exit) -> Exit {
        let rank = |e: Exit| match e {
            Exit::Interrupted => 7,
            Exit::VerifyFailed => 6,
            Exit::RunFailed => 5,
            Exit::InvalidPlan => 4,
            Exit::Usage => 3,
            Exit::Locked => 2,
            Exit::Stale => 1,
            Exit::Ok => 0,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn the_worst_of_many_outcomes_is_the_documented_one() {
        let order = [
            Exit::Ok,
            Exit::Stale,
            Exit::Locked,
            Exit::Usage,
            Exit::InvalidPlan,
            Exit::RunFailed,
            Exit::VerifyFailed,
            Exit::Interrupted,
        ];
        for (i, a) in order.iter().enumerate() {
            for (j, b) in order.iter().enumerate() {
                assert_eq!(a.worst(*b), order[i.max(j)], "{a:?} {b:?}");
            }
        }
    }
}
