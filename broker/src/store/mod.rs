//! Durable state: the broker's records in an embedded key-value engine (fjall; sled
//! before). The [`Store`] trait they implement is the core's (`jobcast_core::store`).
//!
//! Writes are applied at once but only become durable at [`Store::flush`]; the server
//! calls it once per batch of requests (group commit) before it answers any of them.

pub mod committer;
mod engine;
mod fjall_engine;
mod fjall_journal;
pub mod integrity;
mod kv;
mod location;
mod memtable_keeper;
pub mod postgres;
mod run_codec;
mod run_ids;
mod sled_engine;
mod unfinished;
mod wal;

pub use fjall_engine::FjallEngine;
pub use jobcast_core::store::{
    list_newest_first, FlushDone, Listing, MemoryStore, Store, StoreError, StoreResult,
    LISTING_SCAN,
};
pub use kv::KvStore;
pub use location::{open_in, repair_in, BrokerStore, RepairReport, DEFAULT_CACHE_BYTES};
pub use sled_engine::SledEngine;

/// The records in sled, as brokers before the switch to fjall kept them.
pub type SledStore = KvStore<SledEngine>;

impl SledStore {
    /// A store that lives in a temporary directory, for tests.
    pub fn temporary() -> StoreResult<SledStore> {
        KvStore::with_engine(SledEngine::temporary()?)
    }
}

/// A file operation that failed, naming the file.
fn io_error(what: &'static str, path: &std::path::Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A number kept as a setting (8 bytes, big-endian), if it is there; `what` names it
/// when its bytes are not a number.
fn setting_u64(bytes: Option<Vec<u8>>, what: &'static str) -> StoreResult<Option<u64>> {
    bytes
        .map(|bytes| {
            let number: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt {
                    what,
                    detail: format!("{} bytes", bytes.len()),
                })?;
            Ok(u64::from_be_bytes(number))
        })
        .transpose()
}

#[cfg(test)]
mod tests;
