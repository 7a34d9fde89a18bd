//! `Enqueue`: a run of a job, now.

use super::listed;
use crate::core::scheduling::NewRun;
use crate::core::{error, Core, Outbox};
use crate::store::{Store, StoreResult};
use jobcast_protocol::{ErrorCode, Reply};

impl<S: Store> Core<S> {
    pub(in crate::core) fn enqueue(
        &mut self,
        job: &str,
        actor: &str,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<Reply> {
        let Some(spec) = self.jobs.get(job).cloned() else {
            return Ok(error(
                ErrorCode::NotFound,
                format!("no job named {job:?} (jobs: {})", listed(self.jobs.keys())),
            ));
        };
        match self.create_run(
            NewRun::of(spec, now, format!("enqueued by {actor}")),
            now,
            out,
        )? {
            Some(run) => Ok(Reply::Enqueued { run: Box::new(run) }),
            None => Ok(error(ErrorCode::Internal, "the run could not be created")),
        }
    }
}
