//! What the broker answers to a frame it refused before it could trust it.

use super::Rejection;
use serde::{Deserialize, Serialize};

/// The broker's answer to a frame it refused before it could trust it. Unsigned, and
/// carrying only the reason, so that a peer with a wrong key or clock learns why instead
/// of timing out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub refused: String,
    pub detail: String,
}

impl Refusal {
    pub fn for_rejection(rejection: &Rejection) -> Option<Refusal> {
        // Garbage, oversized frames and replays get no answer: answering them would
        // only help a flood.
        match rejection {
            Rejection::UnknownSender(_)
            | Rejection::BadMac(_)
            | Rejection::UnsupportedVersion { .. }
            | Rejection::ClockSkew { .. }
            | Rejection::BeforeStart { .. } => Some(Refusal {
                refused: rejection.reason().to_string(),
                detail: rejection.to_string(),
            }),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Refusal> {
        rmp_serde::from_slice(bytes).ok()
    }
}
