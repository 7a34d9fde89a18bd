//! What a batch of requests produces: replies, events and notifications, sent after the
//! store is flushed.

use crate::{Notification, PeerId};
use jobcast_protocol::{Event, Reply, RunRecord, RunState};

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// A connection to the broker's socket; the reply is sealed for `name`.
    Peer { peer: PeerId, name: String },
    /// A call from the HTTP API, answered in-process.
    Api,
}

impl ReplyTo {
    pub fn peer(peer: &PeerId, name: &str) -> ReplyTo {
        ReplyTo::Peer {
            peer: peer.clone(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutReply {
    pub to: ReplyTo,
    pub id: u64,
    pub reply: Reply,
}

#[derive(Debug, Default)]
pub struct Outbox {
    pub replies: Vec<OutReply>,
    /// (topic, event), deduplicated within one batch.
    pub events: Vec<(String, Event)>,
    /// For the notification webhooks.
    pub notifications: Vec<Notification>,
    /// `Reload` requests: the server reads the settings and answers them.
    pub reloads: Vec<ReloadAsked>,
    /// What the metrics count, as it happened.
    pub observations: Vec<Observation>,
    /// Listings of stored runs, answered once the batch that asked is durable, away from
    /// the loop where the store allows it ([`crate::Core::listing_reply`]).
    pub listings: Vec<ListingAsked>,
    /// Stored logs to read, answered like the listings ([`crate::log_reply`]).
    pub logs: Vec<LogAsked>,
    /// Copies of the store to write, each from the store as its batch left it, away from
    /// the loop once that batch is durable.
    pub backups: Vec<BackupAsked>,
    /// Retention's walk asks for the next oldest runs, read away from the loop once the
    /// batch is durable and handed back with [`crate::Core::oldest_runs_found`].
    pub oldest: Option<OldestAsked>,
}

/// Retention's walk asks for the oldest runs from `from_seq` on, at most `limit`;
/// `number` tells an answer to this ask from one to an ask since given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestAsked {
    pub number: u64,
    pub from_seq: u64,
    pub limit: usize,
}

/// Someone asked for a copy of the store in a new directory.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupAsked {
    pub to: ReplyTo,
    pub id: u64,
    pub path: std::path::PathBuf,
}

/// Someone asked for a run's stored output: the run (found when asked), and where from.
#[derive(Debug, Clone, PartialEq)]
pub struct LogAsked {
    pub to: ReplyTo,
    pub id: u64,
    pub run: Box<RunRecord>,
    pub offset: Option<u64>,
    /// Answered as a `wait_ms` asks (`Reply::Log::waited`).
    pub waited: bool,
}

/// Someone asked for stored runs: the filter, checked and with its limit set.
#[derive(Debug, Clone, PartialEq)]
pub struct ListingAsked {
    pub to: ReplyTo,
    pub id: u64,
    pub filter: jobcast_protocol::RunFilter,
}

/// A fact for the metrics, in milliseconds of the broker's clock.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A run's start was reported, `waited_ms` after it could first be handed out.
    Started { pool: String, waited_ms: u64 },
    /// A run ended; `ran_ms` if it had started.
    Ended {
        job: String,
        state: RunState,
        ran_ms: Option<u64>,
    },
}

/// Someone asked for the settings to be read again.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadAsked {
    pub to: ReplyTo,
    pub id: u64,
    pub actor: String,
}

impl Outbox {
    pub fn reply(&mut self, to: &ReplyTo, id: u64, reply: Reply) {
        self.replies.push(OutReply {
            to: to.clone(),
            id,
            reply,
        });
    }

    pub(crate) fn publish(&mut self, topic: String, event: Event) {
        if !self.events.iter().any(|(t, e)| *t == topic && *e == event) {
            self.events.push((topic, event));
        }
    }
}
