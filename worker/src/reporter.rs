//! Delivers run reports (started, log chunks, finished) to the broker, in order, until
//! each is acknowledged.
//!
//! Reports are pipelined: up to [`WINDOW`] are in flight at once on the one connection,
//! which the broker handles in order. After a failure everything not acknowledged is
//! sent again in the same order; the broker ignores what it has already seen, so a
//! report is never lost and never applied twice.
//!
//! A start or a log chunk waits up to [`GATHER`] for more reports to go with it, and so
//! does a run's end while its worker holds ready runs (the slot it freed is busy again);
//! any other end goes at once, and takes with it what waits.

use crate::state::{ReportAnswer, REQUEST_TIMEOUT};
use jobcast_client::{Client, ClientError};
use jobcast_protocol::{ErrorCode, Reply, Report, StartedAs, WorkerRequest};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

const WINDOW: usize = 64;
/// The most output one message of reports carries (the broker takes messages of up to
/// 1 MiB; a log chunk is at most 64 KiB).
const TOGETHER_LOG_BYTES: usize = 512 << 10;

/// The longest a start or a log chunk waits for other reports to go with it. A short
/// run's start, output and end then reach the broker together, in one batch made
/// durable by one commit, where they took two or three (and as many round trips). The
/// broker learns of a start this much later; it does not give away a run it granted
/// and has not heard started while the worker is heard from (docs/ARCHITECTURE.md,
/// "Reports gathered").
pub const GATHER: Duration = Duration::from_millis(10);

#[derive(Clone, Default)]
pub struct Reporter {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    wake: Notify,
    log_backlog: AtomicUsize,
    /// The broker takes a run's start inside its end: see [`Reporter::push`].
    starts_in_ends: AtomicBool,
    /// The broker takes a window of reports in one message (`WorkerRequest::Reports`).
    reports_together: AtomicBool,
}

#[derive(Default)]
struct Queue {
    reports: VecDeque<Queued>,
    /// The first this many reports are on their way (the window being sent): they stay
    /// as they are until answered.
    sending: usize,
}

impl Queue {
    /// Copies of the first `n` reports, oldest first.
    fn front(&self, n: usize) -> Vec<WorkerRequest> {
        self.reports
            .iter()
            .take(n)
            .map(|queued| queued.request.clone())
            .collect()
    }

    /// A start report still waiting (not being sent) for `run_id`, with nothing of that
    /// run queued after it: taken out, to go with the run's end.
    fn take_unsent_start(&mut self, run_id: &str) -> Option<StartedAs> {
        let of_run = |queued: &Queued| match &queued.request {
            WorkerRequest::RunStarted { run_id: id, .. }
            | WorkerRequest::LogChunk { run_id: id, .. } => id == run_id,
            WorkerRequest::RunFinished(finished) => finished.run_id == run_id,
            _ => false,
        };
        let last = self.reports.iter().rposition(of_run)?;
        if last < self.sending {
            return None;
        }
        let WorkerRequest::RunStarted {
            pid, spawned_at_us, ..
        } = self.reports[last].request
        else {
            return None;
        };
        self.reports.remove(last);
        Some(StartedAs { pid, spawned_at_us })
    }
}

struct Queued {
    request: WorkerRequest,
    at: Instant,
    /// Whether it may wait for others to go with it (see [`gathering_for`]).
    may_wait: bool,
}

fn log_len(request: &WorkerRequest) -> usize {
    match request {
        WorkerRequest::LogChunk { data, .. } => data.len(),
        _ => 0,
    }
}

/// Whether a report may wait for others to go with it, unless its sender says: a start
/// or output, which nothing on the worker waits on. A run's end frees a slot, and its
/// answer may carry the next grant.
fn may_wait(request: &WorkerRequest) -> bool {
    matches!(
        request,
        WorkerRequest::RunStarted { .. } | WorkerRequest::LogChunk { .. }
    )
}

/// How much longer the queued reports wait before they go: `None` to send them now (one
/// of them may not wait, the window is full, or the oldest has waited [`GATHER`]).
fn gathering_for(queue: &VecDeque<Queued>, now: Instant) -> Option<Duration> {
    let oldest = queue.front()?;
    if queue.len() >= WINDOW || !queue.iter().all(|queued| queued.may_wait) {
        return None;
    }
    let waited = now.saturating_duration_since(oldest.at);
    GATHER.checked_sub(waited).filter(|left| !left.is_zero())
}

/// How many of the first `n` queued reports fit in `budget` bytes of output (at least
/// one).
fn within_log_bytes(queue: &VecDeque<Queued>, n: usize, budget: usize) -> usize {
    let mut bytes = 0;
    let fitting = queue
        .iter()
        .take(n)
        .take_while(|queued| {
            bytes += log_len(&queued.request);
            bytes <= budget
        })
        .count();
    fitting.max(1).min(queue.len().min(n))
}

/// What became of one report of a window.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Replied(Reply),
    /// The client has shut down.
    Closed,
    NotDelivered(String),
}

impl Answer {
    fn of(result: Result<Reply, ClientError>) -> Answer {
        match result {
            Ok(reply) => Answer::Replied(reply),
            Err(ClientError::Closed) => Answer::Closed,
            Err(e) => Answer::NotDelivered(e.to_string()),
        }
    }
}

/// Sends a window of reports and waits for their answers, one for each: in one message
/// (`together`, more than one report), or one message each, pipelined. One deadline for
/// the window: a broker that died with several of these unanswered costs one timeout,
/// not one per report.
async fn send_window(client: &Client, batch: &[WorkerRequest], together: bool) -> Vec<Answer> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let reports: Option<Vec<Report>> = match together && batch.len() > 1 {
        true => batch
            .iter()
            .map(|request| Report::try_from(request.clone()).ok())
            .collect(),
        false => None,
    };
    if let Some(reports) = reports {
        let answer = client
            .submit(WorkerRequest::Reports(reports))
            .wait(REQUEST_TIMEOUT)
            .await;
        match answer {
            // Refused as a message (a broker that takes fewer at a time): nothing of it
            // was handled; the reports go one by one below.
            Ok(Reply::Error {
                code: ErrorCode::BadRequest,
                message,
            }) => tracing::debug!("reports refused together ({message}); sending them one by one"),
            answer => return answers_to_together(answer, batch.len()),
        }
    }
    // Submitted in order from this one task, so they reach the broker in order.
    let pending: Vec<_> = batch
        .iter()
        .map(|request| client.submit(request.clone()))
        .collect();
    let mut answers = Vec::with_capacity(batch.len());
    for reply in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        answers.push(Answer::of(reply.wait(left).await));
    }
    answers
}

/// The answers to a window sent together, one for each of its `n` reports.
fn answers_to_together(answer: Result<Reply, ClientError>, n: usize) -> Vec<Answer> {
    match answer {
        Ok(Reply::Reports(replies)) => {
            let mut replies = replies.into_iter();
            // A reply the broker left out counts as not delivered: sent again.
            (0..n)
                .map(|_| match replies.next() {
                    Some(reply) => Answer::Replied(reply),
                    None => Answer::NotDelivered("no reply for this report".into()),
                })
                .collect()
        }
        // An answer to the whole message (not registered, not the leader, the store
        // unavailable), or none, is each report's.
        whole => vec![Answer::of(whole); n],
    }
}

impl Reporter {
    /// Whether the broker takes several reports in one message (its `Registered` says).
    pub fn reports_together(&self, yes: bool) {
        self.inner.reports_together.store(yes, Ordering::Relaxed);
    }

    /// Whether the broker takes a run's start inside its end (its `Registered` says).
    pub fn starts_in_ends(&self, yes: bool) {
        self.inner.starts_in_ends.store(yes, Ordering::Relaxed);
    }

    /// Queues a report, which waits for others to go with it if it is a start or output.
    pub fn push(&self, request: WorkerRequest) {
        let may_wait = may_wait(&request);
        self.push_as(request, may_wait);
    }

    /// Queues a report that may wait up to [`GATHER`] for others to go with it, or none
    /// (`may_wait` false: it goes at once, and what waits goes with it). A run's end whose
    /// start has not gone yet (a short run) takes the start along, where the broker takes
    /// it there: one report instead of two.
    pub fn push_as(&self, mut request: WorkerRequest, may_wait: bool) {
        self.inner
            .log_backlog
            .fetch_add(log_len(&request), Ordering::Relaxed);
        if let Ok(mut queue) = self.inner.queue.lock() {
            if let WorkerRequest::RunFinished(finished) = &mut request {
                if finished.started.is_none() && self.inner.starts_in_ends.load(Ordering::Relaxed) {
                    finished.started = queue.take_unsent_start(&finished.run_id);
                }
            }
            queue.reports.push_back(Queued {
                request,
                at: Instant::now(),
                may_wait,
            });
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
            .map(|q| q.reports.is_empty())
            .unwrap_or(true)
    }

    /// The first `n` reports still to be acknowledged, oldest first.
    #[cfg(test)]
    pub(crate) fn front(&self, n: usize) -> Vec<WorkerRequest> {
        self.inner
            .queue
            .lock()
            .map(|q| q.front(n))
            .unwrap_or_default()
    }

    /// The next window to send: the first `n` reports, which stay as they are until
    /// [`Reporter::remove_acked`]. Reports that go `together` in one message stop short
    /// of [`TOGETHER_LOG_BYTES`] of output (the first goes whatever its size).
    fn take_window(&self, n: usize, together: bool) -> Vec<WorkerRequest> {
        let Ok(mut queue) = self.inner.queue.lock() else {
            return Vec::new();
        };
        let n = match together {
            true => within_log_bytes(&queue.reports, n, TOGETHER_LOG_BYTES),
            false => n,
        };
        let window = queue.front(n);
        queue.sending = window.len();
        window
    }

    /// How much longer what is queued waits for more (see [`gathering_for`]).
    fn gathering(&self) -> Option<Duration> {
        let queue = self.inner.queue.lock().ok()?;
        gathering_for(&queue.reports, Instant::now())
    }

    /// Removes the first `n` entries whose flag in `acked` is set; the window is over.
    fn remove_acked(&self, acked: &[bool]) {
        if let Ok(mut queue) = self.inner.queue.lock() {
            queue.sending = 0;
            let mut index = 0;
            queue.reports.retain(|queued| {
                let keep = !acked.get(index).copied().unwrap_or(false);
                if !keep {
                    self.inner
                        .log_backlog
                        .fetch_sub(log_len(&queued.request), Ordering::Relaxed);
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
            if let Some(left) = self.gathering() {
                // A push wakes this early; the queue is judged again then.
                tokio::select! {
                    () = self.inner.wake.notified() => {}
                    () = tokio::time::sleep(left) => {}
                }
                continue;
            }
            let together = self.inner.reports_together.load(Ordering::Relaxed);
            let batch = self.take_window(WINDOW, together);
            let answers = send_window(&client, &batch, together).await;
            let mut acked = vec![false; batch.len()];
            let mut failed = false;
            for (i, answer) in answers.into_iter().enumerate() {
                match answer {
                    Answer::Replied(Reply::Error {
                        code: ErrorCode::NotRegistered,
                        ..
                    }) => {
                        failed = true;
                        let _ = events.send(ReportAnswer::NotRegistered);
                    }
                    Answer::Replied(Reply::Error {
                        code: ErrorCode::Revoked,
                        message,
                    }) => {
                        failed = true;
                        let _ = events.send(ReportAnswer::Revoked(message));
                    }
                    Answer::Replied(Reply::Error {
                        code: ErrorCode::Unavailable,
                        message,
                    }) => {
                        // Not recorded (the broker's disk is full or its store is being
                        // reopened): kept, and sent again after the back-off.
                        failed = true;
                        tracing::debug!("report not taken: {message}; will retry");
                    }
                    Answer::Replied(Reply::NotLeader { .. }) => {
                        // A standby (several brokers, a failover under way) took nothing:
                        // kept, and sent again to whichever broker leads next.
                        failed = true;
                        tracing::debug!(
                            "report not taken: the broker is not the leader; will retry"
                        );
                    }
                    Answer::Replied(reply) => {
                        acked[i] = true;
                        if let WorkerRequest::RunFinished(finished) = &batch[i] {
                            let _ = events.send(ReportAnswer::FinishAcked(finished.run_id.clone()));
                        }
                        if let Reply::Granted { runs, more_queued } = reply {
                            let _ = events.send(ReportAnswer::Granted { runs, more_queued });
                        }
                    }
                    Answer::Closed => return,
                    Answer::NotDelivered(why) => {
                        failed = true;
                        tracing::debug!(error = %why, "report not delivered; will retry");
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
    fn a_window_sent_in_one_message_stops_short_of_its_output_budget() {
        let reporter = Reporter::default();
        reporter.push(started());
        reporter.push(chunk(0, 300 << 10));
        reporter.push(chunk(300 << 10, 300 << 10));
        reporter.push(chunk(600 << 10, 5));
        // One by one, a window is as many reports as it may hold.
        assert_eq!(reporter.take_window(WINDOW, false).len(), 4);
        // In one message: the start and the first chunk; the second would pass the budget.
        assert_eq!(
            reporter.take_window(WINDOW, true),
            vec![started(), chunk(0, 300 << 10)]
        );
        reporter.remove_acked(&[true, true]);
        // A report over the budget on its own still goes (alone).
        let reporter = Reporter::default();
        reporter.push(chunk(0, TOGETHER_LOG_BYTES + 1));
        reporter.push(chunk(TOGETHER_LOG_BYTES as u64 + 1, 1));
        assert_eq!(reporter.take_window(WINDOW, true).len(), 1);
        // Small reports go up to the window's size.
        let reporter = Reporter::default();
        for n in 0..(WINDOW as u64 + 5) {
            reporter.push(chunk(n, 1));
        }
        assert_eq!(reporter.take_window(WINDOW, true).len(), WINDOW);
    }

    #[test]
    fn a_window_sent_together_gets_an_answer_for_each_report() {
        let not_registered = Reply::Error {
            code: ErrorCode::NotRegistered,
            message: "register first".into(),
        };
        // One reply each, in order; one the broker left out is sent again.
        assert_eq!(
            answers_to_together(
                Ok(Reply::Reports(vec![Reply::Ack, not_registered.clone()])),
                3
            ),
            vec![
                Answer::Replied(Reply::Ack),
                Answer::Replied(not_registered.clone()),
                Answer::NotDelivered("no reply for this report".into()),
            ]
        );
        // An answer to the whole message answers each report.
        assert_eq!(
            answers_to_together(Ok(not_registered.clone()), 2),
            vec![
                Answer::Replied(not_registered.clone()),
                Answer::Replied(not_registered)
            ]
        );
        assert_eq!(
            answers_to_together(Err(ClientError::Closed), 2),
            vec![Answer::Closed, Answer::Closed]
        );
        let timeout = ClientError::Timeout(Duration::from_secs(1));
        assert_eq!(
            answers_to_together(Err(timeout), 1),
            vec![Answer::NotDelivered(
                "the broker did not answer within 1s".into()
            )]
        );
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

    fn finished() -> WorkerRequest {
        WorkerRequest::RunFinished(jobcast_protocol::RunFinished {
            run_id: "r1".into(),
            outcome: jobcast_protocol::Outcome::Exited { code: 0 },
            duration_ms: 1,
            log_bytes: 0,
            claim: 1,
            usage: None,
            started: None,
        })
    }

    fn queued_at(requests: Vec<(WorkerRequest, Instant)>) -> VecDeque<Queued> {
        requests
            .into_iter()
            .map(|(request, at)| Queued {
                may_wait: may_wait(&request),
                request,
                at,
            })
            .collect()
    }

    #[test]
    fn starts_and_output_wait_for_more_from_the_oldest_and_an_end_goes_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(gathering_for(&VecDeque::new(), t0), None, "nothing to send");
        let start = queued_at(vec![(started(), t0)]);
        assert_eq!(gathering_for(&start, t0), Some(GATHER));
        assert_eq!(gathering_for(&start, t0 + ms(4)), Some(GATHER - ms(4)));
        assert_eq!(
            gathering_for(&start, t0 + GATHER),
            None,
            "waited long enough"
        );
        assert_eq!(gathering_for(&start, t0 + GATHER * 3), None);
        // Output pushed later waits only as long as the oldest still may.
        let output = queued_at(vec![(started(), t0), (chunk(0, 3), t0 + ms(8))]);
        assert_eq!(gathering_for(&output, t0 + ms(8)), Some(GATHER - ms(8)));
        // A run's end takes everything before it along, at once.
        let ended = queued_at(vec![(started(), t0), (chunk(0, 3), t0), (finished(), t0)]);
        assert_eq!(gathering_for(&ended, t0), None);
        assert_eq!(gathering_for(&queued_at(vec![(finished(), t0)]), t0), None);
        // A full window goes at once.
        let full = queued_at((0..WINDOW as u64).map(|n| (chunk(n, 1), t0)).collect());
        assert_eq!(gathering_for(&full, t0), None);
        let almost = queued_at((1..WINDOW as u64).map(|n| (chunk(n, 1), t0)).collect());
        assert_eq!(gathering_for(&almost, t0), Some(GATHER));
    }

    #[test]
    fn an_end_its_worker_lets_wait_waits_like_a_start_until_one_that_may_not_comes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let reporter = Reporter::default();
        reporter.push_as(finished(), true);
        let queue = |reporter: &Reporter| {
            let queue = reporter.inner.queue.lock().unwrap();
            queue
                .reports
                .iter()
                .map(|queued| Queued {
                    request: queued.request.clone(),
                    at: t0,
                    may_wait: queued.may_wait,
                })
                .collect::<VecDeque<_>>()
        };
        assert_eq!(gathering_for(&queue(&reporter), t0), Some(GATHER));
        assert_eq!(
            gathering_for(&queue(&reporter), t0 + ms(3)),
            Some(GATHER - ms(3))
        );
        assert_eq!(gathering_for(&queue(&reporter), t0 + GATHER), None);
        // Another slot's end that may not wait takes the first along, at once.
        reporter.push_as(finished(), false);
        assert_eq!(gathering_for(&queue(&reporter), t0), None);
        // `push` decides by the kind: an end does not wait.
        let plain = Reporter::default();
        plain.push(finished());
        assert_eq!(gathering_for(&queue(&plain), t0), None);
    }

    fn started_as(run_id: &str, pid: u32) -> WorkerRequest {
        WorkerRequest::RunStarted {
            run_id: run_id.into(),
            pid,
            spawned_at_us: 77,
        }
    }

    fn finished_as(run_id: &str, started: Option<StartedAs>) -> WorkerRequest {
        let WorkerRequest::RunFinished(mut finished) = finished() else {
            unreachable!()
        };
        finished.run_id = run_id.into();
        finished.started = started;
        WorkerRequest::RunFinished(finished)
    }

    #[test]
    fn an_end_takes_along_its_runs_start_only_while_that_start_waits_alone_and_the_broker_takes_it()
    {
        let folded = Some(StartedAs {
            pid: 1,
            spawned_at_us: 77,
        });
        // A broker that did not say it takes a start inside an end gets both.
        let reporter = Reporter::default();
        reporter.push(started_as("r1", 1));
        reporter.push(finished_as("r1", None));
        assert_eq!(
            reporter.front(10),
            vec![started_as("r1", 1), finished_as("r1", None)]
        );
        let new_reporter = || {
            let reporter = Reporter::default();
            reporter.starts_in_ends(true);
            reporter
        };
        // Waiting, nothing of the run after it: one report for both.
        let reporter = new_reporter();
        reporter.push(started_as("r1", 1));
        reporter.push(started_as("r2", 2));
        reporter.push(finished_as("r1", None));
        assert_eq!(
            reporter.front(10),
            vec![started_as("r2", 2), finished_as("r1", folded)]
        );
        // Output of the run after its start: the start goes first, on its own.
        let reporter = new_reporter();
        reporter.push(started_as("r1", 1));
        reporter.push(chunk(0, 3));
        reporter.push(finished_as("r1", None));
        assert_eq!(
            reporter.front(10),
            vec![started_as("r1", 1), chunk(0, 3), finished_as("r1", None)]
        );
        // A start already on its way stays there.
        let reporter = new_reporter();
        reporter.push(started_as("r1", 1));
        assert_eq!(
            reporter.take_window(WINDOW, false),
            vec![started_as("r1", 1)]
        );
        reporter.push(finished_as("r1", None));
        assert_eq!(
            reporter.front(10),
            vec![started_as("r1", 1), finished_as("r1", None)]
        );
        // Once its window is answered, later starts fold again.
        reporter.remove_acked(&[true]);
        reporter.push(started_as("r3", 1));
        reporter.push(finished_as("r3", None));
        let WorkerRequest::RunFinished(last) = &reporter.front(10)[1] else {
            panic!("not an end")
        };
        assert_eq!(last.started, folded);
    }
}
