//! dtr-backup: declarative backups of Docker Trusted Registry (Mirantis Secure Registry 2.x).
//!
//! # Layout
//!
//! A plan file travels downward through these modules:
//!
//! - [`plan`] reads a YAML plan, reports every problem with its position
//!   ([`plan::diag`]), and resolves it into a [`plan::Plan`]. Pure: no environment, no network.
//! - [`graph`] compiles a plan into its step graph (preflight → discover → metadata → images →
//!   manifest → verify → retention) from each step kind's own description, and renders it.
//! - [`exec`] runs the graph: lock, journal of completed steps (resume), cancellation;
//!   [`events`] is what a run reports (NDJSON or human output).
//! - [`steps`] holds one file per step kind; [`verify`] checks a stored backup; [`manifest`]
//!   is the record of a backup; [`blob_store`] keeps blobs object by object, one folder per
//!   encryption identity.
//! - Adapters, which know nothing of plans' steps: [`storage`] (where backups go),
//!   [`crypto`] (OpenPGP streams, keys), [`archive`] (tar, pipes, hashing), [`docker`]
//!   (the Docker API: replicas, containers), [`ucp`] (UCP's HTTPS API), [`ops`] (hooks,
//!   notifiers and the metrics textfile around `plan apply`).
//! - Leaves everyone may use: [`error`] (kinds, exit codes), [`meter`] (counters), [`secret`] (secret references,
//!   resolved and zeroized), [`cancel`], [`clock`], [`hex`], [`failpoint`].
//! - [`cli`] holds one file per subcommand; it parses, prints, and maps outcomes to the exit
//!   codes in [`exit`]. No backup logic lives there.

pub mod archive;
pub mod blob_store;
pub mod cancel;
pub mod cli;
pub mod clock;
pub mod crypto;
pub mod docker;
pub mod dtr;
pub mod error;
pub mod events;
pub mod exec;
pub mod exit;
pub mod failpoint;
pub mod graph;
pub mod hex;
pub mod https;
pub mod manifest;
pub mod meter;
pub mod ops;
pub mod plan;
pub mod process;
pub mod progress;
pub mod secret;
pub mod snapshot;
pub mod steps;
pub mod storage;
pub mod ucp;
pub mod verify;
