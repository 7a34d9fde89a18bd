//! The jobcast broker as a library: the pure core, the store, and the server around them.

pub mod config;
pub mod core;
pub mod deadline;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod replay_floors;
pub mod schedule;
pub mod server;
pub mod store;
pub mod transport;
