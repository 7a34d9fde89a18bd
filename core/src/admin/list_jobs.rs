//! `ListJobs`: every job with its schedule state; `NextFires`: when one fires next.

use crate::store::Store;
use crate::{Core, Handled};
use jobcast_protocol::{JobSpec, JobView, Reply};

/// Most fire times one `NextFires` answers with.
const MAX_NEXT_FIRES: u32 = 100;

impl<S: Store> Core<S> {
    /// The next `count` ticks of `job` that start runs (excluded ones skipped).
    pub(crate) fn next_fires(&self, job: &str, count: u32) -> Handled<Reply> {
        let Some(spec) = self.jobs.spec(job) else {
            return Err(self.no_such_job(job));
        };
        let mut times_ms = Vec::new();
        let schedule = self.jobs.schedule(job);
        if let (Some(schedule), Some(mut next), true) = (
            schedule,
            self.jobs.next_fire(job),
            self.jobs.is_active(spec),
        ) {
            let wanted = count.min(MAX_NEXT_FIRES) as usize;
            // Bounded however much of the schedule an exclusion window covers.
            for _ in 0..wanted * 20 {
                if times_ms.len() == wanted {
                    break;
                }
                if !schedule.is_excluded(next) {
                    times_ms.push(next);
                }
                match schedule.next_after(next) {
                    Some(after) => next = after,
                    None => break,
                }
            }
        }
        Ok(Reply::NextFires {
            job: Box::new(self.view_of(spec)),
            times_ms,
        })
    }

    pub(crate) fn job_views(&self) -> Vec<JobView> {
        self.jobs.specs().map(|spec| self.view_of(spec)).collect()
    }

    /// The views of the named jobs that exist.
    pub(crate) fn job_views_of<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<JobView> {
        names
            .filter_map(|name| self.jobs.spec(name))
            .map(|spec| self.view_of(spec))
            .collect()
    }

    fn view_of(&self, spec: &JobSpec) -> JobView {
        JobView {
            spec: spec.clone(),
            state: self.jobs.state(&spec.name).cloned().unwrap_or_default(),
            next_fire_ms: self.jobs.next_fire(&spec.name),
            active: self.jobs.is_active(spec),
        }
    }
}
