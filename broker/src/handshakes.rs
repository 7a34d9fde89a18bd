//! Which connections closed before their handshake without libzmq saying why.
//!
//! libzmq closes a connection whose first bytes are no ZMTP 3 greeting (garbage, a ZMTP
//! 1.0 or 2.0 peer: the broker's handshake needs ZMTP 3's security) or whose handshake
//! breaks the protocol, and its monitor reports only the disconnect: no failure event, as
//! it reports a wrong password or a handshake too slow. To count them, the side task keeps
//! a ledger per socket from the monitor's events, which come in order (one I/O thread):
//! a connection accepted (with its descriptor), a handshake that succeeded or failed (with
//! no descriptor), a connection closed (with its descriptor).
//!
//! A success or failure is given to the connection it belongs to when only one handshake
//! is under way; otherwise it is kept as a count, spent by the next connections to close
//! while still unattributed (a failure first: its disconnect follows it at once), and a
//! connection still open a while after the handshake limit has succeeded (a failed or slow
//! one would have been closed). What closes with nothing to spend closed silently: that is
//! the count. Only handshakes that succeed and end within the limit while others are under
//! way can be taken for one another, which changes which one counts, not how many.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How a connection ended, as far as the ledger can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// After its handshake (or one the monitor does not know: accepted before it).
    AfterHandshake,
    /// Its handshake failed with an event of its own, already counted.
    FailedAloud,
    /// Before its handshake, with no event saying why.
    BeforeHandshake,
}

#[derive(Debug)]
pub struct HandshakeLedger {
    /// Past this since its acceptance, an open connection has completed its handshake.
    limit: Duration,
    under_way: HashMap<u32, Instant>,
    done: HashSet<u32>,
    successes: u32,
    failures: u32,
}

impl HandshakeLedger {
    /// `handshake_limit`: the socket's handshake timeout.
    pub fn new(handshake_limit: Duration) -> HandshakeLedger {
        HandshakeLedger {
            limit: handshake_limit + Duration::from_secs(1),
            under_way: HashMap::new(),
            done: HashSet::new(),
            successes: 0,
            failures: 0,
        }
    }

    pub fn accepted(&mut self, fd: u32, now: Instant) {
        self.done.remove(&fd);
        self.under_way.insert(fd, now);
    }

    pub fn succeeded(&mut self, now: Instant) {
        match self.only_one_under_way() {
            Some(fd) => {
                self.under_way.remove(&fd);
                self.done.insert(fd);
            }
            None => self.successes += 1,
        }
        self.settle(now);
    }

    /// A handshake failed (wrong credentials, too slow, another mechanism): counted
    /// where its event is.
    pub fn failed(&mut self) {
        // Its connection is closed next, without a word of which it was.
        self.failures += 1;
    }

    pub fn closed(&mut self, fd: u32, now: Instant) -> Closed {
        if self.done.remove(&fd) {
            return Closed::AfterHandshake;
        }
        if self.under_way.remove(&fd).is_none() {
            return Closed::AfterHandshake;
        }
        if self.failures > 0 {
            self.failures -= 1;
            return Closed::FailedAloud;
        }
        self.settle(now);
        if self.successes > 0 {
            self.successes -= 1;
            return Closed::AfterHandshake;
        }
        Closed::BeforeHandshake
    }

    fn only_one_under_way(&self) -> Option<u32> {
        match self.under_way.len() {
            1 => self.under_way.keys().next().copied(),
            _ => None,
        }
    }

    /// Connections open past the limit have completed their handshake: each takes one of
    /// the successes not yet given (and, once the successes account for every handshake
    /// under way, they all have).
    fn settle(&mut self, now: Instant) {
        let old: Vec<u32> = self
            .under_way
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) > self.limit)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in old {
            self.under_way.remove(&fd);
            self.done.insert(fd);
            self.successes = self.successes.saturating_sub(1);
        }
        if self.successes > 0 && self.successes as usize >= self.under_way.len() {
            self.successes -= self.under_way.len() as u32;
            self.done.extend(self.under_way.drain().map(|(fd, _)| fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn one_at_a_time_each_close_is_told_apart() {
        let mut ledger = HandshakeLedger::new(LIMIT);
        let t = Instant::now();
        ledger.accepted(7, t);
        ledger.succeeded(t);
        assert_eq!(ledger.closed(7, t), Closed::AfterHandshake);
        ledger.accepted(7, t);
        ledger.failed();
        assert_eq!(ledger.closed(7, t), Closed::FailedAloud);
        ledger.accepted(8, t);
        assert_eq!(ledger.closed(8, t), Closed::BeforeHandshake);
        // Accepted before the monitor started: nothing is said of it.
        assert_eq!(ledger.closed(99, t), Closed::AfterHandshake);
    }

    #[test]
    fn handshakes_under_way_together_are_counted_right() {
        let mut ledger = HandshakeLedger::new(LIMIT);
        let t = Instant::now();
        // Three at once: one garbage, one wrong password, one good that stays.
        for fd in [10, 11, 12] {
            ledger.accepted(fd, t);
        }
        ledger.failed();
        assert_eq!(ledger.closed(11, t), Closed::FailedAloud);
        ledger.succeeded(t);
        assert_eq!(ledger.closed(10, t), Closed::BeforeHandshake);
        // The good one was given its success when it was the only one left.
        assert_eq!(ledger.closed(12, t + LIMIT * 10), Closed::AfterHandshake);
    }

    #[test]
    fn a_connection_open_past_the_limit_has_completed_its_handshake() {
        let mut ledger = HandshakeLedger::new(LIMIT);
        let t = Instant::now();
        ledger.accepted(1, t);
        ledger.accepted(2, t);
        ledger.succeeded(t);
        // 2 is too slow: the limit closes it, with an event of its own.
        ledger.failed();
        assert_eq!(ledger.closed(2, t + LIMIT), Closed::FailedAloud);
        // 1 is still open long after: it was the success, so 3 closing silently is
        // counted and 1, closed later, is not.
        let later = t + LIMIT * 2;
        ledger.accepted(3, later);
        ledger.accepted(4, later);
        assert_eq!(ledger.closed(3, later), Closed::BeforeHandshake);
        assert_eq!(ledger.closed(1, later), Closed::AfterHandshake);
    }
}
