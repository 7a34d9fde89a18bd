//! The connection to the broker as commands use it: a request and its answer, the
//! broker's refusals turned into [`Failure`]s, and output as a table or as JSON.

use crate::args::Args;
use crate::failure::Failure;
use anyhow::Result;
use jobcast_client::{Client, ClientConfig, ClientError};
use jobcast_protocol::{AdminRequest, Reply, Secret};
use serde::Serialize;
use std::time::Duration;

/// The value a reply of the expected kind carries; a reply of any other kind ends the
/// command with [`Failure::UnexpectedReply`].
macro_rules! expect_reply {
    ($reply:expr, $pattern:pat => $value:expr) => {
        match $reply {
            $pattern => $value,
            other => {
                return Err(
                    $crate::failure::Failure::UnexpectedReply($crate::failure::reply_kind(&other))
                        .into(),
                )
            }
        }
    };
}
pub(crate) use expect_reply;

pub(crate) struct Ctl {
    client: Client,
    /// Every broker `--broker` names, and which of them is asked now.
    brokers: Vec<String>,
    asked: std::cell::Cell<usize>,
    timeout: Duration,
    json: bool,
}

impl Ctl {
    /// Connects with the admin key the command line names, to the first of its brokers
    /// that can be reached.
    pub(crate) async fn connect(args: &Args) -> Result<Ctl> {
        let brokers = jobcast_client::endpoint_list(&args.broker);
        if brokers.is_empty() {
            return Err(Failure::Usage("--broker names no endpoint".into()).into());
        }
        let secret = admin_secret(args)?;
        let mut first_error = None;
        for (index, endpoint) in brokers.iter().enumerate() {
            let connected = Client::connect(ClientConfig {
                endpoint: endpoint.clone(),
                name: "admin".into(),
                secret: secret.clone(),
                connect_timeout: args.timeout,
                max_clock_skew: Duration::from_secs(30),
            })
            .await;
            match connected {
                Ok(client) => {
                    return Ok(Ctl {
                        client,
                        brokers,
                        asked: std::cell::Cell::new(index),
                        timeout: args.timeout,
                        json: args.json,
                    })
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no broker to ask")))
    }

    /// Asks `endpoint` from now on.
    fn move_to(&self, endpoint: &str) {
        if let Some(index) = self.brokers.iter().position(|b| b == endpoint) {
            self.asked.set(index);
        }
        self.client.reconnect_to(endpoint);
    }

    /// How long a request waits for its answer (`--timeout`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether output is JSON (`--json`).
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    pub(crate) async fn call(&self, request: AdminRequest) -> Result<Reply> {
        self.call_within(request, self.timeout).await
    }

    /// As [`Self::call`], waiting `timeout` for the answer (a request that itself waits).
    pub(crate) async fn call_within(
        &self,
        request: AdminRequest,
        timeout: Duration,
    ) -> Result<Reply> {
        // A standby did nothing, so asking again is safe for any request: during a
        // failover (or while a restarted broker waits for its predecessor's lease to run
        // out) ask again until a broker acts, for a while.
        let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
        let mut said = false;
        loop {
            let reply = match self.client.request(request.clone(), timeout).await {
                // Sealed before the broker began acting (it took over, or started, as
                // this was on its way): refused unread, so sealed again and sent again.
                Err(e) if e.was_sent_too_early() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                other => other?,
            };
            match reply {
                Reply::Error { code, message } => {
                    return Err(Failure::Broker { code, message }.into())
                }
                Reply::NotLeader { leader } => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Failure::NotLeader(leader).into());
                    }
                    let asked = self
                        .brokers
                        .get(self.asked.get())
                        .cloned()
                        .unwrap_or_default();
                    match &leader {
                        // Named: ask it (this answer came from a standby that knows it).
                        Some(named) if named.router != asked => {
                            self.move_to(&named.router);
                            continue;
                        }
                        // None leads yet, or the one named is where this asked: another
                        // of the list may know better, a moment later.
                        _ if self.brokers.len() > 1 => {
                            let next = (self.asked.get() + 1) % self.brokers.len();
                            self.move_to(&self.brokers[next].clone());
                        }
                        _ => {}
                    }
                    if !said {
                        eprintln!(
                            "jobcastctl: {}; waiting for a leader",
                            Failure::NotLeader(leader)
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                reply => return Ok(reply),
            }
        }
    }

    /// Like [`Self::call`] for a request that is safe to repeat (it carries an idempotency
    /// key): sent again, up to `ATTEMPTS` times in all, when no answer came.
    pub(crate) async fn call_again_if_unanswered(&self, request: AdminRequest) -> Result<Reply> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match self.call(request.clone()).await {
                Err(e) if attempt < ATTEMPTS && unanswered(&e) => {
                    eprintln!("jobcastctl: {e}; asking again (attempt {})", attempt + 1);
                    if self.brokers.len() > 1 {
                        // The broker asked may be gone with its host: the next one.
                        let next = (self.asked.get() + 1) % self.brokers.len();
                        self.move_to(&self.brokers[next].clone());
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Prints `value` as JSON with `--json`, and as `human` says otherwise.
    pub(crate) fn print<T: Serialize + ?Sized>(
        &self,
        value: &T,
        human: impl FnOnce(&T),
    ) -> Result<()> {
        if self.json {
            self.print_json(value)
        } else {
            human(value);
            Ok(())
        }
    }

    pub(crate) fn print_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        // Random 64-bit ids come out as strings (`jobcast_protocol::id64`).
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// How long a request answered "not the leader" is asked again: a failover takes about
/// a lease (5 s by default).
const FAILOVER_WAIT: Duration = Duration::from_secs(15);

/// Whether a request failed without an answer (a lost connection, no reply in time).
fn unanswered(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ClientError>(),
        Some(ClientError::Disconnected | ClientError::Timeout(_))
    )
}

fn admin_secret(args: &Args) -> Result<Secret> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                Failure::Usage(format!(
                    "cannot read the secret file {}: {e}",
                    path.display()
                ))
            })?
            .trim()
            .to_string(),
        (None, None) => {
            return Err(Failure::Usage(
                "no admin secret: pass --secret-file, or set JOBCAST_ADMIN_SECRET_FILE or JOBCAST_ADMIN_SECRET".into(),
            )
            .into())
        }
    };
    Ok(Secret::new(secret))
}
