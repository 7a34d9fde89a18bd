//! Delivers notifications to webhooks from a thread of its own, so that a slow or dead
//! endpoint never holds up scheduling.
//!
//! Each webhook gets a JSON body with a Slack-compatible `text` field plus the details.
//! A failed delivery is retried with exponential back-off; the queue is bounded and drops
//! (and logs) notifications when a webhook has been down long enough to fill it.

use jobcast_core::Notification;
use serde::Deserialize;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

const QUEUE: usize = 1_000;
const ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// Only these kinds (run_failed, run_lost, late, never_run, auto_disabled,
    /// no_worker, disk_low); all when empty.
    #[serde(default)]
    pub events: Vec<String>,
}

impl Webhook {
    fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

#[derive(Clone)]
pub struct Notifier {
    queue: Option<SyncSender<Notification>>,
}

impl Notifier {
    /// Starts the delivery thread; with no webhooks, notifications are only logged.
    pub fn start(webhooks: Vec<Webhook>, first_retry: Duration) -> Notifier {
        if webhooks.is_empty() {
            return Notifier { queue: None };
        }
        let (queue, receiver) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || deliver_all(webhooks, receiver, first_retry));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the webhook thread; notifications are only logged");
            return Notifier { queue: None };
        }
        Notifier { queue: Some(queue) }
    }

    pub fn send(&self, notification: Notification) {
        tracing::warn!(kind = notification.kind.as_str(), job = ?notification.job, "{}", notification.text);
        let Some(queue) = &self.queue else { return };
        match queue.try_send(notification) {
            Ok(()) => {}
            Err(TrySendError::Full(dropped)) => {
                tracing::error!(
                    kind = dropped.kind.as_str(),
                    "webhook queue full: notification dropped"
                )
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn body(notification: &Notification) -> String {
    serde_json::json!({
        "text": format!("jobcast: {}", notification.text),
        "kind": notification.kind.as_str(),
        "job": notification.job,
        "pool": notification.pool,
        "run_id": notification.run_id,
        "at_ms": notification.at_ms,
    })
    .to_string()
}

fn deliver_all(webhooks: Vec<Webhook>, receiver: Receiver<Notification>, first_retry: Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    while let Ok(notification) = receiver.recv() {
        let body = body(&notification);
        for hook in webhooks
            .iter()
            .filter(|h| h.wants(notification.kind.as_str()))
        {
            let mut delay = first_retry;
            for attempt in 1..=ATTEMPTS {
                let result = agent
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .send(body.as_str());
                match result {
                    Ok(_) => break,
                    Err(e) if attempt == ATTEMPTS => {
                        tracing::error!(url = %hook.url, error = %e, "webhook failed; giving up on this notification")
                    }
                    Err(e) => {
                        tracing::warn!(url = %hook.url, error = %e, attempt, "webhook failed; retrying");
                        std::thread::sleep(delay);
                        delay *= 2;
                    }
                }
            }
        }
    }
}
