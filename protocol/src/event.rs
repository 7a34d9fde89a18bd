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

    /// The longest topic: `worker/` and a name of [`crate::names::MAX_NAME_LEN`], then `/`.
    pub const MAX_TOPIC_LEN: usize = "worker/".len() + crate::names::MAX_NAME_LEN + 1;

    /// Whether `topic` is one the broker publishes on: `all/`, `pool/<name>/` or
    /// `worker/<name>/` with a valid name. Subscriptions to anything else are refused.
    pub fn is_published(topic: &[u8]) -> bool {
        if topic == ALL.as_bytes() {
            return true;
        }
        let named = |prefix: &str| {
            topic
                .strip_prefix(prefix.as_bytes())
                .and_then(|rest| rest.strip_suffix(b"/"))
                .and_then(|name| std::str::from_utf8(name).ok())
                .is_some_and(|name| crate::names::validate("name", name).is_ok())
        };
        named("pool/") || named("worker/")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_the_topics_the_broker_publishes_on_are_published() {
            let longest = worker(&"w".repeat(crate::names::MAX_NAME_LEN));
            assert_eq!(longest.len(), MAX_TOPIC_LEN);
            for topic in [ALL.to_string(), pool("etl"), worker("w-1.a_b"), longest] {
                assert!(is_published(topic.as_bytes()), "{topic}");
            }
            let too_long = worker(&"w".repeat(crate::names::MAX_NAME_LEN + 1));
            for topic in [
                "",
                "all",
                "all/x",
                "pool/",
                "pool//",
                "pool/etl",
                "pool/a/b/",
                "worker/w 1/",
                "jobs/etl/",
                "pool/\u{e9}/",
                &too_long,
            ] {
                assert!(!is_published(topic.as_bytes()), "{topic:?}");
            }
            assert!(!is_published(b"pool/\xff/"));
        }

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
