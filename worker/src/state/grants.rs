//! Runs granted, waiting for a slot, started and ended: what is claimed, held and
//! handed back.

use super::*;

impl WorkerState {
    pub(super) fn maybe_claim(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if self.draining || self.claim_in_flight || !self.want_work || !self.registered {
            return;
        }
        let wanted = self.wanted();
        if wanted == 0 {
            return;
        }
        // Every slot busy and at least half the ready runs wanted still held: the next
        // run's end asks for the refill (its report carries the claim, so one message and
        // one commit do both). A claim sent after each grant to top up a run or two was
        // answered at once while the queue was long, and cost a round trip and a commit
        // each.
        if self.free_slots() == 0 && self.ready.len() as u32 * 2 >= self.ready_target {
            return;
        }
        self.claim_in_flight = true;
        actions.push(Action::Request {
            purpose: Purpose::Claim { sent_ms: now_ms },
            request: WorkerRequest::Claim {
                max: wanted,
                wait_ms: CLAIM_WAIT.as_millis() as u64,
            },
            timeout: CLAIM_WAIT + REQUEST_TIMEOUT,
        });
    }

    /// Runs granted by a claim or by a finish report that claimed: the same rules for
    /// both.
    pub(super) fn granted(
        &mut self,
        runs: Vec<GrantedRun>,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let mut released = Vec::new();
        let lease_out = self.lease_expired(now_ms);
        for run in runs {
            // A grant of a run this process already has is a copy (resent while the first
            // answer was on its way): nothing to do, and above all not handed back, since
            // the broker may not have heard yet that it started or ended.
            if self.ended.1.contains(&run.run_id) {
                tracing::info!(run_id = %run.run_id, "a late grant of a run that has ended: not started again");
                continue;
            }
            if self.held.contains_key(&run.run_id)
                || self.ready.iter().any(|(r, _)| r.run_id == run.run_id)
            {
                continue;
            }
            if self.draining {
                // Claimed just as the drain began: hand it back unstarted.
                released.push(run.run_id);
                continue;
            }
            if lease_out {
                // An answer that came after the lease ran out (the worker was stopped or
                // cut off): the broker may have given the run up, so it is not started,
                // and handed back (queued again if the broker still holds it here).
                tracing::warn!(run_id = %run.run_id, "a grant that arrived after the lease ran out: not started, handed back");
                released.push(run.run_id);
                continue;
            }
            let assignment = match self.definitions.resolve(run) {
                Ok(assignment) => assignment,
                Err(run) => {
                    // Named a definition this worker does not hold (an answer of an
                    // earlier registration, or one lost on the way): handed back, and
                    // the broker carries its definitions again.
                    tracing::debug!(run_id = %run.run_id, definition = run.definition, "a grant named a job definition not held here: handed back");
                    released.push(run.run_id);
                    continue;
                }
            };
            if self.free_slots() > 0 {
                self.start_run(assignment, actions);
            } else {
                self.ready.push_back((assignment, now_ms));
            }
        }
        if !released.is_empty() {
            Self::request(
                actions,
                Purpose::Release,
                WorkerRequest::Release { run_ids: released },
            );
        }
        self.maybe_claim(now_ms, actions);
    }

    /// Hands back the ready runs that waited longer than `READY_HOLD` for a slot.
    pub(super) fn release_overdue_ready(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let hold = READY_HOLD.as_millis() as u64;
        let mut run_ids = Vec::new();
        while let Some((_, since)) = self.ready.front() {
            if now_ms.saturating_sub(*since) < hold {
                break;
            }
            if let Some((run, _)) = self.ready.pop_front() {
                run_ids.push(run.run_id);
            }
        }
        if !run_ids.is_empty() {
            tracing::debug!(runs = ?run_ids, "ready runs waited too long for a slot: handed back");
            self.ready_paused = true;
            self.ready_target = self.identity.first_ready_target();
            Self::request(
                actions,
                Purpose::Release,
                WorkerRequest::Release { run_ids },
            );
        }
    }

    pub(super) fn start_run(&mut self, assignment: Assignment, actions: &mut Vec<Action>) {
        self.held.insert(assignment.run_id.clone(), false);
        if assignment.job.policy.on_broker_loss == OnBrokerLoss::Keep {
            self.kept_on_broker_loss.insert(assignment.run_id.clone());
        }
        actions.push(Action::Start(Box::new(assignment)));
    }

    pub(super) fn remember_end(&mut self, run_id: String) {
        self.kept_on_broker_loss.remove(&run_id);
        let (order, set) = &mut self.ended;
        if order.len() == REMEMBERED_ENDS {
            if let Some(oldest) = order.pop_front() {
                set.remove(&oldest);
            }
        }
        set.insert(run_id.clone());
        order.push_back(run_id);
    }

    /// A run's process ended; its report goes to the outbox.
    pub fn on_run_done(&mut self, mut finished: RunFinished) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(done) = self.held.get_mut(&finished.run_id) {
            *done = true;
        }
        if let Some(silent_ms) = self.stopped_for_lease.remove(&finished.run_id) {
            if finished.outcome == Outcome::Killed {
                finished.outcome = Outcome::LeaseExpired { silent_ms };
            }
        }
        // A ready run takes the slot at once; the report asks for work to refill what is
        // free (one round trip from a run's end to the next start only when none was
        // ready). Not while the lease is out: the broker may have given it up.
        if self.free_slots() > 0 && !self.lease_lost {
            match self.ready.pop_front() {
                Some((next, _)) => self.start_run(next, &mut actions),
                // The slot waits a round trip for work the broker has: the ready runs did
                // not last the round trip that refills them (a hand-back since the last
                // end says the opposite: runs waited a second for a slot).
                None if self.more_queued && !self.ready_paused => {
                    self.ready_target = (self.ready_target * 2).max(1).min(self.identity.prefetch);
                }
                None => {}
            }
        }
        self.ready_paused = false;
        if !self.draining && !self.claim_in_flight && self.registered {
            finished.claim = self.wanted();
        }
        // Ready runs still held: the freed slot is busy again and the next end has work
        // waiting too, so this end may wait for the ends of other slots (one message and
        // one commit for several). With none, or the lease out, or draining, it goes at
        // once (docs/ARCHITECTURE.md, "Reports gathered").
        let may_wait = !self.ready.is_empty() && !self.lease_lost && !self.draining;
        actions.push(Action::Report {
            request: WorkerRequest::RunFinished(finished),
            may_wait,
        });
        actions
    }
}
