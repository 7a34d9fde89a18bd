//! `ListRuns`: stored runs, newest first, filtered.

use crate::limits::Limits;
use crate::run_table::RunTable;
use crate::store::Store;
use crate::{CoreError, Handled, MAX_LIST};
use jobcast_protocol::{Reply, RunFilter, RunRecord};

/// Runs a listing returns when it names no limit.
const DEFAULT_LIMIT: u32 = 50;

/// Handed the store, the run table and the limits (which say why queued runs wait). The
/// one rule for listing limits, whoever asks (socket or HTTP): none given (0) means the
/// default, more than [`MAX_LIST`] is refused rather than cut silently.
pub(super) fn list_runs(
    store: &impl Store,
    runs: &RunTable,
    limits: Limits<'_>,
    filter: RunFilter,
) -> Handled {
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
    let mut listing = store.runs(&filter)?;
    limits.mark_held(runs, &mut listing.runs);
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
