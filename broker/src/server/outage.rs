//! A store that fails a write: nothing of the batch is acknowledged, every request is
//! answered "unavailable" (nothing was done, so retrying later is safe), and the store is
//! opened again, less often while it keeps failing; the core is then read back from it,
//! as at a start.

use super::frames::outgoing;
use super::{now_us, Server, MAX_BATCH};
use crate::sockets::Incoming;
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use jobcast_core::{Core, Outbox, ReplyTo};
use std::future::Future;
use std::time::{Duration, Instant};

/// How soon to try opening the store again after a failure: doubling while it fails, and
/// carried over to a failure soon after a recovery, so that a disk that fills up again at
/// once does not have the broker reopen its store in a tight loop.
pub(super) struct ReopenDelay {
    after_recovery: Duration,
    recovered_at: Option<Instant>,
}

impl ReopenDelay {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);
    /// A store that has worked this long since its recovery starts over at `FIRST`.
    const STABLE: Duration = Duration::from_secs(60);

    pub(super) fn new() -> ReopenDelay {
        ReopenDelay {
            after_recovery: Self::FIRST,
            recovered_at: None,
        }
    }

    /// The wait before the first attempt of an outage beginning at `now`.
    pub(super) fn first(&self, now: Instant) -> Duration {
        match self.recovered_at {
            Some(at) if now.saturating_duration_since(at) < Self::STABLE => self.after_recovery,
            _ => Self::FIRST,
        }
    }

    fn after_failure(delay: Duration) -> Duration {
        (delay * 2).min(Self::MAX)
    }

    fn recovered(&mut self, last_delay: Duration, now: Instant) {
        self.recovered_at = Some(now);
        self.after_recovery = Self::after_failure(last_delay);
    }
}

/// The answer while the store is failed: nothing was done, ask again later.
pub(super) fn unavailable(error: &StoreError) -> jobcast_protocol::Reply {
    jobcast_protocol::Reply::Error {
        code: jobcast_protocol::ErrorCode::Unavailable,
        message: format!(
            "the broker's store failed ({error}); nothing was done: try again once it is back"
        ),
    }
}

impl Server {
    /// After a store failure: answers every request "unavailable" (nothing is done, so
    /// retrying later is safe) while trying to open the store again, more slowly each
    /// time; the core built from it is returned, or `None` at shutdown.
    pub(super) async fn outage<S: Store>(
        &mut self,
        error: &StoreError,
        reopen: &mut impl FnMut(u64) -> Result<Core<S>>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Core<S>>> {
        tracing::error!(
            error = %error,
            "store write failed: nothing of the batch was acknowledged; answering \"unavailable\" until the store opens again"
        );
        let unavailable = unavailable(error);
        let mut retry_in = self.reopen_delay.first(Instant::now());
        let mut next_try = tokio::time::Instant::now() + retry_in;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(None),
                Some(()) = self.api_calls.refuse_next(unavailable.clone()) => {}
                going = self.listeners.read_waiting(&mut self.batch, MAX_BATCH) => {
                    if !going.context("the request socket failed")? {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(next_try) => {
                    let now = now_us();
                    match reopen(now) {
                        Ok(core) => {
                            tracing::warn!("store open again: state read back from it, taking requests");
                            self.reopen_delay.recovered(retry_in, Instant::now());
                            self.space.check_soon();
                            return Ok(Some(core));
                        }
                        Err(e) => {
                            retry_in = ReopenDelay::after_failure(retry_in);
                            tracing::warn!(error = %format!("{e:#}"), retry_in = ?retry_in, "store still unavailable");
                            next_try = tokio::time::Instant::now() + retry_in;
                        }
                    }
                }
            }
            self.answer_each(&unavailable);
        }
    }

    /// Answers each request of the batch with `reply` (nothing is done).
    pub(super) fn answer_each(&mut self, reply: &jobcast_protocol::Reply) {
        let mut out = Outbox::default();
        let mut refusals = Vec::new();
        let now_ms = now_us() / 1_000;
        for incoming in std::mem::take(&mut self.batch) {
            let Incoming::Request { peer, payload } = incoming else {
                continue;
            };
            if let Ok(opened) = self.open_request(&peer, &payload, now_ms, &mut refusals, &mut out)
            {
                out.reply(
                    &ReplyTo::peer(&peer, &opened.from),
                    opened.id,
                    reply.clone(),
                );
            }
        }
        if !out.replies.is_empty() || !refusals.is_empty() {
            self.listeners.sockets.send(outgoing(
                &self.running.keys,
                &self.previous_key_peers,
                out,
                refusals,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap() {
        let mut delay = ReopenDelay::FIRST;
        let mut seen = vec![delay];
        for _ in 0..8 {
            delay = ReopenDelay::after_failure(delay);
            seen.push(delay);
        }
        assert_eq!(seen[1], Duration::from_secs(1));
        assert_eq!(seen[4], Duration::from_secs(8));
        assert_eq!(*seen.last().unwrap(), ReopenDelay::MAX);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_failure_soon_after_a_recovery_waits_longer_and_a_stable_store_starts_over() {
        let start = Instant::now();
        let mut delay = ReopenDelay::new();
        assert_eq!(delay.first(start), ReopenDelay::FIRST);
        // Recovered after waiting 4 s: the next outage within a minute waits 8 s first.
        delay.recovered(Duration::from_secs(4), start);
        assert_eq!(
            delay.first(start + Duration::from_secs(5)),
            Duration::from_secs(8)
        );
        assert_eq!(
            delay.first(start + ReopenDelay::STABLE),
            ReopenDelay::FIRST,
            "a store that worked for a minute starts over"
        );
    }
}
