//! `SetEnabled`: a job, or every job of a pool, enabled or disabled.

use crate::scheduling::DISABLED_POOLS;
use crate::store::Store;
use crate::Now;
use crate::{Core, Handled};
use jobcast_protocol::{names, EnableTarget, Reply};

impl<S: Store> Core<S> {
    pub(crate) fn set_enabled(&mut self, target: EnableTarget, enabled: bool, now: Now) -> Handled {
        match target {
            EnableTarget::Job(name) => {
                let Some(spec) = self.jobs.set_enabled(&name, enabled, now.ms()) else {
                    return Err(self.no_such_job(&name));
                };
                self.store.put_job(spec)?;
                self.changes.jobs = true;
                self.save_job_state(&name)?;
            }
            EnableTarget::Pool(pool) => {
                names::validate("pool", &pool)?;
                self.jobs.set_pool_enabled(&pool, enabled);
                let bytes = rmp_serde::to_vec(self.jobs.disabled_pools()).unwrap_or_default();
                self.store.put_setting(DISABLED_POOLS, &bytes)?;
            }
        }
        Ok(Reply::Ack)
    }
}
