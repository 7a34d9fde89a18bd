//! `SetEnabled`: a job, or every job of a pool, enabled or disabled.

use crate::scheduling::DISABLED_POOLS;
use crate::store::Store;
use crate::{Core, Handled};
use jobcast_protocol::{names, EnableTarget, Reply};

impl<S: Store> Core<S> {
    pub(crate) fn set_enabled(&mut self, target: EnableTarget, enabled: bool, now: u64) -> Handled {
        match target {
            EnableTarget::Job(name) => {
                let Some(spec) = self.jobs.specs.get_mut(&name) else {
                    return Err(self.no_such_job(&name));
                };
                spec.enabled = enabled;
                let spec = spec.clone();
                self.store.put_job(&spec)?;
                self.changes.jobs = true;
                let state = self.jobs.states.entry(name.clone()).or_default();
                if enabled {
                    state.auto_disabled = None;
                    state.consecutive_failures = 0;
                    // Ticks that passed while disabled are not caught up.
                    state.last_tick_ms = state.last_tick_ms.max(now);
                }
                self.save_job_state(&name)?;
                self.jobs.compile(&name);
            }
            EnableTarget::Pool(pool) => {
                names::validate("pool", &pool)?;
                if enabled {
                    self.jobs.disabled_pools.remove(&pool);
                } else {
                    self.jobs.disabled_pools.insert(pool);
                }
                let bytes = rmp_serde::to_vec(&self.jobs.disabled_pools).unwrap_or_default();
                self.store.put_setting(DISABLED_POOLS, &bytes)?;
            }
        }
        Ok(Reply::Ack)
    }
}
