//! `ListRuns`: stored runs, newest first, filtered.

use crate::core::{Core, MAX_LIST};
use crate::store::{Store, StoreResult};
use jobcast_protocol::{Reply, RunFilter};

/// Runs a listing returns when it names no limit.
const DEFAULT_LIMIT: u32 = 50;

impl<S: Store> Core<S> {
    pub(super) fn list_runs(&self, filter: RunFilter) -> StoreResult<Reply> {
        let filter = RunFilter {
            limit: match filter.limit {
                0 => DEFAULT_LIMIT,
                n => n.min(MAX_LIST),
            },
            ..filter
        };
        Ok(Reply::Runs {
            runs: self.store.runs(&filter)?,
        })
    }
}
