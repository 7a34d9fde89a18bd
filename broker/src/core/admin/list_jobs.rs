//! `ListJobs`: every job with its schedule state.

use crate::core::Core;
use crate::store::Store;
use jobcast_protocol::{JobSpec, JobView};

impl<S: Store> Core<S> {
    pub(in crate::core) fn job_views(&self) -> Vec<JobView> {
        self.jobs
            .specs
            .values()
            .map(|spec| self.view_of(spec))
            .collect()
    }

    /// The views of the named jobs that exist.
    pub(in crate::core) fn job_views_of<'a>(
        &self,
        names: impl Iterator<Item = &'a String>,
    ) -> Vec<JobView> {
        names
            .filter_map(|name| self.jobs.specs.get(name))
            .map(|spec| self.view_of(spec))
            .collect()
    }

    fn view_of(&self, spec: &JobSpec) -> JobView {
        JobView {
            spec: spec.clone(),
            state: self
                .jobs
                .states
                .get(&spec.name)
                .cloned()
                .unwrap_or_default(),
            next_fire_ms: self.jobs.next_fire.get(&spec.name),
            active: self.jobs.is_active(spec),
        }
    }
}
