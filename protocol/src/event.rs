//! Events on the PUB socket: unsigned hints, each under a topic that ends in `/`.

use serde::{Deserialize, Serialize};

/// Unsigned hints published on the PUB socket. See the topic helpers below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    BrokerAlive {
        #[serde(with = "crate::id64")]
        boot_id: u64,
        time_ms: u64,
    },
    Wake {
        pool: String,
    },
    Ping {
        ping_id: u64,
    },
    OrdersPending,
}

pub mod topic {
    //! PUB topics. Each ends with `/` so that a subscription cannot prefix-match a
    //! longer name (`worker/w1/` is not a prefix of `worker/w10/`).

    pub const ALL: &str = "all/";

    pub fn pool(pool: &str) -> String {
        format!("pool/{pool}/")
    }

    pub fn worker(worker: &str) -> String {
        format!("worker/{worker}/")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_subscription_never_matches_a_longer_name() {
            assert!(!worker("w10").starts_with(&worker("w1")));
            assert!(!pool("default-2").starts_with(&pool("default")));
            assert!(worker("w1").starts_with(&worker("w1")));
        }
    }
}

/// Encodes an event as a MessagePack map.
pub fn encode_event(event: &Event) -> Vec<u8> {
    // Serialising these plain types into a Vec cannot fail.
    rmp_serde::to_vec_named(event).unwrap_or_default()
}

pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    rmp_serde::from_slice(bytes).ok()
}
