//! Integration tests: one binary, one module per area. They drive the real `dtr-backup`
//! binary where the outcome is what a user sees, and the library where a table of cases is
//! clearer.

mod apply;
mod common;
mod diagnostics;
mod docker;
mod dtr_api;
mod fleet;
mod fuzz;
mod operations;
mod registry;
mod restore;
mod s3;
mod schema;
mod show;
mod ucp;
mod validate;
mod verify;
