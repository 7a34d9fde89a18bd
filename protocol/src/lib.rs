//! The jobcast wire protocol.
//!
//! Everything here is pure: message types, the signed envelope, replay protection, the
//! log-capping rule, the run state machine and the job file format. Callers pass the
//! current time in; nothing here reads a clock, a socket or a file.

mod aead;
pub mod envelope;
pub mod event;
pub mod id64;
pub mod job;
pub mod jobfile;
pub mod logcap;
pub mod message;
pub mod names;
pub mod params;
pub mod replay;
pub mod request;
pub mod run;
pub mod secret;
pub mod state;

pub use envelope::{Opened, Rejection, Sealer, Secret};
pub use message::*;
pub use request::{
    AdminRequest, EnableTarget, Report, Request, Resolution, SeriesOf, WorkerRequest, MAX_REPORTS,
};
pub use state::{IllegalTransition, RunState, Transition};

/// The version every envelope carries; peers with another version are refused.
pub const PROTOCOL_VERSION: u16 = 2;

/// The version of the jobcast programs, reported in pings and registrations.
pub const JOBCAST_VERSION: &str = env!("CARGO_PKG_VERSION");
