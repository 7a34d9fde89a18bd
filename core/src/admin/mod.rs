//! Requests from operators (`jobcastctl` and the HTTP API), one module each; this one routes
//! them.

mod apply_jobs;
mod drain;
mod enqueue;
mod get_log;
mod kill;
mod list_jobs;
mod list_runs;
mod ping;

#[cfg(test)]
pub(crate) use get_log::slice_from;
mod retry;
mod set_enabled;
mod status;

use crate::store::Store;
use crate::Now;
use crate::{Core, Handled, ListingAsked, LogAsked, Outbox, ReloadAsked, ReplyTo};
pub use get_log::log_reply;
use jobcast_protocol::{AdminRequest, Reply};
pub(crate) use list_runs::listing_reply;

impl<S: Store> Core<S> {
    /// `None`: the answer comes later (a ping's, a reload's, a listing's).
    pub(crate) fn handle_admin(
        &mut self,
        reply_to: &ReplyTo,
        actor: &str,
        id: u64,
        request: AdminRequest,
        now_us: u64,
        out: &mut Outbox,
    ) -> Handled<Option<Reply>> {
        let now = Now::from_us(now_us);
        Ok(Some(match request {
            AdminRequest::Ping { worker, timeout_ms } => {
                let asked = ping::Asked {
                    reply_to,
                    id,
                    worker,
                    timeout_ms,
                };
                return ping::ping(
                    &self.tables.workers,
                    &mut self.tables.pings,
                    asked,
                    now_us,
                    out,
                );
            }
            AdminRequest::Kill { selectors } => self.kill_all(selectors, actor, now, out)?,
            AdminRequest::Enqueue {
                job,
                key,
                params,
                priority,
            } => {
                self.check_room_for_new_work()?;
                let asked = enqueue::Asked {
                    job: &job,
                    key: key.as_deref(),
                    params: &params,
                    priority,
                };
                self.enqueue(asked, actor, now, out)?
            }
            AdminRequest::ListRuns(filter) => {
                out.listings.push(ListingAsked {
                    to: reply_to.clone(),
                    id,
                    filter: list_runs::checked(filter)?,
                });
                return Ok(None);
            }
            AdminRequest::ListJobs => Reply::Jobs {
                jobs: self.tables.jobs.views(),
            },
            AdminRequest::NextFires { job, count } => {
                list_jobs::next_fires(&self.tables.jobs, &job, count)?
            }
            AdminRequest::GetLog { run, offset } => {
                out.logs.push(LogAsked {
                    to: reply_to.clone(),
                    id,
                    run: Box::new(get_log::find(&self.tables.runs, &self.store, &run)?),
                    offset,
                });
                return Ok(None);
            }
            AdminRequest::ApplyJobs { jobs } => {
                tracing::info!(actor, jobs = jobs.len(), "applying jobs");
                let tables = (&mut self.tables.jobs, &mut self.store, &mut self.changes);
                apply_jobs::apply(tables, jobs, now)?
            }
            AdminRequest::SetEnabled { target, enabled } => {
                tracing::info!(actor, ?target, enabled, "enable/disable");
                let tables = (&mut self.tables.jobs, &mut self.store, &mut self.changes);
                set_enabled::set_enabled(tables, target, enabled, now)?
            }
            AdminRequest::Retry { run } => {
                self.check_room_for_new_work()?;
                self.retry(&run, actor, now, out)?
            }
            AdminRequest::Status => Reply::Status(Box::new(self.status(now)?)),
            AdminRequest::Drain { worker } => {
                drain::drain(&mut self.tables.workers, &worker, actor, out)?
            }
            AdminRequest::Reload => {
                // Reading files is the server's: it answers once it has.
                out.reloads.push(ReloadAsked {
                    to: reply_to.clone(),
                    id,
                    actor: actor.to_string(),
                });
                return Ok(None);
            }
            AdminRequest::Prune { dry_run } => {
                tracing::info!(actor, dry_run, "prune");
                self.prune(dry_run, now)?
            }
        }))
    }
}
