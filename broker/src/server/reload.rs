//! Applying a reload (SIGHUP or `jobcastctl reload`) to the running server: what may
//! change live is put in force, what needs a restart is reported (`crate::reload`).

use super::{now_us, Server};
use crate::store::{Store, StoreError};
use jobcast_core::{Core, Outbox};
use std::time::Duration;

impl Server {
    /// Reads the settings again and takes their keys, API tokens and webhooks; answers
    /// those who asked with what changed, or why nothing did.
    pub(super) fn reload<S: Store>(
        &mut self,
        core: &mut Core<S>,
        out: &mut Outbox,
    ) -> Result<(), StoreError> {
        let asked = std::mem::take(&mut out.reloads);
        let by: Vec<&str> = asked.iter().map(|a| a.actor.as_str()).collect();
        let reply = match (self.reloading.read)() {
            Ok(new) => {
                let report = crate::reload::compare(&self.running, &new);
                tracing::info!(
                    by = %by.join(","),
                    workers_added = %report.workers_added.join(","),
                    workers_removed = %report.workers_removed.join(","),
                    workers_changed = %report.workers_changed.join(","),
                    admin_changed = report.admin_changed,
                    api_tokens = report.api_tokens,
                    webhooks = report.webhooks,
                    "settings reloaded"
                );
                for warning in new.warnings() {
                    tracing::warn!("{warning}");
                }
                if !report.needs_restart.is_empty() {
                    tracing::warn!(settings = %report.needs_restart.join(","), "these settings changed in the file but only take effect at the next start");
                }
                core.set_worker_pools(new.keys.worker_pools.clone());
                self.live_settings
                    .api_tokens
                    .send_replace(std::sync::Arc::new(new.api_tokens.clone()));
                self.notifier =
                    crate::notify::Notifier::start(new.webhooks.clone(), Duration::from_secs(1));
                let (keys, revoked) = new.keys.replacing(&self.running.keys);
                for worker in revoked {
                    tracing::warn!(worker, "worker key revoked: the worker is told at its next request, and its runs are given up");
                    core.revoke_worker(&worker)?;
                }
                self.new_keys = Some(keys);
                self.running.api_tokens = new.api_tokens;
                self.running.webhooks = new.webhooks;
                let outcome = format!(
                    "workers added [{}], removed [{}], changed [{}]; admin key {}; {} API tokens, {} webhooks",
                    report.workers_added.join(" "),
                    report.workers_removed.join(" "),
                    report.workers_changed.join(" "),
                    if report.admin_changed { "changed" } else { "unchanged" },
                    report.api_tokens,
                    report.webhooks,
                );
                core.record_reload(&by, outcome, now_us())?;
                jobcast_protocol::Reply::Reloaded(report)
            }
            Err(e) => {
                tracing::error!(by = %by.join(","), error = %format!("{e:#}"), "reload refused: the settings in force are unchanged");
                core.record_reload(&by, format!("refused: {e:#}"), now_us())?;
                jobcast_protocol::Reply::Error {
                    code: jobcast_protocol::ErrorCode::BadRequest,
                    message: format!(
                        "the settings were not reloaded, those in force are unchanged: {e:#}"
                    ),
                }
            }
        };
        for asked in asked {
            out.reply(&asked.to, asked.id, reply.clone());
        }
        Ok(())
    }
}
