//! `Enqueue`: a run of a job, now; once per idempotency key.

use crate::schedule::derived_run_id;
use crate::scheduling::NewRun;
use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Outbox};
use jobcast_protocol::job::check_priority;
use jobcast_protocol::params::{self, Params};
use jobcast_protocol::{Reply, RunRef};

/// What an `Enqueue` asks for.
pub(crate) struct Asked<'a> {
    pub job: &'a str,
    pub key: Option<&'a str>,
    pub params: &'a Params,
    pub priority: Option<i32>,
}

/// Longest idempotency key accepted.
pub(crate) const MAX_KEY_LEN: usize = 128;

impl<S: Store> Core<S> {
    /// With a `key`, the run's id is derived from (job, key): a retried request finds
    /// the run the first one created, finished or not, and answers with it.
    pub(crate) fn enqueue(
        &mut self,
        asked: Asked<'_>,
        actor: &str,
        now: Now,
        out: &mut Outbox,
    ) -> Handled {
        let Asked {
            job,
            key,
            params,
            priority,
        } = asked;
        let Some(spec) = self.tables.jobs.shared_spec(job) else {
            return Err(self.tables.jobs.unknown(job));
        };
        let values =
            params::resolve(&spec.params, params).map_err(|error| CoreError::BadParams {
                job: job.to_string(),
                error,
            })?;
        if let Some(priority) = priority {
            check_priority(priority)?;
        }
        let mut new = NewRun::of(spec, now.ms(), format!("enqueued by {actor}"));
        new.params = values;
        new.priority = priority.unwrap_or(new.priority);
        if let Some(key) = key {
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(CoreError::BadIdempotencyKey { max: MAX_KEY_LEN });
            }
            let id = derived_run_id(&["enqueue", job, key]);
            if let Some(run) = crate::selector::find_run(&self.tables.runs, &self.store, &id)? {
                tracing::info!(job, run_id = %run.id, "enqueue repeated with the same key");
                return Ok(Reply::Enqueued {
                    run: RunRef::of(&run),
                });
            }
            new.id = Some(id);
        }
        match self.create_run(new, now, out)? {
            Some(run) => Ok(Reply::Enqueued { run }),
            None => Err(CoreError::RunNotCreated),
        }
    }
}
