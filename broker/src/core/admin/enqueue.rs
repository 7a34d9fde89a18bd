//! `Enqueue`: a run of a job, now.

use crate::core::error::listed;
use crate::core::scheduling::NewRun;
use crate::core::{Core, CoreError, Handled, Outbox};
use crate::store::Store;
use jobcast_protocol::Reply;

impl<S: Store> Core<S> {
    pub(in crate::core) fn no_such_job(&self, name: &str) -> CoreError {
        CoreError::NoSuchJob {
            name: name.to_string(),
            known: listed(self.jobs.specs.keys()),
        }
    }

    pub(in crate::core) fn enqueue(
        &mut self,
        job: &str,
        actor: &str,
        now: u64,
        out: &mut Outbox,
    ) -> Handled {
        let Some(spec) = self.jobs.specs.get(job).cloned() else {
            return Err(self.no_such_job(job));
        };
        match self.create_run(
            NewRun::of(spec, now, format!("enqueued by {actor}")),
            now,
            out,
        )? {
            Some(run) => Ok(Reply::Enqueued { run: Box::new(run) }),
            None => Err(CoreError::RunNotCreated),
        }
    }
}
