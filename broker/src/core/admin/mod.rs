//! Requests from operators (`jobcastctl` and the HTTP API), one module each; this one routes
//! them.

mod apply_jobs;
mod drain;
mod enqueue;
mod get_log;
mod kill;
mod list_runs;
mod ping;
mod retry;
mod status;

use crate::core::{error, ms, Core, Outbox, PeerId};
use crate::store::{Store, StoreResult};
use jobcast_protocol::{ErrorCode, Reply, Request};

/// Names for an error message: "a, b, c", or "none".
fn listed<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl<S: Store> Core<S> {
    pub(in crate::core) fn handle_admin(
        &mut self,
        peer: &PeerId,
        actor: &str,
        id: u64,
        request: Request,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<Option<Reply>> {
        let now = ms(now_us);
        Ok(Some(match request {
            Request::Ping { worker, timeout_ms } => {
                let asked = ping::Asked {
                    peer,
                    id,
                    worker,
                    timeout_ms,
                };
                return Ok(self.ping(asked, now_us, out));
            }
            Request::Kill { selectors } => self.kill_all(selectors, actor, now, out)?,
            Request::Enqueue { job } => self.enqueue(&job, actor, now, out)?,
            Request::ListRuns(filter) => self.list_runs(filter)?,
            Request::ListJobs => Reply::Jobs {
                jobs: self.job_views(),
            },
            Request::GetLog { run, offset } => self.get_log(&run, offset)?,
            Request::ApplyJobs { jobs } => {
                tracing::info!(actor, jobs = jobs.len(), "applying jobs");
                self.apply(jobs, now)?
            }
            Request::SetEnabled { target, enabled } => {
                tracing::info!(actor, ?target, enabled, "enable/disable");
                self.set_enabled(target, enabled, now)?
            }
            Request::Retry { run } => self.retry(&run, actor, now, out)?,
            Request::Status => Reply::Status(Box::new(self.status(now)?)),
            Request::Drain { worker } => self.drain(&worker, actor, out),
            _ => error(ErrorCode::BadRequest, "not an admin request"),
        }))
    }

    pub(in crate::core) fn unknown_worker(&self, worker: &str) -> Reply {
        error(
            ErrorCode::NotFound,
            format!(
                "no connected worker named {worker:?} (connected: {})",
                listed(self.sessions.keys())
            ),
        )
    }
}
