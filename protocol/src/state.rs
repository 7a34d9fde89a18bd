//! The run state machine.
//!
//! ```text
//! queued ──▶ assigned ──▶ running ──▶ succeeded | failed | killed | timed_out
//!   │  ▲        │  │         └──────▶ lost
//!   │  └────────┘  └──────▶ lost | killed | failed   (worker gone / stopped before start)
//!   └──▶ cancelled
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Killed,
    TimedOut,
    Lost,
    Cancelled,
    /// Not started within the job's starting deadline.
    Missed,
}

impl RunState {
    pub const ALL: [RunState; 10] = [
        RunState::Queued,
        RunState::Assigned,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Killed,
        RunState::TimedOut,
        RunState::Lost,
        RunState::Cancelled,
        RunState::Missed,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunState::Queued | RunState::Assigned | RunState::Running
        )
    }

    /// Whether `self → next` is a legal transition.
    pub fn can_move_to(self, next: RunState) -> bool {
        use RunState::*;
        match self {
            Queued => matches!(next, Assigned | Cancelled | Missed),
            // A worker may release an unstarted run (drain), lose it, or report that it
            // never started (killed before start, or the script could not be spawned).
            Assigned => matches!(next, Queued | Running | Lost | Killed | Failed | TimedOut),
            Running => matches!(next, Succeeded | Failed | Killed | TimedOut | Lost),
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        use RunState::*;
        match self {
            Queued => "queued",
            Assigned => "assigned",
            Running => "running",
            Succeeded => "succeeded",
            Failed => "failed",
            Killed => "killed",
            TimedOut => "timed_out",
            Lost => "lost",
            Cancelled => "cancelled",
            Missed => "missed",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown run state {0:?}: expected one of queued, assigned, running, succeeded, failed, killed, timed_out, lost, cancelled, missed")]
pub struct UnknownState(pub String);

impl FromStr for RunState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// One recorded step of a run's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: RunState,
    pub at_ms: u64,
    pub cause: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("run cannot move from {from} to {to}")]
pub struct IllegalTransition {
    pub from: RunState,
    pub to: RunState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    #[test]
    fn terminal_states_are_final() {
        for from in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RunState::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn the_happy_path_is_legal() {
        assert!(Queued.can_move_to(Assigned));
        assert!(Assigned.can_move_to(Running));
        assert!(Running.can_move_to(Succeeded));
    }

    #[test]
    fn a_run_is_never_handed_out_again_once_started() {
        // Going back to queued from running would allow a second execution.
        assert!(!Running.can_move_to(Queued));
        assert!(!Running.can_move_to(Assigned));
        assert!(!Lost.can_move_to(Queued));
        assert!(!Queued.can_move_to(Running));
    }

    #[test]
    fn only_queued_runs_are_cancelled() {
        assert!(Queued.can_move_to(Cancelled));
        assert!(!Assigned.can_move_to(Cancelled));
        assert!(!Running.can_move_to(Cancelled));
    }

    #[test]
    fn names_round_trip() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
        assert!("done".parse::<RunState>().is_err());
    }
}
