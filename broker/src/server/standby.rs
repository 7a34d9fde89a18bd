//! Several brokers on one database: a broker that does not hold the leader's lease
//! answers every request `NotLeader`, naming the broker the lease row names, and tries
//! to take the lease again and again; once it has it, it acts on the state it reads from
//! the database, until it stops, its store fails, or the lease is lost.

use super::standby_view::{DatabaseView, VIEW_AGE};
use super::{now_us, Bound, Server, Setup, Stopped, MAX_BATCH};
use crate::election::{Election, Standing, Tenure};
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use jobcast_core::Core;
use jobcast_protocol::{LeaderAddress, Reply};
use std::future::Future;
use std::time::{Duration, Instant};

/// Serves as a standby until the lease is taken (`elect`, tried every `try_every`), then
/// as the leader; again a standby after a lost lease or a store failure; until shutdown.
///
/// `elect` is given where this broker is bound (the lease names it). `on_bound` is told
/// once the first try has settled whether this broker leads: a client that waits for it
/// (a test, a script) and then asks finds a leader that took over before it asked.
pub async fn serve_elected<S: Store + 'static>(
    mut elect: impl FnMut(&Bound, u64) -> Result<Election<Core<S>>>,
    mut replica: impl FnMut(u64) -> Result<Core<S>>,
    try_every: Duration,
    setup: Setup<'_>,
    on_bound: impl FnOnce(&Bound) -> Result<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut bound_at = None;
    let standing_by = crate::http::BrokerRole::Standby { leader: None };
    let (mut server, http) = Server::start(Default::default(), standing_by, setup, |bound| {
        bound_at = Some(bound.clone());
        Ok(())
    })
    .await?;
    let bound = bound_at.context("the server did not say where it is bound")?;
    let elect_bound = bound.clone();
    let mut elect = move |now_us: u64| elect(&elect_bound, now_us);
    // Told after the first try.
    let mut on_bound = Some(move || on_bound(&bound));
    tokio::pin!(shutdown);
    let result = loop {
        let (mut core, tenure, acting_from_us) = match server
            .standby(
                &mut elect,
                &mut replica,
                try_every,
                &mut on_bound,
                shutdown.as_mut(),
            )
            .await
        {
            Ok(Some(elected)) => elected,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Err(e) = server.acting_on(&core, acting_from_us) {
            tracing::error!(error = %format!("{e:#}"), "cannot act on the store's state; handing the lease over");
            tenure.hand_over();
            continue;
        }
        server.acting_until = Some(tenure.acting_until());
        let mut leadership = tenure.leadership();
        core.set_leadership(Some(leadership.borrow_and_update().clone()));
        server.leadership = Some(leadership);
        server.role.send_replace(crate::http::BrokerRole::Leader {
            epoch: tenure.epoch,
        });
        let stopped = server.run(&mut core, shutdown.as_mut()).await;
        server.acting_until = None;
        server.leadership = None;
        server
            .role
            .send_replace(crate::http::BrokerRole::Standby { leader: None });
        match stopped {
            Ok(Stopped::Shutdown) => {
                let closed = super::save_and_close(&mut core);
                // Only once everything is durable: a successor reads it all.
                tenure.hand_over();
                break closed.context("final store flush failed");
            }
            Ok(Stopped::StoreFailed(error)) => {
                // As after a kill: nothing of the batches in flight is answered, and the
                // next leader (perhaps this broker again) reads the state afresh.
                server.forget_in_flight();
                server.let_go_of_held_reads(&mut core, &Reply::NotLeader { leader: None });
                drop(core);
                match &error {
                    StoreError::Fenced(why) => {
                        tracing::warn!(epoch = tenure.epoch, why = %why, "another broker leads now: standing by");
                    }
                    other => {
                        tracing::error!(epoch = tenure.epoch, error = %other, "store write failed: nothing of the batch was acknowledged; handing the lease over and standing by");
                    }
                }
                tenure.hand_over();
            }
            Ok(Stopped::LeaseLost) => {
                server.forget_in_flight();
                server.let_go_of_held_reads(&mut core, &Reply::NotLeader { leader: None });
                drop(core);
                tracing::warn!(
                    epoch = tenure.epoch,
                    "the lease could have run out: no longer acting, standing by"
                );
                tenure.hand_over();
            }
            Err(e) => break Err(e),
        }
    };
    server.service_manager.stopping();
    drop(server);
    if let Some((_, task)) = http {
        task.abort();
    }
    result?;
    tracing::info!("broker stopped");
    Ok(())
}

impl Server {
    /// Answers every request `NotLeader` while trying to take the lease; what to act on
    /// once taken, with when the lease was taken (µs: frames sealed before it are
    /// refused), or `None` at shutdown.
    async fn standby<S: Store>(
        &mut self,
        elect: &mut impl FnMut(u64) -> Result<Election<Core<S>>>,
        replica: &mut impl FnMut(u64) -> Result<Core<S>>,
        try_every: Duration,
        after_first_try: &mut Option<impl FnOnce() -> Result<()>>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<(Core<S>, Tenure, u64)>> {
        let mut leader: Option<LeaderAddress> = None;
        let mut next_try = tokio::time::Instant::now();
        let mut view = DatabaseView::new();
        let mut live_every = tokio::time::interval(VIEW_AGE);
        live_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(None),
                Some(call) = self.api_calls.next() => {
                    let reply = match call.request.only_reads() {
                        true => view
                            .answer(replica, call.request, &call.actor, &call.scope)
                            .unwrap_or_else(|e| {
                            tracing::warn!(error = %format!("{e:#}"), "a standby's read of the database failed");
                            Reply::NotLeader { leader: leader.clone() }
                        }),
                        false => Reply::NotLeader { leader: leader.clone() },
                    };
                    let _ = call.reply.send(reply);
                }
                _ = live_every.tick(), if self.live.has_clients() => {
                    // Pages open on a standby follow the database, a read behind.
                    match view.changes(replica) {
                        Ok(changes) => self.live.publish(changes, now_us() / 1_000),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "a standby's read of the database failed"),
                    }
                }
                going = self.listeners.read_waiting(&mut self.batch, MAX_BATCH) => {
                    if !going.context("the request socket failed")? {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(next_try) => {
                    self.service_manager.alive();
                    let elected = elect(now_us());
                    // Before anyone is told where this broker is: a client told so then
                    // seals its first frame after this, which is then not refused as
                    // sealed before this broker began acting.
                    let taken_at_us = now_us();
                    if let Some(tell) = after_first_try.take() {
                        tell()?;
                    }
                    match elected {
                        Ok(Election::Leader(core, tenure)) => {
                            self.batch.clear();
                            return Ok(Some((core, tenure, taken_at_us)));
                        }
                        Ok(Election::Standby(Standing { leader: now, lease })) => {
                            view.set_lease(Some(lease));
                            if now != leader {
                                match &now {
                                    Some(at) => tracing::info!(leader = %at.router, epoch = at.epoch, "standing by"),
                                    None => tracing::info!("no broker leads; trying to take the lease"),
                                }
                            }
                            leader = now;
                            self.role.send_replace(crate::http::BrokerRole::Standby {
                                leader: leader.clone(),
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "cannot reach the leader's lease");
                            leader = None;
                            view.set_lease(None);
                            self.role.send_replace(crate::http::BrokerRole::Standby { leader: None });
                        }
                    }
                    next_try = tokio::time::Instant::now() + try_every;
                }
            }
            self.answer_each(&Reply::NotLeader {
                leader: leader.clone(),
            });
        }
    }
}

/// Returns once the lease could have run out (the keeper's last word, counted on this
/// host's monotonic clock) or is known lost. Never, without a tenure.
pub(super) async fn lease_ends(
    acting_until: &mut Option<tokio::sync::watch::Receiver<Option<Instant>>>,
) {
    let Some(receiver) = acting_until else {
        return std::future::pending().await;
    };
    loop {
        let Some(until) = *receiver.borrow_and_update() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => return,
            changed = receiver.changed() => {
                if changed.is_err() {
                    // The keeper is gone: the last word stands.
                    tokio::time::sleep_until(until.into()).await;
                    return;
                }
            }
        }
    }
}
