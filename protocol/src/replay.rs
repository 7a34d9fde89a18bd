//! Replay protection: remembers each sender's recent nonces.
//!
//! A frame is only accepted when its timestamp is within `window_ms` of now, so a nonce
//! only needs remembering until its frame's timestamp is `window_ms` old; after that the
//! clock check refuses the replay. Memory is bounded by the accepted request rate times
//! the window.

use std::collections::{HashMap, HashSet, VecDeque};

#[derive(Debug, Default)]
struct SenderNonces {
    seen: HashSet<u64>,
    /// (frame timestamp, nonce) in arrival order, for expiry.
    order: VecDeque<(u64, u64)>,
}

#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    senders: HashMap<String, SenderNonces>,
}

impl ReplayGuard {
    pub fn new(window_ms: u64) -> Self {
        ReplayGuard {
            window_ms,
            senders: HashMap::new(),
        }
    }

    /// Records `nonce`; returns false if this sender already used it within the window.
    pub fn check_and_record(&mut self, sender: &str, ts_ms: u64, nonce: u64, now_ms: u64) -> bool {
        let horizon = now_ms.saturating_sub(self.window_ms);
        let entry = match self.senders.get_mut(sender) {
            Some(entry) => entry,
            None => self.senders.entry(sender.to_string()).or_default(),
        };
        // Arrival order is close to timestamp order; expire from the front while old.
        while let Some(&(ts, old)) = entry.order.front() {
            if ts >= horizon {
                break;
            }
            entry.order.pop_front();
            entry.seen.remove(&old);
        }
        if !entry.seen.insert(nonce) {
            return false;
        }
        entry.order.push_back((ts_ms, nonce));
        true
    }

    /// The receiver's wall clock stepped by `step_ms` (negative: back): the remembered
    /// frames' times move with it, so that they are forgotten when their window has
    /// passed on the new clock (not an hour later after a step back of an hour).
    pub fn clock_stepped(&mut self, step_ms: i64) {
        let shift = |ts: u64| ts.saturating_add_signed(step_ms);
        for sender in self.senders.values_mut() {
            for entry in sender.order.iter_mut() {
                entry.0 = shift(entry.0);
            }
        }
    }

    /// Number of nonces remembered (for tests and status).
    pub fn len(&self) -> usize {
        self.senders.values().map(|s| s.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once() {
        let mut guard = ReplayGuard::new(30_000);
        assert!(guard.check_and_record("w1", 1_000, 7, 1_000));
        assert!(!guard.check_and_record("w1", 1_000, 7, 1_001));
    }

    #[test]
    fn senders_have_separate_nonce_spaces() {
        let mut guard = ReplayGuard::new(30_000);
        assert!(guard.check_and_record("w1", 1_000, 7, 1_000));
        assert!(guard.check_and_record("w2", 1_000, 7, 1_000));
    }

    #[test]
    fn old_nonces_are_forgotten_so_memory_stays_bounded() {
        let mut guard = ReplayGuard::new(1_000);
        for i in 0..10_000u64 {
            // one frame per millisecond
            assert!(guard.check_and_record("w1", i, i, i));
        }
        // only about one window's worth is remembered
        assert!(guard.len() <= 1_001, "{}", guard.len());
        // a nonce still inside the window is refused
        assert!(!guard.check_and_record("w1", 9_999, 9_999, 10_000));
    }
}
