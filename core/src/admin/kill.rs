//! `Kill`: cancels queued runs and orders running ones killed; selectors resolve to runs.

use crate::selector;
use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, CoreError, Handled, Outbox};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, KillOutcome, Reply, RunState, Transition};

/// Most runs one `Kill` names: each may be a read of the store on the loop.
pub const MAX_KILL: usize = 1_000;

impl<S: Store> Core<S> {
    /// Kills every run the selectors name; each gets its own outcome.
    pub(super) fn kill_all(
        &mut self,
        selectors: Vec<String>,
        actor: &str,
        now: Now,
        out: &mut Outbox,
    ) -> Handled {
        if selectors.is_empty() {
            return Err(CoreError::NothingToKill);
        }
        if selectors.len() > MAX_KILL {
            return Err(CoreError::BadBulk {
                max: MAX_KILL,
                asked: selectors.len(),
            });
        }
        let mut outcomes = Vec::new();
        for selector in selectors {
            outcomes.push(self.kill(&selector, actor, now, out)?);
        }
        Ok(Reply::KillResult { outcomes })
    }

    pub(crate) fn kill(
        &mut self,
        selector: &str,
        actor: &str,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<KillOutcome> {
        if selector.is_empty() {
            return Ok(KillOutcome::NotFound {
                selector: String::new(),
            });
        }
        let run_id = match selector::resolve(&self.tables.runs, &self.store, selector)? {
            Ok(id) => id,
            Err(outcome) => return Ok(outcome),
        };
        let Some(run) = self.tables.runs.get_mut(&run_id) else {
            let state = match self.store.run(&run_id)? {
                Some(run) => run.state,
                None => {
                    return Ok(KillOutcome::NotFound {
                        selector: selector.to_string(),
                    })
                }
            };
            return Ok(KillOutcome::AlreadyFinished { run_id, state });
        };
        if run.state == RunState::Queued {
            self.finish_as(
                &run_id,
                RunState::Cancelled,
                now,
                format!("cancelled by {actor} before it started"),
                out,
            )?;
            return Ok(KillOutcome::Cancelled { run_id });
        }
        let worker = run.worker.clone().unwrap_or_default();
        if !run.kill_requested {
            run.kill_requested = true;
            run.history.push(Transition {
                state: run.state,
                at_ms: now.ms(),
                cause: format!("kill requested by {actor}"),
            });
            self.tables.unwritten.changed(run);
            self.changes.run(&run.id);
        }
        out.publish(topic::worker(&worker), Event::OrdersPending);
        Ok(KillOutcome::Killing { run_id, worker })
    }
}
