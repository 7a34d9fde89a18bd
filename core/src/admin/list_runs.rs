//! `ListRuns`: stored runs, newest first, filtered.

use crate::store::Store;
use crate::{Core, CoreError, Handled, MAX_LIST};
use jobcast_protocol::{Reply, RunFilter, RunRecord};

/// Runs a listing returns when it names no limit.
const DEFAULT_LIMIT: u32 = 50;

impl<S: Store> Core<S> {
    /// The one rule for listing limits, whoever asks (socket or HTTP): none given (0)
    /// means the default, more than [`MAX_LIST`] is refused rather than cut silently.
    pub(super) fn list_runs(&self, filter: RunFilter) -> Handled {
        let limit = match filter.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIST => n,
            n => {
                return Err(CoreError::ListTooLong {
                    limit: n,
                    max: MAX_LIST,
                })
            }
        };
        let filter = RunFilter { limit, ..filter };
        let mut listing = self.store.runs(&filter)?;
        self.mark_held(&mut listing.runs);
        Ok(Reply::Runs {
            // Listings are for people: secret parameter values stay with the run.
            runs: listing
                .runs
                .into_iter()
                .map(RunRecord::with_secrets_masked)
                .collect(),
            resume_before: listing.resume_before,
        })
    }
}
