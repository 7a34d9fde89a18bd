//! `ApplyJobs`: creates and updates jobs from a jobs file.

use crate::job_table::JobTable;
use crate::scheduling::save_job_state;
use crate::store::Store;
use crate::{Changes, CoreError, Handled, Now};
use jobcast_protocol::{jobfile, JobSpec, JobState, Reply};
use std::collections::BTreeSet;

/// Handed the job table, the store and the changes for live views: every job checked
/// first (nothing is changed when one is wrong), then each created or updated.
pub(super) fn apply(
    (table, store, changes): (&mut JobTable, &mut impl Store, &mut Changes),
    jobs: Vec<JobSpec>,
    now: Now,
) -> Handled {
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
    table.check(&jobs)?;
    let (mut created, mut updated, mut unchanged) = (vec![], vec![], vec![]);
    for job in jobs {
        let name = job.name.clone();
        match table.spec(&name) {
            Some(old) if *old == job => {
                unchanged.push(name);
                continue;
            }
            Some(old) => {
                if old.schedule != job.schedule {
                    // A new schedule starts from now: no catch-up under it.
                    let state = table.state_entry(&name);
                    state.last_tick_ms = state.last_tick_ms.max(now.ms());
                }
                updated.push(name.clone());
            }
            None => {
                *table.state_entry(&name) = JobState {
                    created_at_ms: now.ms(),
                    last_tick_ms: now.ms(),
                    ..Default::default()
                };
                created.push(name.clone());
            }
        }
        store.put_job(&job)?;
        changes.jobs = true;
        save_job_state(table, store, changes, &name)?;
        table.put_spec(job);
    }
    Ok(Reply::Applied {
        created,
        updated,
        unchanged,
    })
}
