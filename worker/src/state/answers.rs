//! The answers to the worker's requests, and what the reporter learnt delivering run
//! reports: registration, grants, refusals, and a revoked key.

use super::*;

/// How soon a request a standby answered (or one refused as sent before the broker
/// began acting) is asked again.
const NOT_LEADER_RETRY_MS: u64 = 200;

impl WorkerState {
    /// The end of a request sent through [`Action::Request`] at `sent_ms`.
    pub fn on_answer_to(
        &mut self,
        purpose: Purpose,
        sent_ms: u64,
        answer: Answer,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        match purpose {
            Purpose::Register => self.register_in_flight = false,
            Purpose::Claim { .. } => self.claim_in_flight = false,
            _ => {}
        }
        let reply = match answer {
            // A standby (several brokers on one database) did nothing and decides
            // nothing: it is not heard as the broker (the lease is the leader's to renew),
            // and what was asked is asked again at its usual time.
            Answer::Reply(Reply::NotLeader { leader }) => {
                match leader {
                    // The same epoch again too: after moving on from the leader (a silence)
                    // the worker is sent back to it.
                    Some(leader) if leader.epoch >= self.followed_epoch => {
                        tracing::info!(leader = %leader.router, epoch = leader.epoch, "the broker is a standby: following the leader it names");
                        self.followed_epoch = leader.epoch;
                        actions.push(Action::Follow(leader));
                    }
                    _ => {
                        if !std::mem::replace(&mut self.broker_unavailable, true) {
                            tracing::warn!(
                                ?purpose,
                                "the broker is a standby and names no newer leader; asking again"
                            );
                        }
                    }
                }
                // A standby answers at once and a takeover takes a moment: ask again
                // soon rather than at the next heartbeat.
                self.next_heartbeat_ms = self.next_heartbeat_ms.min(now_ms + NOT_LEADER_RETRY_MS);
                return actions;
            }
            Answer::Reply(reply) => {
                self.last_heard_ms = now_ms;
                self.renew_lease(sent_ms, now_ms);
                self.auth_refusals = 0;
                let unavailable = matches!(
                    reply,
                    Reply::Error {
                        code: ErrorCode::Unavailable,
                        ..
                    }
                );
                if !unavailable && std::mem::take(&mut self.broker_unavailable) {
                    tracing::info!("the broker takes requests again");
                }
                reply
            }
            Answer::Refused { reason, .. }
                if reason == jobcast_protocol::envelope::Rejection::BEFORE_START =>
            {
                // Sealed before the broker began acting (it started, or took over, as
                // this was on its way): refused unread, which says nothing about the key.
                // Asked again soon, sealed anew.
                tracing::info!(
                    ?purpose,
                    "the broker began acting after this request was sent; asking again"
                );
                self.next_heartbeat_ms = self.next_heartbeat_ms.min(now_ms + NOT_LEADER_RETRY_MS);
                return actions;
            }
            Answer::Refused { reason, detail } => {
                tracing::error!(%reason, ?purpose, "the broker refuses this worker: {detail}");
                self.auth_refusals += 1;
                if self.auth_refusals >= MAX_AUTH_REFUSALS && self.refused.is_none() {
                    self.refused = Some(format!(
                        "{detail}. Add this worker's id and secret under [keys.workers] in the broker's config (then reload or restart the broker), or correct this worker's secret"
                    ));
                    // Its reports are refused too: the worker waits for its runs'
                    // processes, not for acknowledgements that cannot come.
                    self.reports_refused = true;
                    if !self.draining {
                        self.begin_drain(now_ms, &mut actions);
                    }
                }
                return actions;
            }
            Answer::Failed(why) => {
                tracing::debug!(?purpose, %why, "request failed");
                return actions;
            }
        };
        match reply {
            Reply::Registered {
                boot_id,
                heartbeat_interval_ms,
                orders,
                lease_ms,
                starts_in_ends,
                reports_together,
            } => {
                self.lease_ms = (lease_ms > 0).then_some(lease_ms);
                self.starts_in_ends = starts_in_ends;
                self.reports_together = reports_together;
                // A new session at the broker: it counts no definition as sent.
                self.definitions.clear();
                if self.boot_id != Some(boot_id) {
                    tracing::info!(boot_id = %boot_id, "registered with the broker");
                    // A claim held by an earlier broker process (or core) is never
                    // answered: ask anew instead of waiting for its timeout.
                    self.claim_in_flight = false;
                }
                self.boot_id = Some(boot_id);
                self.heartbeat_ms = heartbeat_interval_ms.clamp(100, 60_000);
                self.registered = true;
                self.want_work = true;
                self.apply(orders, now_ms, &mut actions);
                self.maybe_claim(now_ms, &mut actions);
            }
            Reply::Orders(orders) => self.apply(orders, now_ms, &mut actions),
            Reply::Granted { runs, more_queued } => {
                if let Purpose::Claim { sent_ms } = purpose {
                    // Slots left free wait in a new claim, unless the broker answered
                    // "nothing" at once instead of holding the claim (it is draining this
                    // worker, or does not hold claims): then a wake-up or the heartbeat
                    // asks again.
                    let held_ms = now_ms.saturating_sub(sent_ms);
                    self.want_work = !runs.is_empty()
                        || more_queued
                        || held_ms >= CLAIM_WAIT.as_millis() as u64 / 2;
                }
                self.more_queued = more_queued;
                self.granted(runs, now_ms, &mut actions);
            }
            Reply::Error {
                code: ErrorCode::NotRegistered,
                ..
            } => self.set_unregistered(&mut actions),
            Reply::Error {
                code: ErrorCode::Revoked,
                message,
            } => self.revoke(message, &mut actions),
            Reply::Error {
                code: ErrorCode::Forbidden,
                message,
            } if purpose == Purpose::Register => {
                self.refused = Some(message);
                if !self.draining {
                    self.begin_drain(now_ms, &mut actions);
                }
            }
            // Passing (a full disk at the broker): the heartbeat, registration or claim is
            // sent again at its usual time. Logged once, not per answer.
            Reply::Error {
                code: ErrorCode::Unavailable,
                message,
            } if !std::mem::replace(&mut self.broker_unavailable, true) => {
                tracing::warn!(?purpose, "broker cannot take requests now: {message}");
            }
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            } => {}
            Reply::Error { code, message } => {
                tracing::error!(?purpose, ?code, "broker refused a request: {message}");
            }
            _ => {}
        }
        actions
    }

    /// The connection to the broker closed (the broker stopped, or its host went away).
    /// With several brokers the worker moves on to the next at once, rather than after a
    /// silence (a standby takes over at once from a broker that stopped); once per
    /// closing, however many requests it failed.
    pub fn on_connection_closed(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.identity.brokers > 1 && now_ms >= self.moved_on_ms {
            tracing::info!("the broker's connection closed: trying the next broker");
            self.moved_on_ms = now_ms + self.heartbeat_ms;
            self.reconnect(now_ms, &mut actions);
        }
        actions
    }

    /// What the reporter learnt delivering a report.
    pub fn on_report(&mut self, answer: ReportAnswer, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match answer {
            ReportAnswer::FinishAcked(run_id) => {
                if self.held.remove(&run_id).is_some() {
                    self.remember_end(run_id);
                }
            }
            ReportAnswer::Granted { runs, more_queued } => {
                self.last_heard_ms = now_ms;
                // Slots still free after this wait in a claim the broker holds.
                self.want_work = true;
                self.more_queued = more_queued;
                self.granted(runs, now_ms, &mut actions);
            }
            ReportAnswer::NotRegistered => self.set_unregistered(&mut actions),
            ReportAnswer::Heard => self.last_heard_ms = now_ms,
            ReportAnswer::Revoked(message) => self.revoke(message, &mut actions),
        }
        actions
    }

    /// The broker answered, sealed with this worker's key, that a reload revoked the key:
    /// nothing this worker does counts any more. Every run is stopped now (the broker
    /// gives them up once they are), ready runs are dropped, and the worker exits with
    /// [`crate::session::EXIT_REFUSED`] as soon as the processes have ended.
    pub(super) fn revoke(&mut self, message: String, actions: &mut Vec<Action>) {
        if self.revoked {
            return;
        }
        tracing::error!("{message}: stopping every run and exiting");
        self.revoked = true;
        self.reports_refused = true;
        self.draining = true;
        self.ready.clear();
        self.refused = Some(format!(
            "{message}. Give this worker its new secret (or add its key back under [keys.workers] in the broker's config)"
        ));
        self.stop_all(actions);
    }
}
