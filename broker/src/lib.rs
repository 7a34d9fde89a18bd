//! The jobcast broker as a library: the shells around the pure core (`jobcast-core`): the
//! store engines, sockets, HTTP, metrics, reload and the server loop.

pub mod config;
pub mod connection_ends;
pub mod deadline;
pub mod election;
pub mod handshakes;
pub mod http;
pub mod leadership;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod process_stats;
pub mod reload;
pub mod replay_floors;
pub mod server;
pub mod sockets;
pub mod store;
pub mod subscriptions;
