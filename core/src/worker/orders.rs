//! `Heartbeat` and `FetchOrders`: the kill and drain orders a worker has to follow.

use crate::runs::unstarted_grant_to;
use crate::store::Store;
use crate::{Core, Outbox};
use jobcast_protocol::{Assignment, Heartbeat, Orders, Reply};

impl<S: Store> Core<S> {
    /// Keeps the session alive (the caller noted the time) and answers with its orders.
    pub(super) fn heartbeat(
        &mut self,
        worker: &str,
        heartbeat: Heartbeat,
        out: &mut Outbox,
    ) -> Reply {
        let Heartbeat {
            running, draining, ..
        } = heartbeat;
        if let Some(session) = self.tables.workers.session_mut(worker) {
            session.draining = draining;
        }
        if draining {
            self.cancel_waiting_claim(worker, out);
        }
        Reply::Orders(self.orders_for(worker, &running))
    }

    /// Kill orders for the worker's runs that were asked to die, plus any run it reports
    /// that is not (or no longer) its own; and the grants to this worker process that it
    /// does not report, to start again (their answer was lost or is still travelling:
    /// either way the worker starts each once).
    pub(crate) fn orders_for(&self, worker: &str, reported_running: &[String]) -> Orders {
        let Some(session) = self.tables.workers.session(worker) else {
            return Orders::default();
        };
        let instance = session.register.instance;
        let resume: Vec<Assignment> = session
            .runs
            .iter()
            .filter(|id| !reported_running.contains(id))
            .filter_map(|id| self.tables.runs.get(id))
            .filter(|run| !run.kill_requested && unstarted_grant_to(run, instance))
            .map(Assignment::of)
            .collect();
        if !resume.is_empty() {
            let runs: Vec<&str> = resume.iter().map(|a| a.run_id.as_str()).collect();
            tracing::info!(
                worker,
                ?runs,
                "grants resent: the worker does not report them"
            );
        }
        let mut kill: Vec<String> = session
            .runs
            .iter()
            .filter(|id| self.tables.runs.get(id).is_some_and(|r| r.kill_requested))
            .cloned()
            .collect();
        for id in reported_running {
            if !session.runs.contains(id) && !kill.contains(id) {
                kill.push(id.clone());
            }
        }
        Orders {
            kill,
            drain: session.drain_ordered,
            resume,
        }
    }
}
