//! What follows a run's end: retries with back-off, chained jobs, auto-disable after
//! repeated failures, and webhook notifications.

use crate::schedule::derived_run_id;
use crate::scheduling::NewRun;
use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Outbox};
use jobcast_protocol::{AlertKind, RunRecord, RunState};

/// A message for the notification webhooks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    pub kind: AlertKind,
    pub job: Option<String>,
    pub pool: Option<String>,
    pub run_id: Option<String>,
    pub at_ms: u64,
    /// One line for people (and Slack's `text`).
    pub text: String,
}

impl<S: Store> Core<S> {
    /// What follows the end of a run: retry, chain, failure count, notification.
    pub(crate) fn after_end(
        &mut self,
        run: &RunRecord,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let failed = matches!(
            run.state,
            RunState::Failed | RunState::TimedOut | RunState::Lost
        );
        let spec = self
            .tables
            .jobs
            .shared_spec(&run.job)
            .unwrap_or_else(|| run.spec.clone());
        if failed && run.attempt <= spec.policy.retries {
            let backoff = if spec.policy.retry_exponential {
                spec.policy
                    .retry_backoff_ms
                    .saturating_mul(1u64 << (run.attempt - 1).min(20))
            } else {
                spec.policy.retry_backoff_ms
            };
            let first = run.first_attempt.clone().unwrap_or_else(|| run.id.clone());
            let attempt = run.attempt + 1;
            let mut new = NewRun::of(
                spec.clone(),
                run.scheduled_at_ms,
                format!(
                    "retry {} of {} after run {} {}",
                    attempt - 1,
                    spec.policy.retries,
                    run.id,
                    run.state
                ),
            );
            // Named after the run that ended: it ends once, so its retry is made once.
            new.id = Some(derived_run_id(&["retry", &run.id]));
            new.attempt = attempt;
            new.params = jobcast_protocol::params::carried(&new.spec.params, &run.params);
            new.priority = run.priority;
            new.first_attempt = Some(first);
            new.parent = run.parent.clone();
            new.pinned_worker = run.pinned_worker.clone();
            new.schedule_id = run.schedule_id.clone();
            new.not_before_ms = now.ms() + backoff;
            self.create_run(new, now, out)?;
            return Ok(());
        }
        // The final outcome of this run (and its attempts).
        if run.state == RunState::Succeeded {
            if let Some(state) = self.tables.jobs.state_mut(&run.job) {
                state.consecutive_failures = 0;
            }
        } else if failed {
            let (kind, word) = if run.state == RunState::Lost {
                (AlertKind::RunLost, "was lost")
            } else {
                (AlertKind::RunFailed, "failed")
            };
            let detail = run
                .outcome
                .as_ref()
                .map(|o| o.describe())
                .or_else(|| run.history.last().map(|t| t.cause.clone()))
                .unwrap_or_default();
            out.notifications.push(Notification {
                kind,
                job: Some(run.job.clone()),
                pool: Some(run.pool.clone()),
                run_id: Some(run.id.clone()),
                at_ms: now.ms(),
                text: format!("job {}: run {} {word} ({detail})", run.job, run.id),
            });
            let state = self.tables.jobs.state_entry(&run.job);
            state.consecutive_failures += 1;
            let failures = state.consecutive_failures;
            if let Some(limit) = spec.policy.disable_after_failures {
                if failures >= limit && state.auto_disabled.is_none() {
                    let reason = format!(
                        "disabled after {failures} failures in a row (last: run {})",
                        run.id
                    );
                    self.tables.jobs.disable_itself(&run.job, reason.clone());
                    tracing::warn!(job = %run.job, %reason, "job disabled itself");
                    out.notifications.push(Notification {
                        kind: AlertKind::AutoDisabled,
                        job: Some(run.job.clone()),
                        pool: Some(run.pool.clone()),
                        run_id: Some(run.id.clone()),
                        at_ms: now.ms(),
                        text: format!("job {}: {reason}", run.job),
                    });
                }
            }
        }
        self.save_job_state(&run.job)?;
        let parent_ok = run.state == RunState::Succeeded;
        for child in &spec.policy.children {
            if !(parent_ok || (failed && child.on_error)) {
                continue;
            }
            let Some(child_spec) = self.tables.jobs.shared_spec(&child.job) else {
                continue;
            };
            let mut new = NewRun::of(
                child_spec,
                now.ms(),
                format!("after {} run {} {}", run.job, run.id, run.state),
            );
            new.id = Some(derived_run_id(&[&child.job, "after", &run.id]));
            new.parent = Some(run.id.clone());
            new.params = jobcast_protocol::params::carried(&new.spec.params, &run.params);
            self.create_run(new, now, out)?;
        }
        Ok(())
    }
}
