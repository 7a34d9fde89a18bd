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
    /// The job definitions this session was sent (when its worker keeps them).
    pub definitions_sent: crate::definitions::SentDefinitions,
}

#[derive(Default)]
pub(crate) struct WorkerTable {
    sessions: BTreeMap<String, Session>,
    /// Every worker ever registered, as shown by `status` (offline ones too).
    statuses: BTreeMap<String, WorkerStatus>,
    /// Claims held until runs arrive for them.
    waiting: WaitingClaims,
    /// Workers that were online when the previous broker process stopped: after a start,
    /// jobs run on every worker wait for these to register again (or for the grace).
    online_before_start: BTreeSet<String>,
    /// Workers whose key a reload revoked, with when one of their requests was answered
    /// so (the worker then stops its runs at once); until they register with a key again.
    revoked: BTreeMap<String, Option<u64>>,
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

    pub fn session(&self, worker: &str) -> Option<&Session> {
        self.sessions.get(worker)
    }

    pub fn session_mut(&mut self, worker: &str) -> Option<&mut Session> {
        self.sessions.get_mut(worker)
    }

    pub fn is_connected(&self, worker: &str) -> bool {
        self.sessions.contains_key(worker)
    }

    /// The connected workers, by name.
    pub fn connected(&self) -> impl Iterator<Item = &String> {
        self.sessions.keys()
    }

    /// What `worker` last told, connected or not.
    pub fn status(&self, worker: &str) -> Option<&WorkerStatus> {
        self.statuses.get(worker)
    }

    /// Every worker ever registered, offline ones too.
    pub fn statuses(&self) -> impl Iterator<Item = &WorkerStatus> {
        self.statuses.values()
    }

    /// Notes a pong's round trip (`status` shows it until the next ping).
    pub fn status_mut(&mut self, worker: &str) -> Option<&mut WorkerStatus> {
        self.statuses.get_mut(worker)
    }

    /// Whether the broker knows `worker` at all: connected now or registered before.
    pub fn is_known(&self, worker: &str) -> bool {
        self.sessions.contains_key(worker) || self.statuses.contains_key(worker)
    }

    pub fn waiting(&self) -> &WaitingClaims {
        &self.waiting
    }

    pub fn waiting_mut(&mut self) -> &mut WaitingClaims {
        &mut self.waiting
    }

    /// Whether a worker other than `worker` waits for work it lacks: a waiting claim, and
    /// fewer runs held than its slots. A worker holding a run for every slot (running or
    /// ready) that waits only to refill its ready runs lacks nothing. The walk stops at
    /// the first such worker; it is long only while every waiting worker has its slots
    /// covered, which under load means few claims wait (they are answered).
    pub fn others_lack_work(&self, worker: &str) -> bool {
        self.waiting.workers().any(|other| {
            other != worker
                && self.sessions.get(other).is_some_and(|session| {
                    session.runs.len() < session.register.concurrency as usize
                })
        })
    }

    /// `worker` registered on `session`, as `status` says: any session before it is
    /// replaced, and registered with a key in force, any earlier revocation is over.
    pub fn register(&mut self, worker: &str, session: Session, status: WorkerStatus) {
        self.statuses.insert(worker.to_string(), status);
        self.sessions.insert(worker.to_string(), session);
        self.revoked.remove(worker);
    }

    /// Ends `worker`'s session (silent, left, or revoked) and drops its waiting claim;
    /// its status turns offline. Returns the status to store, if it had a session.
    pub fn disconnect(&mut self, worker: &str) -> Option<&WorkerStatus> {
        let session = self.sessions.remove(worker)?;
        self.waiting.remove(worker);
        let status = self.statuses.get_mut(worker)?;
        status.online = false;
        status.running.clear();
        status.last_seen_ms = session.last_seen_ms;
        Some(status)
    }

    /// A reload removed or replaced `worker`'s key (its session is ended separately).
    pub fn revoke(&mut self, worker: &str) {
        self.revoked.insert(worker.to_string(), None);
    }

    /// A request of revoked `worker` was answered so at `now` (the first time counts).
    pub fn revocation_told(&mut self, worker: &str, now: u64) {
        if let Some(told @ None) = self.revoked.get_mut(worker) {
            *told = Some(now);
        }
    }

    /// If `worker`'s key is revoked: when it was told so, if it was.
    pub fn revocation(&self, worker: &str) -> Option<Option<u64>> {
        self.revoked.get(worker).copied()
    }

    /// Moves every time the table keeps with a step of the wall clock.
    pub fn shift_times(&mut self, shift: impl Fn(u64) -> u64) {
        for session in self.sessions.values_mut() {
            session.last_seen_ms = shift(session.last_seen_ms);
        }
        for status in self.statuses.values_mut() {
            status.last_seen_ms = shift(status.last_seen_ms);
        }
        for told in self.revoked.values_mut().flatten() {
            *told = shift(*told);
        }
        self.waiting.shift(&shift);
    }

    /// The connected workers not heard from for more than `timeout` at `now`.
    pub fn silent_for(&self, timeout: u64, now: u64) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_seen_ms) > timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Notes that `worker`'s session has given `run_id` up (or finished it).
    pub fn drop_run(&mut self, worker: &str, run_id: &str) {
        if let Some(session) = self.sessions.get_mut(worker) {
            session.runs.remove(run_id);
        }
    }

    /// `run_id`, on `worker`, ended: the slot it frees, or the end of an `overlap =
    /// queue` run, may make queued runs of the worker's pools grantable to a waiting
    /// claim.
    pub fn run_ended(&mut self, worker: &str, run_id: &str) {
        if let Some(session) = self.sessions.get_mut(worker) {
            session.runs.remove(run_id);
            for pool in &session.register.pools {
                self.waiting.mark_dirty(pool);
            }
        }
    }

    /// Notes that `worker`'s session holds `run_id`.
    pub fn hold_run(&mut self, worker: &str, run_id: String) {
        if let Some(session) = self.sessions.get_mut(worker) {
            session.runs.insert(run_id);
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

    /// The connected workers that serve `pool`.
    pub fn serving(&self, pool: &str) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.register.pools.iter().any(|p| p == pool))
            .map(|(id, _)| id.clone())
            .collect()
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
