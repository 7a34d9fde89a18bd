//! `Kill`: cancels queued runs and orders running ones killed; selectors resolve to runs.

use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, CoreError, Handled, Outbox, MAX_CANDIDATES};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, KillOutcome, Reply, RunState, Transition};

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
        let run_id = match self.resolve(selector)? {
            Ok(id) => id,
            Err(outcome) => return Ok(outcome),
        };
        let Some(run) = self.runs.get_mut(&run_id) else {
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
            self.store.put_run(run)?;
            self.changes.runs.insert(run.id.clone());
        }
        out.publish(topic::worker(&worker), Event::OrdersPending);
        Ok(KillOutcome::Killing { run_id, worker })
    }

    /// Resolves a full id, a unique prefix (of any stored run) or a unique substring (of
    /// an unfinished or recently ended run) to one run id. Each step is a lookup, a range
    /// or a bounded walk: no step reads every stored id.
    pub(crate) fn resolve(&self, selector: &str) -> StoreResult<Result<String, KillOutcome>> {
        if self.runs.contains(selector) || self.store.run(selector)?.is_some() {
            return Ok(Ok(selector.to_string()));
        }
        let mut candidates = self
            .store
            .run_ids_with_prefix(selector, MAX_CANDIDATES + 1)?;
        if candidates.is_empty() {
            candidates = self.runs.ids_containing(selector, MAX_CANDIDATES + 1);
        }
        Ok(match candidates.len() {
            0 => Err(KillOutcome::NotFound {
                selector: selector.to_string(),
            }),
            1 => Ok(candidates.remove(0)),
            _ => {
                candidates.truncate(MAX_CANDIDATES);
                Err(KillOutcome::Ambiguous {
                    selector: selector.to_string(),
                    candidates,
                })
            }
        })
    }

    /// Like [`Self::resolve`], with the outcome as a refusal.
    pub(crate) fn resolve_one(&self, selector: &str) -> Handled<String> {
        self.resolve(selector)?.map_err(|outcome| match outcome {
            KillOutcome::Ambiguous {
                selector,
                candidates,
            } => CoreError::Ambiguous {
                selector,
                candidates,
            },
            _ => CoreError::NoSuchRun {
                selector: selector.to_string(),
            },
        })
    }
}
