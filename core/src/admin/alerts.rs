//! `Alerts` (the standing alerts and their history) and `AckAlert` (an alert seen).

use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Scope};
use jobcast_protocol::{Acknowledged, Reply};

impl<S: Store> Core<S> {
    pub(super) fn alerts(&self, scope: &Scope, before: Option<u64>, limit: u32) -> Reply {
        let current = self
            .tables
            .alerts
            .values()
            .filter(|a| self.sees(a.job.as_deref(), a.pool.as_deref(), scope))
            .cloned()
            .collect();
        let visible = |r: &jobcast_protocol::AlertRecord| {
            self.sees(r.job.as_deref(), r.pool.as_deref(), scope)
        };
        Reply::Alerts {
            current,
            history: self.alert_log.page(visible, before, limit),
        }
    }

    /// Marks the standing alert `id` as seen by `actor`.
    pub(super) fn ack_alert(&mut self, id: &str, actor: &str, scope: &Scope, now: Now) -> Handled {
        let seen = self
            .tables
            .alerts
            .values()
            .any(|a| a.id == id && self.sees(a.job.as_deref(), a.pool.as_deref(), scope));
        if !seen {
            return Err(CoreError::NoSuchAlert { id: id.to_string() });
        }
        let ack = Acknowledged {
            by: actor.to_string(),
            at_ms: now.ms(),
        };
        if let Some(alert) = self.tables.alerts.values_mut().find(|a| a.id == id) {
            alert.acknowledged = Some(ack.clone());
        }
        self.alert_log.acknowledged(&mut self.store, id, &ack)?;
        Ok(Reply::Ack)
    }
}
