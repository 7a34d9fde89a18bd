//! Finding the run an operator means: a full id, a unique prefix of any stored run, or a
//! unique substring of an unfinished or recently ended one; looked up among the unfinished
//! runs first (the run table), then in the store.

use crate::run_table::RunTable;
use crate::store::{Store, StoreResult};
use crate::{CoreError, Handled, MAX_CANDIDATES};
use jobcast_protocol::{KillOutcome, RunRecord};

/// A run by its exact id: unfinished ones from the table, the rest from the store.
pub(crate) fn find_run(
    runs: &RunTable,
    store: &impl Store,
    id: &str,
) -> StoreResult<Option<RunRecord>> {
    match runs.get(id) {
        Some(run) => Ok(Some(run.clone())),
        None => store.run(id),
    }
}

/// Resolves a full id, a unique prefix (of any stored run) or a unique substring (of
/// an unfinished or recently ended run) to one run id. Each step is a lookup, a range
/// or a bounded walk: no step reads every stored id.
pub(crate) fn resolve(
    runs: &RunTable,
    store: &impl Store,
    selector: &str,
) -> StoreResult<Result<String, KillOutcome>> {
    if runs.contains(selector) || store.run(selector)?.is_some() {
        return Ok(Ok(selector.to_string()));
    }
    let mut candidates = store.run_ids_with_prefix(selector, MAX_CANDIDATES + 1)?;
    if candidates.is_empty() {
        candidates = runs.ids_containing(selector, MAX_CANDIDATES + 1);
    }
    Ok(match candidates.len() {
        0 => Err(KillOutcome::NotFound {
            selector: selector.to_string(),
        }),
        1 => Ok(candidates.remove(0)),
        _ => {
            candidates.truncate(MAX_CANDIDATES);
            Err(KillOutcome::Ambiguous {
                selector: selector.to_string(),
                candidates,
            })
        }
    })
}

/// Like [`resolve`], with the outcome as a refusal.
pub(crate) fn resolve_one(runs: &RunTable, store: &impl Store, selector: &str) -> Handled<String> {
    resolve(runs, store, selector)?.map_err(|outcome| match outcome {
        KillOutcome::Ambiguous {
            selector,
            candidates,
        } => CoreError::Ambiguous {
            selector,
            candidates,
        },
        _ => CoreError::NoSuchRun {
            selector: selector.to_string(),
        },
    })
}
