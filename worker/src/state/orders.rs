//! The broker's orders (kills, drain) and draining on a signal.

use super::*;

impl WorkerState {
    pub(super) fn apply(&mut self, orders: Orders, now_ms: u64, actions: &mut Vec<Action>) {
        if !orders.resume.is_empty() {
            tracing::info!(
                runs = orders.resume.len(),
                "the broker resends grants whose answer did not arrive"
            );
            // The same rules as any grant: a run already held (its late answer came
            // first) is not started twice; a draining worker hands them back.
            let resumed = orders.resume.into_iter().map(GrantedRun::from).collect();
            self.granted(resumed, now_ms, actions);
        }
        for run_id in orders.kill {
            if self.held.get(&run_id) == Some(&false) {
                tracing::info!(run_id, "kill ordered by the broker");
                actions.push(Action::Stop(run_id));
            } else if let Some(at) = self.ready.iter().position(|(r, _)| r.run_id == run_id) {
                // Never started: it ends here, killed, with nothing to stop.
                self.ready.remove(at);
                tracing::info!(run_id, "kill ordered by the broker before the run started");
                self.remember_end(run_id.clone());
                actions.push(Action::Report {
                    request: WorkerRequest::RunFinished(RunFinished {
                        run_id,
                        outcome: Outcome::Killed,
                        duration_ms: 0,
                        log_bytes: 0,
                        claim: 0,
                        usage: None,
                        started: None,
                    }),
                    may_wait: false,
                });
            }
        }
        if orders.drain && !self.draining {
            tracing::info!("drain ordered by the broker");
            self.begin_drain(now_ms, actions);
        }
    }

    pub(super) fn begin_drain(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.draining = true;
        if !self.ready.is_empty() {
            // Handed back unstarted: the broker queues them for other workers.
            let run_ids = self.ready.drain(..).map(|(r, _)| r.run_id).collect();
            Self::request(
                actions,
                Purpose::Release,
                WorkerRequest::Release { run_ids },
            );
        }
        self.drain_deadline_ms = Some(now_ms + self.identity.drain_timeout.as_millis() as u64);
        tracing::info!(running = self.busy_slots(), timeout = ?self.identity.drain_timeout, "draining: taking no new work");
    }

    pub(super) fn stop_all(&self, actions: &mut Vec<Action>) {
        for (run_id, done) in &self.held {
            if !done {
                actions.push(Action::Stop(run_id.clone()));
            }
        }
    }
}
