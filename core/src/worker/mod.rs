//! Requests from workers, one module each; this one routes them.

mod claim;
mod leaving;
mod log_chunk;
mod orders;
mod pong;
mod register;
mod release;
pub(crate) mod run_finished;
mod run_started;

use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Outbox, PeerId};
pub(crate) use claim::cancel_waiting_claim;
use claim::ClaimRequest;
use jobcast_protocol::{Reply, Report, WorkerRequest, MAX_REPORTS};

impl<S: Store> Core<S> {
    /// Handles a request from a worker; `None` when the answer comes later (a claim
    /// waiting for runs).
    pub(crate) fn handle_worker(
        &mut self,
        peer: &PeerId,
        worker: &str,
        id: u64,
        request: WorkerRequest,
        now_us: u64,
        out: &mut Outbox,
    ) -> Handled<Option<Reply>> {
        let now = Now::from_us(now_us);
        let registering = matches!(request, WorkerRequest::Register(_));
        if !registering && !self.tables.workers.touch(peer, worker, now.ms()) {
            return Err(CoreError::NotRegistered);
        }
        self.worker_request(peer, worker, id, request, now, out)
    }

    /// A request from a worker the broker knows (or a registration).
    fn worker_request(
        &mut self,
        peer: &PeerId,
        worker: &str,
        id: u64,
        request: WorkerRequest,
        now: Now,
        out: &mut Outbox,
    ) -> Handled<Option<Reply>> {
        Ok(Some(match request {
            WorkerRequest::Register(register) => {
                self.cancel_waiting_claim(worker, out);
                self.register(peer, worker, register, now, out)?
            }
            WorkerRequest::Heartbeat(heartbeat) => self.heartbeat(worker, heartbeat, out),
            WorkerRequest::FetchOrders => Reply::Orders(self.orders_for(worker, &[])),
            WorkerRequest::Claim { max, wait_ms } => {
                let claim = ClaimRequest {
                    peer,
                    id,
                    max,
                    wait_ms,
                };
                return Ok(self.claim_request(worker, claim, now, out)?);
            }
            WorkerRequest::RunStarted {
                run_id,
                pid,
                spawned_at_us,
            } => {
                self.run_started(worker, &run_id, pid, spawned_at_us, now, out)?;
                Reply::Ack
            }
            WorkerRequest::LogChunk {
                run_id,
                offset,
                data,
            } => {
                self.log_chunk(worker, &run_id, offset, &data, now, out)?;
                Reply::Ack
            }
            WorkerRequest::RunFinished(finished) => {
                let claim = finished.claim;
                self.run_finished(worker, finished, now, out)?;
                if claim > 0 {
                    self.claim(worker, claim, now)?
                } else {
                    Reply::Ack
                }
            }
            WorkerRequest::Release { run_ids } => {
                self.release(worker, &run_ids, now, out)?;
                Reply::Ack
            }
            WorkerRequest::Pong { ping_id, info } => {
                pong::pong(
                    &mut self.tables.workers,
                    &mut self.tables.pings,
                    worker,
                    (ping_id, info),
                    now.us(),
                    out,
                );
                Reply::Ack
            }
            WorkerRequest::Leaving => self.leaving(worker, out)?,
            WorkerRequest::Reports(reports) => {
                return self.reports(peer, worker, id, reports, now, out);
            }
        }))
    }

    /// Several reports in one message: each handled as if it came on its own, in order
    /// (the worker heard from once, for the message), and answered in one reply (a
    /// refusal answers its report, not the others).
    fn reports(
        &mut self,
        peer: &PeerId,
        worker: &str,
        id: u64,
        reports: Vec<Report>,
        now: Now,
        out: &mut Outbox,
    ) -> Handled<Option<Reply>> {
        if reports.is_empty() || reports.len() > MAX_REPORTS {
            return Err(CoreError::TooManyReports {
                max: MAX_REPORTS,
                asked: reports.len(),
            });
        }
        let mut replies = Vec::with_capacity(reports.len());
        for report in reports {
            let reply = match self.worker_request(peer, worker, id, report.into(), now, out) {
                // A report is always answered at once.
                Ok(reply) => reply.unwrap_or(Reply::Ack),
                Err(refusal) => refusal.into_reply()?,
            };
            replies.push(reply);
        }
        Ok(Some(Reply::Reports(replies)))
    }
}
