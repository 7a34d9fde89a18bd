//! How `jobcastctl` ends: one message format (`jobcastctl: …` on stderr) and an exit code
//! per kind of outcome, so that scripts can tell "the broker said no" from "there is no
//! broker" from "the run failed". The table is in the README.

use jobcast_client::ClientError;
use jobcast_protocol::{ErrorCode, RunState};
use std::process::ExitCode;
use thiserror::Error;

/// The broker refused or could not do the request (unknown job, ambiguous run, …).
pub(crate) const REFUSED: u8 = 1;
/// The command line or a local file is wrong (clap uses 2 for its own refusals too).
pub(crate) const USAGE: u8 = 2;
/// No broker answered: nothing listens at the endpoint, or not in time.
pub(crate) const UNREACHABLE: u8 = 3;
/// The broker refused the admin key (unknown sender, wrong secret, not allowed).
pub(crate) const DENIED: u8 = 4;
/// The broker cannot take the request now (disk under its reserve, store reopening).
pub(crate) const UNAVAILABLE: u8 = 5;

/// A failure `jobcastctl` knows the kind of.
#[derive(Debug, Error)]
pub(crate) enum Failure {
    /// The broker answered with an error.
    #[error("{message}")]
    Broker { code: ErrorCode, message: String },
    /// Something on this side is wrong: a flag, a file.
    #[error("{0}")]
    Usage(String),
    /// The broker answered with a reply of another kind than the request calls for (a
    /// broker of another version).
    #[error("the broker answered {0:?}, which is not an answer to this request: is it of another version?")]
    UnexpectedReply(String),
    /// The broker is a standby (several brokers on one database); nothing was done.
    #[error("{}", not_leader_message(.0))]
    NotLeader(Option<jobcast_protocol::LeaderAddress>),
}

fn not_leader_message(leader: &Option<jobcast_protocol::LeaderAddress>) -> String {
    match leader {
        Some(leader) => format!(
            "this broker is a standby; the leader (epoch {}) is at {}: ask it there (--broker)",
            leader.epoch, leader.router
        ),
        None => "this broker does not act now (it stands by, or cannot reach its database) and names no leader; nothing was done: try again in a moment".into(),
    }
}

/// The kind of a reply, as it is named on the wire (`enqueued`, `runs`, …).
pub(crate) fn reply_kind(reply: &jobcast_protocol::Reply) -> String {
    match serde_json::to_value(reply) {
        Ok(serde_json::Value::String(kind)) => kind,
        Ok(serde_json::Value::Object(fields)) => fields.keys().next().cloned().unwrap_or_default(),
        _ => "an unreadable reply".to_string(),
    }
}

/// The exit code for an error that ended the command.
pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(failure) = error.downcast_ref::<Failure>() {
        return match failure {
            Failure::Broker { code, .. } => match code {
                ErrorCode::Forbidden | ErrorCode::NotRegistered | ErrorCode::Revoked => DENIED,
                ErrorCode::Unavailable => UNAVAILABLE,
                _ => REFUSED,
            },
            Failure::Usage(_) => USAGE,
            Failure::UnexpectedReply(_) => REFUSED,
            Failure::NotLeader(_) => UNAVAILABLE,
        };
    }
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable { .. } | ClientError::Timeout(_))
        | Some(ClientError::Disconnected) => UNREACHABLE,
        Some(ClientError::Refused { .. }) => DENIED,
        _ => REFUSED,
    }
}

/// What a script gets back from `wait` and `logs --follow` for a run that ended.
pub(crate) fn run_exit_code(state: RunState) -> ExitCode {
    ExitCode::from(match state {
        RunState::Succeeded => 0,
        RunState::Failed => 10,
        RunState::Killed => 11,
        RunState::TimedOut => 12,
        RunState::Lost => 13,
        RunState::Cancelled => 14,
        RunState::Missed => 15,
        // Not an end: the caller waits for one.
        RunState::Queued | RunState::Assigned | RunState::Running => REFUSED,
    })
}

/// A hint added to an unreachable broker's message.
pub(crate) fn hint(error: &anyhow::Error, endpoint: &str) -> Option<String> {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable { .. } | ClientError::Timeout(_)) => Some(format!(
            "is the broker running at {endpoint}? (--broker or JOBCAST_BROKER name another)"
        )),
        Some(ClientError::Refused { .. }) => Some(
            "check the admin secret (--secret-file, --secret or JOBCAST_ADMIN_SECRET) against [keys] admin in the broker's config".to_string(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_own_code() {
        let broker = |code| {
            anyhow::Error::new(Failure::Broker {
                code,
                message: "no".into(),
            })
        };
        assert_eq!(exit_code(&broker(ErrorCode::NotFound)), REFUSED);
        assert_eq!(exit_code(&broker(ErrorCode::Forbidden)), DENIED);
        assert_eq!(exit_code(&broker(ErrorCode::Unavailable)), UNAVAILABLE);
        assert_eq!(
            exit_code(&anyhow::Error::new(Failure::Usage("bad".into()))),
            USAGE
        );
        let unreachable = anyhow::Error::new(ClientError::Unreachable {
            endpoint: "tcp://127.0.0.1:1".into(),
            reason: "refused".into(),
        });
        assert_eq!(exit_code(&unreachable), UNREACHABLE);
        assert!(hint(&unreachable, "tcp://127.0.0.1:1")
            .unwrap()
            .contains("is the broker running at tcp://127.0.0.1:1?"));
        let other = Failure::UnexpectedReply(reply_kind(&jobcast_protocol::Reply::Ack));
        assert_eq!(exit_code(&anyhow::Error::new(other)), REFUSED);
        assert_eq!(reply_kind(&jobcast_protocol::Reply::Ack), "ack");
        // Context added on the way keeps the kind.
        let wrapped = unreachable.context("while asking for the runs");
        assert_eq!(exit_code(&wrapped), UNREACHABLE);
    }
}
