//! `Retry`: a finished run's job again, as the next attempt of the same first run.

use crate::core::scheduling::NewRun;
use crate::core::{error, Core, Outbox};
use crate::store::{Store, StoreResult};
use jobcast_protocol::{ErrorCode, Reply};

impl<S: Store> Core<S> {
    /// Runs a finished run's job again, as the next attempt of the same first run.
    pub(in crate::core) fn retry(
        &mut self,
        selector: &str,
        actor: &str,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<Reply> {
        let run_id = match self.resolve_one(selector)? {
            Ok(id) => id,
            Err(reply) => return Ok(reply),
        };
        if self.runs.active.contains_key(&run_id) {
            return Ok(error(
                ErrorCode::BadRequest,
                format!("run {run_id} has not finished yet"),
            ));
        }
        let Some(old) = self.store.run(&run_id)? else {
            return Ok(error(
                ErrorCode::NotFound,
                format!("no run matches {selector:?}"),
            ));
        };
        // The job as it is now, if it still exists; else as the run had it.
        let spec = self.jobs.get(&old.job).cloned().unwrap_or(old.spec.clone());
        let mut new = NewRun::of(
            spec,
            now,
            format!("retry of run {} ({}) by {actor}", old.id, old.state),
        );
        new.attempt = old.attempt + 1;
        new.first_attempt = Some(old.first_attempt.clone().unwrap_or(old.id.clone()));
        match self.create_run(new, now, out)? {
            Some(run) => Ok(Reply::Enqueued { run: Box::new(run) }),
            None => Ok(error(ErrorCode::Internal, "the run could not be created")),
        }
    }
}
