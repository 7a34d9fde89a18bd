//! `SetEnabled`: a job, or every job of a pool, enabled or disabled.

use crate::job_table::JobTable;
use crate::scheduling::{save_job_state, DISABLED_POOLS};
use crate::store::Store;
use crate::{Changes, Handled, Now};
use jobcast_protocol::{names, EnableTarget, Reply};

/// Handed the job table, the store and the changes for live views.
pub(super) fn set_enabled(
    (jobs, store, changes): (&mut JobTable, &mut impl Store, &mut Changes),
    target: EnableTarget,
    enabled: bool,
    now: Now,
) -> Handled {
    match target {
        EnableTarget::Job(name) => {
            let Some(spec) = jobs.set_enabled(&name, enabled, now.ms()) else {
                return Err(jobs.unknown(&name));
            };
            store.put_job(spec)?;
            changes.jobs = true;
            save_job_state(jobs, store, changes, &name)?;
        }
        EnableTarget::Pool(pool) => {
            names::validate("pool", &pool)?;
            jobs.set_pool_enabled(&pool, enabled);
            let bytes = rmp_serde::to_vec(jobs.disabled_pools()).unwrap_or_default();
            store.put_setting(DISABLED_POOLS, &bytes)?;
        }
    }
    Ok(Reply::Ack)
}
