//! Requests from operators (`jobcastctl` and the HTTP API), one module each; this one routes
//! them.

mod alerts;
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
mod series;
mod set_enabled;
mod status;

use crate::audit::Change;
use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{
    BackupAsked, Core, CoreError, Handled, ListingAsked, LogAsked, Outbox, ReloadAsked, ReplyTo,
    Scope,
};
pub use get_log::log_reply;
use jobcast_protocol::{AdminRequest, EnableTarget, KillOutcome, Reply};
pub(crate) use list_runs::{counted_filter, listing_reply};
pub(crate) use status::oldest_queued;

/// Who asks: recorded as the actor of what they change, limited to the scope's teams.
#[derive(Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub actor: &'a str,
    pub scope: &'a Scope,
}

impl<S: Store> Core<S> {
    /// `None`: the answer comes later (a ping's, a reload's, a listing's).
    pub(crate) fn handle_admin(
        &mut self,
        reply_to: &ReplyTo,
        caller: Caller<'_>,
        id: u64,
        request: AdminRequest,
        now_us: u64,
        out: &mut Outbox,
    ) -> Handled<Option<Reply>> {
        let now = Now::from_us(now_us);
        let actor = caller.actor;
        let audited = audit_of(&request);
        let reply = match request {
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
                jobs: self.with_recent(self.tables.jobs.views()),
            },
            AdminRequest::NextFires { job, count } => {
                match list_jobs::next_fires(&self.tables.jobs, &job, count)? {
                    Reply::NextFires { job, times_ms } => Reply::NextFires {
                        job: Box::new(self.with_recent(vec![*job]).remove(0)),
                        times_ms,
                    },
                    other => other,
                }
            }
            AdminRequest::GetLog {
                run,
                offset,
                wait_ms,
            } => {
                let run = get_log::find(&self.tables.runs, &self.store, &run)?;
                let asked = LogAsked {
                    to: reply_to.clone(),
                    id,
                    run: Box::new(run),
                    offset,
                    waited: false,
                };
                self.read_log(asked, wait_ms, now, out);
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
            AdminRequest::RetryMany { runs } => {
                self.check_room_for_new_work()?;
                self.retry_many(runs, actor, now, out)?
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
            AdminRequest::Backup { to: path } => {
                // Writing it is the server's, off the loop: it answers once it has.
                out.backups.push(BackupAsked {
                    to: reply_to.clone(),
                    id,
                    path: backup_path(&path)?,
                });
                tracing::info!(actor, path, "backup asked");
                return Ok(None);
            }
            AdminRequest::Prune { dry_run } => {
                tracing::info!(actor, dry_run, "prune");
                self.prune(dry_run, now)?
            }
            AdminRequest::Series {
                of,
                resolution,
                points,
            } => self.series_of(&of, resolution, points, caller.scope, now)?,
            AdminRequest::Upcoming { limit } => {
                list_jobs::upcoming(&self.tables.jobs, caller.scope, limit)
            }
            AdminRequest::Alerts { before, limit } => self.alerts(caller.scope, before, limit),
            AdminRequest::AckAlert { id } => self.ack_alert(&id, actor, caller.scope, now)?,
            AdminRequest::Audit { before, limit } => Reply::Audit {
                entries: self.audit.page(caller.scope, before, limit),
            },
        };
        if let Some((action, target)) = audited {
            let change = Change {
                action,
                target,
                outcome: outcome_of(&reply),
            };
            self.audit
                .record(&mut self.store, actor, caller.scope, change, now.ms())?;
        }
        Ok(Some(reply))
    }

    /// Records a change the server made for `actors` (a reload of the settings; none:
    /// SIGHUP).
    pub fn record_reload(
        &mut self,
        actors: &[&str],
        outcome: String,
        now_us: u64,
    ) -> StoreResult<()> {
        let actor = match actors.is_empty() {
            true => "signal SIGHUP".to_string(),
            false => actors.join(", "),
        };
        let change = Change {
            action: "reload",
            target: "settings".into(),
            outcome,
        };
        self.audit.record(
            &mut self.store,
            &actor,
            &Scope::all(),
            change,
            now_us / 1_000,
        )
    }
}

/// A backup's directory as asked: absolute (it is on the broker's host, whose working
/// directory the caller does not know), and not the root.
fn backup_path(asked: &str) -> Handled<std::path::PathBuf> {
    let path = std::path::Path::new(asked);
    let why = if asked.is_empty() {
        Some("name a directory")
    } else if !path.is_absolute() {
        Some("the path must be absolute (it is on the broker's host)")
    } else if path.parent().is_none() {
        Some("not the root directory")
    } else {
        None
    };
    match why {
        Some(why) => Err(CoreError::BadBackupPath {
            path: asked.to_string(),
            why,
        }),
        None => Ok(path.to_path_buf()),
    }
}

/// What an operator request changes, for the audit log: its action and target; `None`
/// for reads (and enqueues, which each run records as its cause).
fn audit_of(request: &AdminRequest) -> Option<(&'static str, String)> {
    Some(match request {
        AdminRequest::Kill { selectors } => ("kill", runs_named(selectors)),
        AdminRequest::Retry { run } => ("retry", run.clone()),
        AdminRequest::RetryMany { runs } => ("retry", runs_named(runs)),
        AdminRequest::SetEnabled { target, enabled } => {
            let action = if *enabled { "enable" } else { "disable" };
            let target = match target {
                EnableTarget::Job(job) => format!("job {job}"),
                EnableTarget::Pool(pool) => format!("pool {pool}"),
            };
            (action, target)
        }
        AdminRequest::Drain { worker } => ("drain", format!("worker {worker}")),
        AdminRequest::ApplyJobs { jobs } => (
            "apply_jobs",
            jobs.iter()
                .map(|job| job.name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        AdminRequest::Prune { dry_run: false } => ("prune", "finished runs".into()),
        AdminRequest::AckAlert { id } => ("acknowledge", format!("alert {id}")),
        _ => return None,
    })
}

/// Runs named by an operator, for an audit entry: all of a few, the first of many.
fn runs_named(runs: &[String]) -> String {
    const SHOWN: usize = 5;
    match runs.len() {
        0..=SHOWN => runs.join(" "),
        n => format!("{} and {} more", runs[..SHOWN].join(" "), n - SHOWN),
    }
}

/// A change's outcome in a line.
fn outcome_of(reply: &Reply) -> String {
    match reply {
        Reply::KillResult { outcomes } if outcomes.len() > 5 => {
            let acted = outcomes.iter().filter(|o| !o.is_error()).count();
            format!(
                "{acted} of {} runs killed, cancelled or already ended",
                outcomes.len()
            )
        }
        Reply::KillResult { outcomes } => outcomes
            .iter()
            .map(|outcome| match outcome {
                KillOutcome::Killing { run_id, worker } => format!("killing {run_id} on {worker}"),
                KillOutcome::Cancelled { run_id } => format!("cancelled {run_id}"),
                KillOutcome::AlreadyFinished { run_id, state } => {
                    format!("{run_id} had already ended ({state})")
                }
                KillOutcome::Ambiguous { selector, .. } => format!("{selector}: ambiguous"),
                KillOutcome::NotFound { selector } => format!("{selector}: not found"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Reply::Enqueued { run } => format!("run {} (attempt {})", run.id, run.attempt),
        Reply::Applied {
            created,
            updated,
            unchanged,
        } => format!(
            "{} created, {} updated, {} unchanged",
            created.len(),
            updated.len(),
            unchanged.len()
        ),
        Reply::Pruned { runs, .. } => format!("{runs} runs deleted"),
        Reply::RetriedMany { retried, refused } => {
            format!("{} retried, {} refused", retried.len(), refused.len())
        }
        _ => "done".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_goes_to_an_absolute_path_below_the_root() {
        assert!(backup_path("/var/backups/jobcast/1").is_ok());
        for refused in ["", "backups/1", "./b", "/"] {
            let e = backup_path(refused).expect_err(refused);
            assert_eq!(
                e.code(),
                jobcast_protocol::ErrorCode::BadRequest,
                "{refused}"
            );
        }
    }

    #[test]
    fn an_audit_entry_names_a_few_runs_in_full_and_counts_many() {
        let runs: Vec<String> = (1..=7).map(|n| format!("r{n}")).collect();
        assert_eq!(runs_named(&runs[..2]), "r1 r2");
        assert_eq!(runs_named(&runs), "r1 r2 r3 r4 r5 and 2 more");
        let outcomes = runs
            .iter()
            .map(|run| match run.as_str() {
                "r7" => KillOutcome::NotFound {
                    selector: run.clone(),
                },
                _ => KillOutcome::Cancelled {
                    run_id: run.clone(),
                },
            })
            .collect();
        assert_eq!(
            outcome_of(&Reply::KillResult { outcomes }),
            "6 of 7 runs killed, cancelled or already ended"
        );
    }
}
