//! Delivers run reports (started, log chunks, finished) to the broker, in order, until
//! each is acknowledged.
//!
//! Reports are pipelined: up to [`WINDOW`] are in flight at once on the one connection,
//! which the broker handles in order. After a failure everything not acknowledged is
//! sent again in the same order; the broker ignores what it has already seen, so a
//! report is never lost and never applied twice.

use crate::state::{ReportAnswer, REQUEST_TIMEOUT};
use jobcast_client::{Client, ClientError};
use jobcast_protocol::{ErrorCode, Reply, WorkerRequest};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

const WINDOW: usize = 64;

#[derive(Clone, Default)]
pub struct Reporter {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<WorkerRequest>>,
    wake: Notify,
    log_backlog: AtomicUsize,
}

fn log_len(request: &WorkerRequest) -> usize {
    match request {
        WorkerRequest::LogChunk { data, .. } => data.len(),
        _ => 0,
    }
}

impl Reporter {
    pub fn push(&self, request: WorkerRequest) {
        self.inner
            .log_backlog
            .fetch_add(log_len(&request), Ordering::Relaxed);
        if let Ok(mut queue) = self.inner.queue.lock() {
            queue.push_back(request);
        }
        self.inner.wake.notify_one();
    }

    /// Log bytes queued and not yet acknowledged.
    pub fn log_backlog(&self) -> usize {
        self.inner.log_backlog.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.inner
            .queue
            .lock()
            .map(|q| q.is_empty())
            .unwrap_or(true)
    }

    /// The first `n` reports still to be acknowledged, oldest first.
    pub(crate) fn front(&self, n: usize) -> Vec<WorkerRequest> {
        self.inner
            .queue
            .lock()
            .map(|q| q.iter().take(n).cloned().collect())
            .unwrap_or_default()
    }

    /// Removes the first `n` entries whose flag in `acked` is set.
    fn remove_acked(&self, acked: &[bool]) {
        if let Ok(mut queue) = self.inner.queue.lock() {
            let mut index = 0;
            queue.retain(|request| {
                let keep = !acked.get(index).copied().unwrap_or(false);
                if !keep {
                    self.inner
                        .log_backlog
                        .fetch_sub(log_len(request), Ordering::Relaxed);
                }
                index += 1;
                keep
            });
        }
    }

    /// Sends queued reports while `registered` holds; runs until the client closes.
    pub async fn run(
        self,
        client: Client,
        mut registered: watch::Receiver<bool>,
        events: mpsc::UnboundedSender<ReportAnswer>,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.is_empty() {
                self.inner.wake.notified().await;
                continue;
            }
            if !*registered.borrow() {
                if registered.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let batch = self.front(WINDOW);
            // Submitted in order from this one task, so they reach the broker in order.
            let pending: Vec<_> = batch
                .iter()
                .map(|request| client.submit(request.clone()))
                .collect();
            let mut acked = vec![false; batch.len()];
            let mut failed = false;
            // One deadline for the window: a broker that died with several of these
            // unanswered costs one timeout, not one per report.
            let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
            for (i, reply) in pending.into_iter().enumerate() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match reply.wait(left).await {
                    Ok(Reply::Error {
                        code: ErrorCode::NotRegistered,
                        ..
                    }) => {
                        failed = true;
                        let _ = events.send(ReportAnswer::NotRegistered);
                    }
                    Ok(Reply::Error {
                        code: ErrorCode::Revoked,
                        message,
                    }) => {
                        failed = true;
                        let _ = events.send(ReportAnswer::Revoked(message));
                    }
                    Ok(Reply::Error {
                        code: ErrorCode::Unavailable,
                        message,
                    }) => {
                        // Not recorded (the broker's disk is full or its store is being
                        // reopened): kept, and sent again after the back-off.
                        failed = true;
                        tracing::debug!("report not taken: {message}; will retry");
                    }
                    Ok(Reply::NotLeader { .. }) => {
                        // A standby (several brokers, a failover under way) took nothing:
                        // kept, and sent again to whichever broker leads next.
                        failed = true;
                        tracing::debug!(
                            "report not taken: the broker is not the leader; will retry"
                        );
                    }
                    Ok(reply) => {
                        acked[i] = true;
                        if let WorkerRequest::RunFinished(finished) = &batch[i] {
                            let _ = events.send(ReportAnswer::FinishAcked(finished.run_id.clone()));
                        }
                        if let Reply::Granted { runs, .. } = reply {
                            let _ = events.send(ReportAnswer::Granted(runs));
                        }
                    }
                    Err(ClientError::Closed) => return,
                    Err(e) => {
                        failed = true;
                        tracing::debug!(error = %e, "report not delivered; will retry");
                    }
                }
            }
            if acked.iter().any(|a| *a) {
                let _ = events.send(ReportAnswer::Heard);
            }
            self.remove_acked(&acked);
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            } else {
                backoff = Duration::from_millis(50);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, bytes: usize) -> WorkerRequest {
        WorkerRequest::LogChunk {
            run_id: "r1".into(),
            offset,
            data: vec![b'x'; bytes],
        }
    }

    fn started() -> WorkerRequest {
        WorkerRequest::RunStarted {
            run_id: "r1".into(),
            pid: 1,
            spawned_at_us: 0,
        }
    }

    #[test]
    fn reports_wait_in_order_and_count_their_log_bytes() {
        let reporter = Reporter::default();
        assert!(reporter.is_empty());
        reporter.push(started());
        reporter.push(chunk(0, 10));
        reporter.push(chunk(10, 5));
        assert_eq!(reporter.log_backlog(), 15);
        assert_eq!(reporter.front(2), vec![started(), chunk(0, 10)]);
        assert_eq!(reporter.front(10).len(), 3);
    }

    #[test]
    fn only_acknowledged_reports_leave_the_queue_and_the_rest_keep_their_order() {
        let reporter = Reporter::default();
        reporter.push(started());
        reporter.push(chunk(0, 10));
        reporter.push(chunk(10, 5));
        // The middle one timed out: it stays, ahead of anything pushed later.
        reporter.remove_acked(&[true, false, true]);
        assert_eq!(reporter.front(10), vec![chunk(0, 10)]);
        assert_eq!(reporter.log_backlog(), 10);
        reporter.push(chunk(15, 1));
        assert_eq!(reporter.front(10), vec![chunk(0, 10), chunk(15, 1)]);
        reporter.remove_acked(&[true, true]);
        assert!(reporter.is_empty());
        assert_eq!(reporter.log_backlog(), 0);
    }

    #[test]
    fn clones_share_one_queue() {
        let reporter = Reporter::default();
        let runner_side = reporter.clone();
        runner_side.push(chunk(0, 3));
        assert_eq!(reporter.front(1), vec![chunk(0, 3)]);
        assert_eq!(reporter.log_backlog(), 3);
    }
}
