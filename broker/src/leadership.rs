//! When a leader must stop acting by its own clock: the database judges the lease
//! (`store::postgres::lease`), but a leader cut off from the database cannot hear that
//! it lost it. So it counts, on its monotonic clock, from when its last successful
//! taking or renewal was *sent* (the database set the expiry at or after that moment):
//! it stops at `sent + lease − margin`, before any standby can take over. Pure: the
//! times are given.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SelfFence {
    lease: Duration,
    margin: Duration,
    /// Until when this broker may act; `None` while it does not hold the lease.
    acting_until: Option<Instant>,
}

impl SelfFence {
    /// For a lease of `lease`, stopping `lease / 5` before it could expire (clock rates
    /// differ a little, and stopping takes a moment).
    pub fn new(lease: Duration) -> SelfFence {
        SelfFence {
            lease,
            margin: lease / 5,
            acting_until: None,
        }
    }

    /// The lease was taken or renewed by a statement sent at `sent_at`.
    pub fn held(&mut self, sent_at: Instant) {
        let until = sent_at + self.lease - self.margin;
        // An answer to an older renewal never shortens what a newer one gave.
        self.acting_until = Some(self.acting_until.map_or(until, |now| now.max(until)));
    }

    /// The database said the lease is not ours (a renewal found another epoch, or a
    /// commit failed its fence): stop at once.
    pub fn lost(&mut self) {
        self.acting_until = None;
    }

    /// Whether this broker may act at `now`.
    pub fn acting(&self, now: Instant) -> bool {
        self.acting_until.is_some_and(|until| now < until)
    }

    /// When acting must end, if it has not already.
    pub fn acting_until(&self) -> Option<Instant> {
        self.acting_until
    }

    /// How often to renew: three tries fit in one lease, so one lost renewal costs
    /// nothing.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    #[test]
    fn a_broker_that_never_held_the_lease_does_not_act() {
        let fence = SelfFence::new(LEASE);
        assert!(!fence.acting(Instant::now()));
        assert_eq!(fence.acting_until(), None);
    }

    #[test]
    fn acting_ends_a_margin_before_the_lease_counted_from_when_the_renewal_was_sent() {
        let mut fence = SelfFence::new(LEASE);
        let sent = Instant::now();
        fence.held(sent);
        assert!(fence.acting(sent));
        assert!(fence.acting(sent + Duration::from_millis(3_999)));
        assert!(!fence.acting(sent + Duration::from_secs(4)));
        assert!(!fence.acting(sent + LEASE));
    }

    #[test]
    fn a_renewal_moves_the_end_on_and_a_late_answer_to_an_older_one_does_not_pull_it_back() {
        let mut fence = SelfFence::new(LEASE);
        let first = Instant::now();
        fence.held(first);
        let second = first + fence.renew_every();
        fence.held(second);
        assert_eq!(fence.acting_until(), Some(second + Duration::from_secs(4)));
        fence.held(first);
        assert_eq!(fence.acting_until(), Some(second + Duration::from_secs(4)));
        assert!(fence.acting(first + Duration::from_secs(5)));
    }

    #[test]
    fn a_lost_lease_stops_acting_at_once_until_taken_again() {
        let mut fence = SelfFence::new(LEASE);
        let sent = Instant::now();
        fence.held(sent);
        fence.lost();
        assert!(!fence.acting(sent));
        fence.held(sent + Duration::from_secs(1));
        assert!(fence.acting(sent + Duration::from_secs(2)));
    }

    #[test]
    fn renewals_come_three_times_a_lease() {
        assert_eq!(SelfFence::new(LEASE).renew_every(), LEASE / 3);
    }
}
