//! The jobcast worker: claims runs from the broker and executes them as child processes.
//!
//! A library so that the binary, the tests and the bench share one copy of what they all
//! need (the `/proc` helpers above all); the daemon itself is `jobcast-worker`.

pub mod cgroup;
pub mod config;
mod definitions;
pub mod process;
pub mod procfs;
mod reporter;
mod runner;
pub mod scripts;
pub mod session;
mod spawn;
mod start_error;
pub mod start_ledger;
mod state;
mod worker_env;
