//! Calls from the HTTP API, handled in the server's batches like socket requests: taken
//! from a channel, handed to the core with an id of their own, and answered in-process
//! once the batch is durable.

use crate::http::InternalRequest;
use crate::store::{Store, StoreError};
use jobcast_core::{Core, OutReply, Outbox};
use jobcast_protocol::Reply;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

pub(super) struct ApiCalls {
    incoming: mpsc::Receiver<InternalRequest>,
    /// Taken from the channel, for the next batch.
    batch: Vec<InternalRequest>,
    /// Replies owed, by the id the core was given.
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    next_id: u64,
}

impl ApiCalls {
    pub(super) fn new(incoming: mpsc::Receiver<InternalRequest>) -> ApiCalls {
        ApiCalls {
            incoming,
            batch: Vec::new(),
            pending: HashMap::new(),
            next_id: 1,
        }
    }

    /// Waits for a call, then takes what else is waiting, up to `max`; `None` once the
    /// HTTP side has gone.
    pub(super) async fn take(&mut self, max: usize) -> Option<()> {
        let first = self.incoming.recv().await?;
        self.batch.push(first);
        while self.batch.len() < max {
            match self.incoming.try_recv() {
                Ok(next) => self.batch.push(next),
                Err(_) => break,
            }
        }
        Some(())
    }

    /// Hands the batch's calls to the core.
    pub(super) fn hand_to<S: Store>(
        &mut self,
        core: &mut Core<S>,
        now_us: u64,
        out: &mut Outbox,
    ) -> Result<(), StoreError> {
        for InternalRequest {
            request,
            actor,
            scope,
            reply,
        } in std::mem::take(&mut self.batch)
        {
            let id = self.next_id;
            self.next_id += 1;
            // Callers that gave up (a closed HTTP connection) are owed nothing.
            self.pending.retain(|_, waiter| !waiter.is_closed());
            self.pending.insert(id, reply);
            core.handle_api(&actor, id, request, &scope, now_us, out)?;
        }
        Ok(())
    }

    /// Answers the calls among `replies`.
    pub(super) fn answer(&mut self, replies: impl Iterator<Item = OutReply>) {
        for reply in replies {
            if let Some(waiter) = self.pending.remove(&reply.id) {
                let _ = waiter.send(reply.reply);
            }
        }
    }

    /// Answers every call waiting with `reply` (a store outage), without the core.
    /// The next call, to answer outside a batch (a standby); `None` once the HTTP side
    /// has gone.
    pub(super) async fn next(&mut self) -> Option<InternalRequest> {
        self.incoming.recv().await
    }

    pub(super) async fn refuse_next(&mut self, reply: Reply) -> Option<()> {
        let call = self.incoming.recv().await?;
        let _ = call.reply.send(reply);
        Some(())
    }
}
