//! `ApplyJobs`: creates and updates jobs from a jobs file.

use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled};
use jobcast_protocol::{jobfile, JobSpec, JobState, Reply};
use std::collections::BTreeSet;

impl<S: Store> Core<S> {
    pub(crate) fn apply(&mut self, jobs: Vec<JobSpec>, now: Now) -> Handled {
        let mut seen = BTreeSet::new();
        for job in &jobs {
            jobfile::validate(job).map_err(|problem| CoreError::InvalidJob {
                job: job.name.clone(),
                problem,
            })?;
            if !seen.insert(job.name.clone()) {
                return Err(CoreError::DefinedTwice {
                    job: job.name.clone(),
                });
            }
        }
        self.jobs.check(&jobs)?;
        let (mut created, mut updated, mut unchanged) = (vec![], vec![], vec![]);
        for job in jobs {
            let name = job.name.clone();
            match self.jobs.spec(&name) {
                Some(old) if *old == job => {
                    unchanged.push(name);
                    continue;
                }
                Some(old) => {
                    if old.schedule != job.schedule {
                        // A new schedule starts from now: no catch-up under it.
                        let state = self.jobs.state_entry(&name);
                        state.last_tick_ms = state.last_tick_ms.max(now.ms());
                    }
                    updated.push(name.clone());
                }
                None => {
                    *self.jobs.state_entry(&name) = JobState {
                        created_at_ms: now.ms(),
                        last_tick_ms: now.ms(),
                        ..Default::default()
                    };
                    created.push(name.clone());
                }
            }
            self.store.put_job(&job)?;
            self.changes.jobs = true;
            self.save_job_state(&name)?;
            self.jobs.put_spec(job);
        }
        Ok(Reply::Applied {
            created,
            updated,
            unchanged,
        })
    }
}
