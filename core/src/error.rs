//! Why the core refused a request: one type, mapped once to the protocol's error code (the
//! HTTP API maps that code to a status in `http/error.rs`).

use crate::schedule::ScheduleError;
use crate::store::StoreError;
use jobcast_protocol::job::PriorityError;
use jobcast_protocol::jobfile::JobProblem;
use jobcast_protocol::names::InvalidName;
use jobcast_protocol::params::ParamError;
use jobcast_protocol::{ErrorCode, Reply};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoreError {
    /// The store failed: not the requester's fault, and not answered as a refusal (the
    /// server stops the batch).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("job {job:?}: {problem}")]
    InvalidJob { job: String, problem: JobProblem },
    #[error("job {job:?} is defined twice")]
    DefinedTwice { job: String },
    #[error("job {job:?}: {error}")]
    BadSchedule { job: String, error: ScheduleError },
    #[error("job {job:?} lists child {child:?}, which is not defined")]
    NoSuchChild { job: String, child: String },
    #[error("the job chain loops: {}", cycle.join(" -> "))]
    ChainLoops { cycle: Vec<String> },
    #[error("limit {limit} is over {max}, the most one listing returns: page with `before`")]
    ListTooLong { limit: u32, max: u32 },
    #[error("name at least one run to kill")]
    NothingToKill,
    #[error("no pool {pool} that your jobs use")]
    NoSuchPool { pool: String },
    #[error("search output for at most {max} bytes of text")]
    SearchTooLong { max: usize },
    #[error("no standing alert {id}")]
    NoSuchAlert { id: String },
    #[error("name 1 to {max} runs at a time, not {asked}")]
    BadBulk { max: usize, asked: usize },
    #[error("send 1 to {max} reports in one message, not {asked}")]
    TooManyReports { max: usize, asked: usize },
    #[error("job {job}: {error}")]
    BadParams { job: String, error: ParamError },
    #[error(transparent)]
    BadPriority(#[from] PriorityError),
    #[error("an idempotency key has 1 to {max} bytes")]
    BadIdempotencyKey { max: usize },
    #[error("worker {worker} still holds runs ({}): report their ends before leaving", runs.join(", "))]
    StillHoldsRuns { worker: String, runs: Vec<String> },
    #[error("concurrency must be at least 1")]
    NoConcurrency,
    #[error("prefetch must be at most {max}")]
    TooMuchPrefetch { max: u32 },
    #[error("no job named {name:?} (jobs: {known})")]
    NoSuchJob { name: String, known: String },
    #[error("no run matches {selector:?}")]
    NoSuchRun { selector: String },
    #[error("{selector:?} matches several runs: {}", candidates.join(", "))]
    Ambiguous {
        selector: String,
        candidates: Vec<String>,
    },
    #[error("no connected worker named {name:?} (connected: {connected})")]
    NoSuchWorker { name: String, connected: String },
    #[error("run {run_id} has not finished yet")]
    NotFinished { run_id: String },
    #[error("the key of worker {worker:?} may not serve pool {pool:?} (allowed: {allowed})")]
    PoolNotAllowed {
        worker: String,
        pool: String,
        allowed: String,
    },
    #[error("the admin key cannot send worker requests")]
    AdminKeyForWorkerRequest,
    #[error("this request needs the admin key")]
    NeedsAdminKey,
    #[error("a token limited to teams cannot {what}: it is every team's")]
    EveryTeamsOnly { what: &'static str },
    #[error("no session for this worker: register first")]
    NotRegistered,
    #[error("back up into {path:?}: {why}")]
    BadBackupPath { path: String, why: &'static str },
    #[error("the run could not be created")]
    RunNotCreated,
    #[error("{}", .0.describe())]
    DiskLow(crate::LowDisk),
}

/// What a request module returns: its reply, or why it refused.
pub type Handled<T = Reply> = Result<T, CoreError>;

impl CoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Store(_) | CoreError::RunNotCreated => ErrorCode::Internal,
            CoreError::InvalidName(_)
            | CoreError::InvalidJob { .. }
            | CoreError::DefinedTwice { .. }
            | CoreError::BadSchedule { .. }
            | CoreError::NoSuchChild { .. }
            | CoreError::ChainLoops { .. }
            | CoreError::ListTooLong { .. }
            | CoreError::NothingToKill
            | CoreError::BadBulk { .. }
            | CoreError::TooManyReports { .. }
            | CoreError::SearchTooLong { .. }
            | CoreError::BadParams { .. }
            | CoreError::BadPriority(_)
            | CoreError::BadIdempotencyKey { .. }
            | CoreError::StillHoldsRuns { .. }
            | CoreError::NoConcurrency
            | CoreError::TooMuchPrefetch { .. }
            | CoreError::BadBackupPath { .. }
            | CoreError::NotFinished { .. } => ErrorCode::BadRequest,
            CoreError::NoSuchJob { .. }
            | CoreError::NoSuchRun { .. }
            | CoreError::NoSuchAlert { .. }
            | CoreError::NoSuchPool { .. }
            | CoreError::NoSuchWorker { .. } => ErrorCode::NotFound,
            CoreError::Ambiguous { .. } => ErrorCode::Ambiguous,
            CoreError::PoolNotAllowed { .. }
            | CoreError::AdminKeyForWorkerRequest
            | CoreError::NeedsAdminKey
            | CoreError::EveryTeamsOnly { .. } => ErrorCode::Forbidden,
            CoreError::NotRegistered => ErrorCode::NotRegistered,
            CoreError::DiskLow(_) => ErrorCode::Unavailable,
        }
    }

    /// The refusal as the reply to send; a store failure stays an error for the server.
    pub fn into_reply(self) -> Result<Reply, StoreError> {
        match self {
            CoreError::Store(e) => Err(e),
            refusal => Ok(Reply::Error {
                code: refusal.code(),
                message: refusal.to_string(),
            }),
        }
    }
}

/// Names for an error message: "a, b, c", or "none".
pub(crate) fn listed<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_code_and_a_plain_message() {
        let cases = [
            (
                CoreError::NoSuchJob {
                    name: "x".into(),
                    known: listed(["a".to_string(), "b".to_string()].iter()),
                },
                ErrorCode::NotFound,
                "no job named \"x\" (jobs: a, b)",
            ),
            (
                CoreError::Ambiguous {
                    selector: "ab".into(),
                    candidates: vec!["ab1".into(), "ab2".into()],
                },
                ErrorCode::Ambiguous,
                "\"ab\" matches several runs: ab1, ab2",
            ),
            (
                CoreError::NoSuchWorker {
                    name: "w9".into(),
                    connected: listed(std::iter::empty()),
                },
                ErrorCode::NotFound,
                "no connected worker named \"w9\" (connected: none)",
            ),
            (
                CoreError::NotFinished {
                    run_id: "r1".into(),
                },
                ErrorCode::BadRequest,
                "run r1 has not finished yet",
            ),
            (
                CoreError::InvalidJob {
                    job: "j".into(),
                    problem: JobProblem::OwnChild,
                },
                ErrorCode::BadRequest,
                "job \"j\": a job cannot be its own child",
            ),
            (
                CoreError::NotRegistered,
                ErrorCode::NotRegistered,
                "no session for this worker: register first",
            ),
        ];
        for (error, code, message) in cases {
            assert_eq!(
                error.into_reply().ok(),
                Some(Reply::Error {
                    code,
                    message: message.into()
                })
            );
        }
    }

    #[test]
    fn a_store_failure_is_not_a_refusal() {
        let failure = CoreError::Store(StoreError::Engine("disk gone".into()));
        assert_eq!(failure.code(), ErrorCode::Internal);
        assert!(failure.into_reply().is_err());
    }
}
