//! Frames in and out: opening a request (its sender, key and sealing time), refusing
//! what cannot be opened without flooding the log, and sealing the batch's replies with
//! the secret each request came under.

use super::{now_us, Server};
use crate::config::Keys;
use crate::sockets::Outgoing;
use jobcast_core::{Outbox, PeerId, ReplyTo};
use jobcast_protocol::envelope::{seal, Refusal, Rejection, BROKER};
use jobcast_protocol::message::encode_event;
use jobcast_protocol::Body;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Logs refused frames without letting a flood of garbage flood the log too.
#[derive(Default)]
pub(super) struct RejectionLog {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RejectionLog {
    pub(super) fn note(&mut self, reason: &'static str, detail: &str) {
        let now = Instant::now();
        let entry = self
            .last
            .entry(reason)
            .or_insert((now - Duration::from_secs(60), 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            tracing::warn!(reason, count = entry.1, "refused frame: {detail}");
            *entry = (now, 0);
        }
    }
}

/// A frame opened as a request.
pub(super) struct OpenedRequest {
    pub from: String,
    pub id: u64,
    pub request: jobcast_protocol::Request,
    /// When the peer sealed it (its clock).
    pub sealed_ms: u64,
    /// Sealed with a key a reload revoked: answered only with that news.
    pub revoked: bool,
}

/// Peers (connections) whose last request was sealed with a worker's previous secret,
/// during a rotation: their answers are sealed with it too. Bounded; when full it starts
/// over (a peer then left out gets an answer it cannot open, and asks again).
#[derive(Default)]
pub(super) struct PreviousKeyPeers(std::collections::HashSet<PeerId>);

impl PreviousKeyPeers {
    const MAX: usize = 4_096;

    pub(super) fn note(&mut self, peer: &PeerId, by_previous: bool) {
        if !by_previous {
            if !self.0.is_empty() {
                self.0.remove(peer);
            }
            return;
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(peer.clone());
    }

    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.0.contains(peer)
    }
}

impl Server {
    /// Opens a frame as a request: its sender, id, request and sealing time. A frame
    /// refused is logged (rate-limited) and, when its peer needs to learn why, answered
    /// through `refusals`, or in `out` (`bad_request`) for a request this broker does not
    /// know; the reason comes back for the core's counts.
    pub(super) fn open_request(
        &mut self,
        peer: &PeerId,
        payload: &[u8],
        now_ms: u64,
        refusals: &mut Vec<(PeerId, Refusal)>,
        out: &mut Outbox,
    ) -> Result<OpenedRequest, &'static str> {
        let keys = &self.running.keys;
        match self
            .opener
            .open_with_either(payload, now_ms, |name| keys.secrets_of(name))
        {
            Ok((opened, by_second)) => match opened.body {
                Body::Request { id, request } => {
                    let revoked = keys.for_sender(&opened.from).is_none();
                    self.previous_key_peers.note(peer, by_second && !revoked);
                    Ok(OpenedRequest {
                        from: opened.from,
                        id,
                        request,
                        sealed_ms: opened.ts_ms,
                        revoked,
                    })
                }
                Body::Reply { .. } => {
                    self.rejections
                        .note("undecodable", "a reply sent to the broker");
                    Err("undecodable")
                }
            },
            Err(rejection) => {
                self.rejections
                    .note(rejection.reason(), &rejection.to_string());
                if let Rejection::UnknownRequest { from, id, detail } = &rejection {
                    out.reply(
                        &ReplyTo::peer(peer, from),
                        *id,
                        jobcast_protocol::Reply::Error {
                            code: jobcast_protocol::ErrorCode::BadRequest,
                            message: format!(
                                "this broker ({}) does not know this request: {detail}",
                                jobcast_protocol::JOBCAST_VERSION
                            ),
                        },
                    );
                }
                if let Some(refusal) = Refusal::for_rejection(&rejection) {
                    refusals.push((peer.clone(), refusal));
                }
                Err(rejection.reason())
            }
        }
    }
}

/// The batch's replies (sealed), refusals and events, to send.
pub(super) fn outgoing(
    keys: &Keys,
    previous_key_peers: &PreviousKeyPeers,
    out: Outbox,
    refusals: Vec<(PeerId, Refusal)>,
) -> Vec<Outgoing> {
    let now_ms = now_us() / 1_000;
    let mut batch = Vec::with_capacity(out.replies.len() + refusals.len() + out.events.len());
    // Grants first: a worker's grant is on the way to a process starting, an admin's
    // answer is not, and libzmq's I/O thread sends in the order it is handed frames.
    let (grants, others): (Vec<_>, Vec<_>) = out
        .replies
        .into_iter()
        .partition(|reply| matches!(reply.reply, jobcast_protocol::Reply::Granted { .. }));
    for reply in grants.into_iter().chain(others) {
        let ReplyTo::Peer { peer, name } = reply.to else {
            continue;
        };
        // Sealed with the secret the peer's request came under.
        let secret = if previous_key_peers.contains(&peer) {
            keys.previous.get(&name)
        } else {
            keys.for_sender(&name).or_else(|| keys.revoked.get(&name))
        };
        let Some(secret) = secret else {
            continue;
        };
        let frame = seal(
            BROKER,
            &name,
            secret,
            &Body::Reply {
                id: reply.id,
                reply: reply.reply,
            },
            now_ms,
        );
        batch.push(Outgoing::Reply {
            peer,
            frame,
            to: name,
        });
    }
    for (peer, refusal) in refusals {
        batch.push(Outgoing::Reply {
            peer,
            frame: refusal.encode(),
            to: "unauthenticated peer".to_string(),
        });
    }
    for (topic, event) in out.events {
        batch.push(Outgoing::Publish {
            topic,
            event: encode_event(&event),
        });
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::{Reply, Secret};

    #[test]
    fn grants_go_out_before_the_other_replies_of_their_batch() {
        let keys = Keys {
            admin: Secret::new(b"admin secret".to_vec()),
            workers: HashMap::from([("w1".to_string(), Secret::new(b"w1 secret".to_vec()))]),
            worker_pools: HashMap::new(),
            previous: HashMap::new(),
            revoked: HashMap::new(),
        };
        let (admin, worker) = (b"admin peer".to_vec(), b"worker peer".to_vec());
        let mut out = Outbox::default();
        out.reply(&ReplyTo::peer(&admin, jobcast_core::ADMIN), 1, Reply::Ack);
        let granted = Reply::Granted {
            runs: Vec::new(),
            more_queued: false,
        };
        out.reply(&ReplyTo::peer(&worker, "w1"), 2, granted);
        out.reply(&ReplyTo::peer(&admin, jobcast_core::ADMIN), 3, Reply::Ack);
        let sent: Vec<String> = outgoing(&keys, &PreviousKeyPeers::default(), out, Vec::new())
            .into_iter()
            .map(|out| match out {
                Outgoing::Reply { to, .. } => to,
                Outgoing::Publish { topic, .. } => topic,
            })
            .collect();
        assert_eq!(sent, ["w1", jobcast_core::ADMIN, jobcast_core::ADMIN]);
    }
}
