//! The keys in force: each sender's secret (and, during a rotation, its previous one),
//! the revoked ones, and the pools a limited worker key may serve.

use jobcast_protocol::envelope::check_connection_password;
use jobcast_protocol::Secret;
use std::collections::{BTreeSet, HashMap};

/// Shortest secret accepted; shorter ones are too easy to guess.
pub const MIN_SECRET_LEN: usize = 16;

/// Secrets by sender name.
#[derive(Debug, Clone)]
pub struct Keys {
    pub admin: Secret,
    pub workers: HashMap<String, Secret>,
    /// The pools each restricted worker key may serve; keys not listed may serve any.
    pub worker_pools: HashMap<String, BTreeSet<String>>,
    /// Secrets being replaced (`previous_secret`), by worker id: accepted beside the
    /// worker's secret.
    pub previous: HashMap<String, Secret>,
    /// Secrets a reload removed or replaced (not by a rotation), by worker id: a frame
    /// sealed with one is opened only to answer, sealed with it, that it is revoked.
    /// Kept while this process runs; not read from the file.
    pub revoked: HashMap<String, Secret>,
}

impl Keys {
    pub fn for_sender(&self, name: &str) -> Option<&Secret> {
        if name == jobcast_core::ADMIN {
            Some(&self.admin)
        } else {
            self.workers.get(name)
        }
    }

    /// The secrets a sender's frames may be sealed with: its secret, then the one it
    /// replaces (or, for a revoked key, the revoked secret alone).
    pub fn secrets_of(&self, name: &str) -> (Option<&Secret>, Option<&Secret>) {
        match self.for_sender(name) {
            Some(current) => (Some(current), self.previous.get(name)),
            None => (None, self.revoked.get(name)),
        }
    }

    /// Whether a connection's password comes from one of the sender's secrets, revoked
    /// ones included (so that the worker hears it is revoked).
    pub fn accepts_password(&self, name: &str, password: &[u8]) -> bool {
        let (first, second) = self.secrets_of(name);
        [first, second]
            .into_iter()
            .flatten()
            .any(|secret| check_connection_password(secret, password))
    }

    /// These keys, as they replace `running`: the worker secrets `running` held that are
    /// no longer accepted (removed, or changed without keeping the old one as
    /// `previous_secret`) become revoked, along with those revoked before and not given a
    /// key again. Returns the workers revoked by this change.
    pub fn replacing(mut self, running: &Keys) -> (Keys, Vec<String>) {
        let mut newly = Vec::new();
        for (id, old) in &running.workers {
            let still_accepted =
                self.workers.get(id) == Some(old) || self.previous.get(id) == Some(old);
            if !still_accepted {
                self.revoked.insert(id.clone(), old.clone());
                newly.push(id.clone());
            }
        }
        for (id, old) in &running.revoked {
            if !self.workers.contains_key(id) {
                self.revoked
                    .entry(id.clone())
                    .or_insert_with(|| old.clone());
            }
        }
        newly.sort();
        (self, newly)
    }
}
