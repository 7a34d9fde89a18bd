//! The worker table: who is connected (a session per registered worker), what each worker
//! last told us (its status, kept across restarts), and the claims held open for runs.

use crate::error::listed;
use crate::waiting_claims::WaitingClaims;
use crate::{CoreError, PeerId};
use jobcast_protocol::{Register, WorkerStatus};
use std::collections::{BTreeMap, BTreeSet};

/// A registered worker, from its `Register` until it goes silent or registers again.
pub(crate) struct Session {
    pub peer: PeerId,
    pub register: Register,
    pub last_seen_ms: u64,
    /// Runs the broker has handed to this worker and not seen finish.
    pub runs: BTreeSet<String>,
    pub draining: bool,
    pub drain_ordered: bool,
}

#[derive(Default)]
pub(crate) struct WorkerTable {
    pub sessions: BTreeMap<String, Session>,
    /// Every worker ever registered, as shown by `status` (offline ones too).
    pub statuses: BTreeMap<String, WorkerStatus>,
    /// Claims held until runs arrive for them.
    pub waiting: WaitingClaims,
    /// Workers that were online when the previous broker process stopped: after a start,
    /// jobs run on every worker wait for these to register again (or for the grace).
    pub online_before_start: BTreeSet<String>,
    /// Workers whose key a reload revoked, with when one of their requests was answered
    /// so (the worker then stops its runs at once); until they register with a key again.
    pub revoked: BTreeMap<String, Option<u64>>,
}

impl WorkerTable {
    /// Starts from the statuses a store kept: nobody is connected yet.
    pub fn restored(statuses: Vec<WorkerStatus>) -> WorkerTable {
        WorkerTable {
            online_before_start: statuses
                .iter()
                .filter(|w| w.online)
                .map(|w| w.id.clone())
                .collect(),
            statuses: statuses
                .into_iter()
                .map(|mut w| {
                    w.online = false;
                    w.running.clear();
                    (w.id.clone(), w)
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Notes that `worker` was heard from on connection `peer`; false if it has no
    /// session.
    pub fn touch(&mut self, peer: &PeerId, worker: &str, now: u64) -> bool {
        let Some(session) = self.sessions.get_mut(worker) else {
            return false;
        };
        session.last_seen_ms = now;
        session.peer = peer.clone();
        if self
            .waiting
            .get(worker)
            .is_some_and(|claim| claim.peer != *peer)
        {
            // The worker reconnected: its old connection cannot take the answer.
            self.waiting.remove(worker);
        }
        true
    }

    /// Whether every worker of `pool` that was online before this broker started has
    /// registered again, and some worker of it is connected.
    pub fn back_for_pool(&self, pool: &str) -> bool {
        self.serve_pool(pool)
            && self
                .online_before_start
                .iter()
                .filter(|w| {
                    self.statuses
                        .get(*w)
                        .is_some_and(|s| s.pools.iter().any(|p| p == pool))
                })
                .all(|w| self.sessions.contains_key(w))
    }

    /// Whether some connected worker serves `pool`.
    pub fn serve_pool(&self, pool: &str) -> bool {
        self.sessions
            .values()
            .any(|s| s.register.pools.iter().any(|p| p == pool))
    }

    /// The refusal for a worker that is not connected, naming those that are.
    pub fn unknown(&self, worker: &str) -> CoreError {
        CoreError::NoSuchWorker {
            name: worker.to_string(),
            connected: listed(self.sessions.keys()),
        }
    }
}
