//! Several brokers on one PostgreSQL database: which of them acts. A broker tries to
//! take the leader's lease ([`Elector`]); once it has, a thread keeps renewing it
//! ([`Tenure`]) and tells the loop until when it may act, by its own monotonic clock
//! ([`SelfFence`]). The database has the last word: every commit is fenced with the
//! epoch (`PgStore::open_fenced`).

use crate::leadership::SelfFence;
use crate::store::postgres::lease::{Candidate, Lease, LeaseRow};
use crate::store::postgres::{PgSettings, PgStore};
use jobcast_protocol::{LeaderAddress, Leadership};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The lease as the keeper last renewed it, and when (ms since the epoch, this host's
/// clock): `status` counts the lease's age from there, so a lease the keeper cannot renew
/// shows its age growing.
pub type Renewed = (Leadership, u64);

/// What one try at the lease found.
pub enum Election<C> {
    /// Taken: what to act on (built from the database under the new epoch), and the
    /// tenure that keeps the lease.
    Leader(C, Tenure),
    /// Another broker holds it, or nobody does.
    Standby(Standing),
}

/// What a standby knows of the lease, as of its last try.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// Where the holder is reached, while someone holds the lease.
    pub leader: Option<LeaderAddress>,
    /// The lease and the brokers seen, for a standby's `status` (the leader's name in
    /// `holder`, this broker's in `this_broker`).
    pub lease: Renewed,
}

/// Tries to take the lease for this broker, and opens the store fenced with the epoch
/// it got.
pub struct Elector {
    settings: PgSettings,
    length: Duration,
    candidate: Candidate,
    /// Kept between tries (opened again after an error).
    lease: Option<Lease>,
}

impl Elector {
    pub fn new(settings: PgSettings, length: Duration, candidate: Candidate) -> Elector {
        Elector {
            settings,
            length,
            candidate,
            lease: None,
        }
    }

    /// Where this broker is reached, written with the lease when it takes it.
    pub fn set_addresses(&mut self, (router, publish, http): (String, String, String)) {
        self.candidate.router = router;
        self.candidate.publish = publish;
        self.candidate.http = http;
    }

    /// How often a standby tries: ten times a lease, so that a lease handed over at a
    /// clean stop is taken within a tenth of it.
    pub fn try_every(&self) -> Duration {
        (self.length / 10).max(Duration::from_millis(50))
    }

    /// One try: takes the lease if it has expired or was handed over, and then opens
    /// the store under the new epoch and builds on it with `build`; if that fails, the
    /// lease is handed straight back.
    pub fn try_once<C, E>(
        &mut self,
        build: impl FnOnce(PgStore) -> Result<C, E>,
    ) -> anyhow::Result<Election<C>>
    where
        E: Into<anyhow::Error>,
    {
        let lease = match &mut self.lease {
            Some(lease) => lease,
            empty => empty.insert(Lease::open(&self.settings, self.length)?),
        };
        let (sent, sent_ms) = (Instant::now(), now_ms());
        let taken = match lease.take(&self.candidate) {
            Ok(taken) => taken,
            Err(e) => {
                self.lease = None;
                return Err(e.into());
            }
        };
        let Some(epoch) = taken else {
            lease.seen(&self.candidate)?;
            let row = lease.read()?;
            let brokers = lease.brokers().unwrap_or_default();
            return Ok(Election::Standby(standing(
                &row,
                &self.candidate.holder,
                self.length,
                brokers,
                sent_ms,
            )));
        };
        tracing::info!(epoch, holder = %self.candidate.holder, "took the leader's lease");
        // Who else there is, for `status` (not worth failing a takeover for).
        let brokers = lease
            .seen(&self.candidate)
            .and_then(|()| lease.forget_old_brokers())
            .and_then(|()| lease.brokers())
            .unwrap_or_default();
        let leadership = Leadership {
            epoch,
            holder: self.candidate.holder.clone(),
            this_broker: self.candidate.holder.clone(),
            lease_ms: self.length.as_millis() as u64,
            renewed_ms_ago: 0,
            brokers,
        };
        let built = PgStore::open_fenced(&self.settings, epoch)
            .map_err(anyhow::Error::from)
            .and_then(|store| build(store).map_err(Into::into));
        match built {
            Ok(acting) => Ok(Election::Leader(
                acting,
                Tenure::start(
                    self.settings.clone(),
                    self.candidate.clone(),
                    (leadership, sent_ms),
                    sent,
                ),
            )),
            Err(e) => {
                if let Err(handing) = lease.hand_over(epoch) {
                    tracing::warn!(epoch, error = %handing, "could not hand the lease back");
                }
                Err(e.context("took the lease but could not read the state"))
            }
        }
    }
}

/// Where the lease row says its holder is reached, while someone holds it.
pub fn address(row: &LeaseRow) -> Option<LeaderAddress> {
    row.is_held().then(|| LeaderAddress {
        router: row.router.clone(),
        publish: row.publish.clone(),
        http: row.http.clone(),
        epoch: row.epoch,
    })
}

/// A standby's view of the lease row read at `read_at_ms` (this host's clock): the
/// renewal is dated back by the lease's age as the database counts it.
fn standing(
    row: &LeaseRow,
    this_broker: &str,
    length: Duration,
    brokers: Vec<jobcast_protocol::BrokerSeen>,
    read_at_ms: u64,
) -> Standing {
    let lease_ms = length.as_millis() as u64;
    // The lease runs out `lease_ms` after a renewal, so its age is what is left of it
    // taken from its length (past the length once it has run out).
    let age_ms = (lease_ms as i64).saturating_sub(row.expires_in_ms).max(0) as u64;
    let leader = address(row);
    Standing {
        lease: (
            Leadership {
                epoch: row.epoch,
                holder: match leader {
                    Some(_) => row.holder.clone(),
                    None => String::new(),
                },
                this_broker: this_broker.to_string(),
                lease_ms,
                renewed_ms_ago: 0,
                brokers,
            },
            read_at_ms.saturating_sub(age_ms),
        ),
        leader,
    }
}

/// The lease held: a thread renews it three times a lease and publishes until when this
/// broker may act (`None` once it is lost).
pub struct Tenure {
    pub epoch: u64,
    acting_until: watch::Receiver<Option<Instant>>,
    /// The lease and the brokers seen, as of the last renewal, for `status`.
    leadership: watch::Receiver<Renewed>,
    /// Dropped (with the tenure), it ends the keeper, which gives the lease up so that
    /// another broker (or this one, again) takes it at once.
    ending: mpsc::Sender<()>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl Tenure {
    /// The lease of `epoch` was taken by a statement sent at `taken_sent_at`.
    fn start(
        settings: PgSettings,
        candidate: Candidate,
        renewed: Renewed,
        taken_sent_at: Instant,
    ) -> Tenure {
        let length = Duration::from_millis(renewed.0.lease_ms);
        let epoch = renewed.0.epoch;
        let mut fence = SelfFence::new(length);
        fence.held(taken_sent_at);
        let (tell, acting_until) = watch::channel(fence.acting_until());
        let (tell_leadership, leadership) = watch::channel(renewed);
        let (ending, endings) = mpsc::channel();
        let keeper = std::thread::Builder::new()
            .name("jobcast-lease".into())
            .spawn(move || {
                keep(
                    settings,
                    candidate,
                    fence,
                    Told {
                        acting_until: tell,
                        leadership: tell_leadership,
                    },
                    endings,
                )
            })
            .ok();
        if keeper.is_none() {
            tracing::error!("cannot start the lease's thread: the lease will run out");
        }
        Tenure {
            epoch,
            acting_until,
            leadership,
            ending,
            keeper,
        }
    }

    /// The lease and the brokers seen, as the keeper last read them.
    pub fn leadership(&self) -> watch::Receiver<Renewed> {
        self.leadership.clone()
    }

    /// Until when this broker may act, as the keeper last said (`None`: not at all).
    pub fn acting_until(&self) -> watch::Receiver<Option<Instant>> {
        self.acting_until.clone()
    }

    /// Stops renewing and gives the lease up (if this epoch still holds it), waiting
    /// for that at most a few seconds.
    pub fn hand_over(self) {
        let Tenure { ending, keeper, .. } = self;
        drop(ending);
        if let Some(keeper) = keeper {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !keeper.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// What the keeper tells the loop.
struct Told {
    acting_until: watch::Sender<Option<Instant>>,
    leadership: watch::Sender<Renewed>,
}

/// The keeper's thread: renews until the lease is lost or the tenure ends.
fn keep(
    settings: PgSettings,
    candidate: Candidate,
    mut fence: SelfFence,
    tell: Told,
    ending: mpsc::Receiver<()>,
) {
    let (epoch, length) = {
        let (leadership, _) = &*tell.leadership.borrow();
        (leadership.epoch, Duration::from_millis(leadership.lease_ms))
    };
    let mut lease: Option<Lease> = None;
    loop {
        match ending.recv_timeout(fence.renew_every()) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                hand_over(&settings, length, epoch, lease.as_ref());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let (sent, sent_ms) = (Instant::now(), now_ms());
        let renewed = match &lease {
            Some(lease) => lease.renew(epoch),
            None => Lease::open(&settings, length).and_then(|opened| {
                let renewed = opened.renew(epoch);
                lease = Some(opened);
                renewed
            }),
        };
        match renewed {
            Ok(true) => {
                fence.held(sent);
                tell.acting_until.send_replace(fence.acting_until());
                // For `status` only: a failure to list the brokers costs nothing but
                // that list's freshness.
                let brokers = lease
                    .as_ref()
                    .map(|lease| lease.seen(&candidate).and_then(|()| lease.brokers()));
                tell.leadership.send_modify(|(leadership, renewed_at_ms)| {
                    *renewed_at_ms = sent_ms;
                    if let Some(Ok(brokers)) = brokers {
                        leadership.brokers = brokers;
                    }
                });
            }
            Ok(false) => {
                tracing::warn!(
                    epoch,
                    "the leader's lease was lost: another broker took it, or it ran out"
                );
                fence.lost();
                tell.acting_until.send_replace(None);
                return;
            }
            Err(e) => {
                // The loop stops acting by itself when the lease could have run out.
                tracing::warn!(epoch, error = %e, "could not renew the leader's lease");
                lease = None;
            }
        }
    }
}

fn hand_over(settings: &PgSettings, length: Duration, epoch: u64, lease: Option<&Lease>) {
    let handed = match lease {
        Some(lease) => lease.hand_over(epoch),
        None => Lease::open(settings, length).and_then(|lease| lease.hand_over(epoch)),
    };
    match handed {
        Ok(true) => tracing::info!(epoch, "handed the leader's lease over"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(epoch, error = %e, "could not hand the leader's lease over; it runs out by itself")
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: &str, expires_in_ms: i64) -> LeaseRow {
        LeaseRow {
            epoch: 3,
            holder: holder.into(),
            router: "tcp://a:5555".into(),
            publish: "tcp://a:5556".into(),
            http: "a:8080".into(),
            expires_in_ms,
        }
    }

    #[test]
    fn a_standby_dates_the_leaders_renewal_from_what_is_left_of_the_lease() {
        let lease = Duration::from_secs(5);
        let held = standing(&row("a", 3_800), "b", lease, vec![], 100_000);
        assert_eq!(held.leader.as_ref().map(|l| l.epoch), Some(3));
        let (leadership, renewed_at_ms) = &held.lease;
        assert_eq!(
            (leadership.holder.as_str(), leadership.this_broker.as_str()),
            ("a", "b")
        );
        assert_eq!(*renewed_at_ms, 100_000 - 1_200, "5 s lease, 3.8 s left");

        // Run out: nobody leads, and the age goes past the lease's length.
        let lapsed = standing(&row("a", -700), "b", lease, vec![], 100_000);
        assert_eq!(lapsed.leader, None);
        assert_eq!(lapsed.lease.0.holder, "");
        assert_eq!(lapsed.lease.1, 100_000 - 5_700);
    }
}
