//! How the API reaches the core: requests go to the server loop over a channel, as if
//! from `jobcastctl`, and the reply comes back on a oneshot.

use super::auth::Caller;
use super::error::ApiError;
use jobcast_protocol::{AdminRequest, Reply};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const CORE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the core from inside the broker, with where to send its reply.
pub struct InternalRequest {
    pub request: AdminRequest,
    /// Who asked, as the run history records it (`token alice`).
    pub actor: String,
    /// Whose jobs and runs they may see and act on.
    pub scope: jobcast_core::Scope,
    pub reply: oneshot::Sender<Reply>,
}

/// Sends requests to the core loop and waits for the replies.
#[derive(Clone)]
pub struct CoreHandle {
    sender: mpsc::Sender<InternalRequest>,
}

impl CoreHandle {
    pub fn new(sender: mpsc::Sender<InternalRequest>) -> Self {
        CoreHandle { sender }
    }

    /// Whether the core loop has gone (the broker is stopping).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends a request on behalf of `caller`, whose token name the core records.
    pub(super) async fn call(
        &self,
        caller: &Caller,
        request: AdminRequest,
    ) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        let actor = format!("token {}", caller.name);
        self.sender
            .send(InternalRequest {
                request,
                actor,
                scope: caller.scope(),
                reply,
            })
            .await
            .map_err(|_| ApiError::unavailable())?;
        match tokio::time::timeout(CORE_TIMEOUT, answer).await {
            Ok(Ok(Reply::Error { code, message })) => Err(ApiError::from_core(code, message)),
            Ok(Ok(Reply::NotLeader { leader })) => Err(ApiError::not_leader(leader)),
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(ApiError::unavailable()),
        }
    }
}
