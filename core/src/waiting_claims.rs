//! Claims the broker holds until runs arrive: a worker with free slots keeps one `Claim`
//! waiting, and a run queued for its pool is granted to it in the same batch (and the same
//! flush) that queued it, instead of a wake-up event, a claim and a second flush later.

use super::PeerId;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The longest a claim is held, whatever the worker asks for.
pub const MAX_CLAIM_WAIT_MS: u64 = 30_000;

/// A `Claim` request not answered yet.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingClaim {
    pub peer: PeerId,
    /// The request id to answer.
    pub id: u64,
    pub max: u32,
    pub deadline_ms: u64,
}

/// The waiting claims, at most one per worker, served oldest first.
#[derive(Debug, Default)]
pub struct WaitingClaims {
    by_worker: HashMap<String, (u64, WaitingClaim)>,
    /// Arrival order → worker.
    order: BTreeMap<u64, String>,
    /// (deadline, arrival order), for expiry.
    deadlines: BTreeSet<(u64, u64)>,
    next_order: u64,
    /// Pools that gained runs a waiting claim might take since the last dispatch.
    dirty_pools: BTreeSet<String>,
}

impl WaitingClaims {
    /// Holds `claim` for `worker`; returns the claim it replaces, which the caller answers.
    pub fn insert(&mut self, worker: &str, claim: WaitingClaim) -> Option<WaitingClaim> {
        let replaced = self.remove(worker);
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(order, worker.to_string());
        self.deadlines.insert((claim.deadline_ms, order));
        self.by_worker.insert(worker.to_string(), (order, claim));
        replaced
    }

    pub fn remove(&mut self, worker: &str) -> Option<WaitingClaim> {
        let (order, claim) = self.by_worker.remove(worker)?;
        self.order.remove(&order);
        self.deadlines.remove(&(claim.deadline_ms, order));
        Some(claim)
    }

    /// The workers whose claims wait, in no particular order.
    pub fn workers(&self) -> impl Iterator<Item = &str> {
        self.by_worker.keys().map(String::as_str)
    }

    pub fn get(&self, worker: &str) -> Option<&WaitingClaim> {
        self.by_worker.get(worker).map(|(_, claim)| claim)
    }

    /// Removes and returns the claims whose wait is over at `now_ms`.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<(String, WaitingClaim)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, order)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            let Some(worker) = self.order.get(&order).cloned() else {
                self.deadlines.remove(&(deadline, order));
                continue;
            };
            if let Some(claim) = self.remove(&worker) {
                expired.push((worker, claim));
            }
        }
        expired
    }

    /// Moves every deadline with a step of the wall clock.
    pub fn shift(&mut self, shift: impl Fn(u64) -> u64) {
        self.deadlines = self
            .deadlines
            .iter()
            .map(|&(deadline, order)| (shift(deadline), order))
            .collect();
        for (_, claim) in self.by_worker.values_mut() {
            claim.deadline_ms = shift(claim.deadline_ms);
        }
    }

    pub fn earliest_deadline_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// The workers with a waiting claim, longest waiting first.
    pub fn oldest_first(&self) -> Vec<String> {
        self.order.values().cloned().collect()
    }

    /// Notes that `pool` gained runs to hand out.
    pub fn mark_dirty(&mut self, pool: &str) {
        if !self.by_worker.is_empty() && !self.dirty_pools.contains(pool) {
            self.dirty_pools.insert(pool.to_string());
        }
    }

    /// The pools marked since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty_pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: u64, deadline_ms: u64) -> WaitingClaim {
        WaitingClaim {
            peer: b"p".to_vec(),
            id,
            max: 1,
            deadline_ms,
        }
    }

    #[test]
    fn one_claim_per_worker_the_newer_replaces_the_older() {
        let mut claims = WaitingClaims::default();
        assert_eq!(claims.insert("w1", claim(1, 100)), None);
        assert_eq!(claims.insert("w1", claim(2, 200)), Some(claim(1, 100)));
        assert_eq!(claims.get("w1"), Some(&claim(2, 200)));
        assert_eq!(claims.oldest_first(), vec!["w1".to_string()]);
        // The replaced claim's deadline no longer expires anything.
        assert!(claims.take_expired(150).is_empty());
        assert_eq!(claims.earliest_deadline_ms(), Some(200));
    }

    #[test]
    fn served_in_arrival_order() {
        let mut claims = WaitingClaims::default();
        claims.insert("w2", claim(1, 500));
        claims.insert("w1", claim(2, 100));
        claims.insert("w3", claim(3, 300));
        assert_eq!(claims.oldest_first(), vec!["w2", "w1", "w3"]);
        // A worker that claims again goes to the back.
        claims.insert("w2", claim(4, 500));
        assert_eq!(claims.oldest_first(), vec!["w1", "w3", "w2"]);
    }

    #[test]
    fn expiry_takes_exactly_the_claims_due() {
        let mut claims = WaitingClaims::default();
        claims.insert("w1", claim(1, 100));
        claims.insert("w2", claim(2, 300));
        claims.insert("w3", claim(3, 200));
        assert!(claims.take_expired(99).is_empty());
        let expired: Vec<String> = claims
            .take_expired(200)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(expired, vec!["w1", "w3"]);
        assert_eq!(claims.oldest_first(), vec!["w2"]);
        assert_eq!(claims.earliest_deadline_ms(), Some(300));
        assert_eq!(claims.remove("w2"), Some(claim(2, 300)));
        assert!(claims.oldest_first().is_empty());
        assert_eq!(claims.earliest_deadline_ms(), None);
    }

    #[test]
    fn pools_are_marked_only_while_someone_waits() {
        let mut claims = WaitingClaims::default();
        claims.mark_dirty("default");
        assert!(claims.take_dirty().is_empty());
        claims.insert("w1", claim(1, 100));
        claims.mark_dirty("default");
        claims.mark_dirty("gpu");
        claims.mark_dirty("default");
        assert_eq!(
            claims.take_dirty().into_iter().collect::<Vec<_>>(),
            vec!["default", "gpu"]
        );
        assert!(claims.take_dirty().is_empty());
    }
}
