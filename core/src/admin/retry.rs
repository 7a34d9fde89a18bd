//! `Retry`: a finished run's job again, as the next attempt of the same first run.

use crate::scheduling::NewRun;
use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Outbox};
use jobcast_protocol::{Refusal, Reply};

/// Most runs one `RetryMany` retries: each is a read of the store on the loop.
pub const MAX_RETRY_MANY: usize = 1_000;

impl<S: Store> Core<S> {
    /// Runs a finished run's job again, as the next attempt of the same first run.
    pub(crate) fn retry(
        &mut self,
        selector: &str,
        actor: &str,
        now: Now,
        out: &mut Outbox,
    ) -> Handled {
        let run_id = crate::selector::resolve_one(&self.tables.runs, &self.store, selector)?;
        if self.tables.runs.contains(&run_id) {
            return Err(CoreError::NotFinished { run_id });
        }
        let Some(old) = self.store.run(&run_id)? else {
            return Err(CoreError::NoSuchRun {
                selector: selector.to_string(),
            });
        };
        // The job as it is now, if it still exists; else as the run had it.
        let spec = self
            .tables
            .jobs
            .shared_spec(&old.job)
            .unwrap_or(old.spec.clone());
        let mut new = NewRun::of(
            spec,
            now.ms(),
            format!("retry of run {} ({}) by {actor}", old.id, old.state),
        );
        new.attempt = old.attempt + 1;
        new.first_attempt = Some(old.first_attempt.clone().unwrap_or(old.id.clone()));
        new.params = jobcast_protocol::params::carried(&new.spec.params, &old.params);
        new.priority = old.priority;
        match self.create_run(new, now, out)? {
            Some(run) => Ok(Reply::Enqueued { run }),
            None => Err(CoreError::RunNotCreated),
        }
    }

    /// Retries each run on its own: one refused does not stop the others.
    pub(crate) fn retry_many(
        &mut self,
        runs: Vec<String>,
        actor: &str,
        now: Now,
        out: &mut Outbox,
    ) -> Handled {
        if runs.is_empty() || runs.len() > MAX_RETRY_MANY {
            return Err(CoreError::BadBulk {
                max: MAX_RETRY_MANY,
                asked: runs.len(),
            });
        }
        let (mut retried, mut refused) = (Vec::new(), Vec::new());
        for run in runs {
            match self.retry(&run, actor, now, out) {
                Ok(Reply::Enqueued { run }) => retried.push(run),
                Ok(_) => {}
                Err(refusal) => {
                    if let Reply::Error { code, message } = refusal.into_reply()? {
                        refused.push(Refusal { run, code, message });
                    }
                }
            }
        }
        Ok(Reply::RetriedMany { retried, refused })
    }
}
