//! `ListRuns`: stored runs, newest first, filtered. Checked here, read from the store
//! once the batch is durable (away from the loop where the store allows), and answered by
//! [`listing_reply`].

use crate::limits::Limits;
use crate::run_table::RunTable;
use crate::store::Listing;
use crate::{CoreError, MAX_LIST};
use jobcast_protocol::{Reply, RunFilter, RunRecord};

/// Runs a listing returns when it names no limit.
const DEFAULT_LIMIT: u32 = 50;

/// The one rule for listing limits, whoever asks (socket or HTTP): none given (0) means
/// the default, more than [`MAX_LIST`] is refused rather than cut silently.
pub(super) fn checked(filter: RunFilter) -> Result<RunFilter, CoreError> {
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
    if let Some(output) = &filter.output {
        if output.len() > MAX_OUTPUT_SEARCH {
            return Err(CoreError::SearchTooLong {
                max: MAX_OUTPUT_SEARCH,
            });
        }
    }
    Ok(RunFilter { limit, ..filter })
}

/// The longest text a search in output looks for.
const MAX_OUTPUT_SEARCH: usize = 200;

/// What the store found, as the reply: handed the run table and the limits, which say
/// why queued runs wait.
pub(crate) fn listing_reply(
    runs: &RunTable,
    limits: Limits<'_>,
    listing: Listing,
    total: Option<u64>,
) -> Reply {
    let mut listing = listing;
    limits.mark_held(runs, &mut listing.runs);
    Reply::Runs {
        // Listings are for people: secret parameter values stay with the run.
        runs: listing
            .runs
            .into_iter()
            .map(RunRecord::with_secrets_masked)
            .collect(),
        resume_before: listing.resume_before,
        total,
    }
}

/// Whether a listing's total is known from the counts: filtered by state and the
/// caller's teams at most.
pub(crate) fn counted_filter(filter: &RunFilter) -> bool {
    let RunFilter {
        job,
        worker,
        since_ms,
        until_ms,
        text,
        linked_to,
        output,
        ..
    } = filter;
    job.is_none()
        && worker.is_none()
        && since_ms.is_none()
        && until_ms.is_none()
        && text.is_none()
        && linked_to.is_none()
        && output.is_none()
}
