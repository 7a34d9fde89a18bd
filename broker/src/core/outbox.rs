//! What a batch of requests produces: replies, events and notifications, sent after the
//! store is flushed.

use crate::core::{Notification, PeerId};
use jobcast_protocol::{Event, Reply};

#[derive(Debug, Clone, PartialEq)]
pub struct OutReply {
    pub peer: PeerId,
    /// The peer's name, whose secret signs the reply.
    pub to: String,
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
}

impl Outbox {
    pub(in crate::core) fn reply(&mut self, peer: &PeerId, to: &str, id: u64, reply: Reply) {
        self.replies.push(OutReply {
            peer: peer.clone(),
            to: to.to_string(),
            id,
            reply,
        });
    }

    pub(in crate::core) fn publish(&mut self, topic: String, event: Event) {
        if !self.events.iter().any(|(t, e)| *t == topic && *e == event) {
            self.events.push((topic, event));
        }
    }
}
