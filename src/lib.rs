//! dtr-backup: declarative backups of Docker Trusted Registry (Mirantis Secure Registry 2.x).
//!
//! # Layout
//!
//! A plan file travels downward through these modules:
//!
//! - [`plan`] reads a YAML plan, reports every problem with its position
//!   ([`plan::diag`]), and resolves it into a [`plan::Plan`]. Pure: no environment, no network.
//! - [`graph`] compiles a plan into its step graph (preflight → discover → metadata → images →
//!   manifest → verify → retention) and renders it.
//! - [`cli`] holds one file per subcommand; it parses, prints, and maps outcomes to the exit
//!   codes in [`exit`]. No backup logic lives there.

pub mod cli;
pub mod exit;
pub mod graph;
pub mod plan;
