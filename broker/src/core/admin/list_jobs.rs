//! `ListJobs`: every job with its schedule state.

use crate::core::Core;
use crate::store::Store;
use jobcast_protocol::JobView;

impl<S: Store> Core<S> {
    pub(in crate::core) fn job_views(&self) -> Vec<JobView> {
        self.jobs
            .specs
            .values()
            .map(|spec| JobView {
                spec: spec.clone(),
                state: self
                    .jobs
                    .states
                    .get(&spec.name)
                    .cloned()
                    .unwrap_or_default(),
                next_fire_ms: self.jobs.next_fire.get(&spec.name),
                active: self.jobs.is_active(spec),
            })
            .collect()
    }
}
