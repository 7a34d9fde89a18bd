//! `Alerts` (the standing alerts and their history), `AckAlert` (an alert seen) and
//! `Series` (counts over time): what a caller limited to teams may see of them.

use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Scope};
use jobcast_protocol::{Acknowledged, Reply, Resolution, SeriesOf};

impl<S: Store> Core<S> {
    /// Whether an alert about `job` or `pool` is for `scope` to see: a job's to its
    /// team; a pool's to the teams with a job in it; the broker's own to everyone.
    pub(crate) fn alert_visible(
        &self,
        job: Option<&str>,
        pool: Option<&str>,
        scope: &Scope,
    ) -> bool {
        match (job, pool) {
            (Some(job), _) => self.job_allowed(job, scope),
            (None, Some(pool)) => {
                !scope.is_limited()
                    || self
                        .tables
                        .jobs
                        .specs()
                        .any(|spec| spec.pool == pool && scope.allows(spec.team.as_deref()))
            }
            (None, None) => true,
        }
    }

    /// Counts over time of all runs (callers not limited to teams), a job or a pool.
    pub(super) fn series_of(
        &self,
        of: &SeriesOf,
        resolution: Resolution,
        points: u32,
        scope: &Scope,
        now: Now,
    ) -> Handled {
        let key = match of {
            SeriesOf::All if scope.is_limited() => {
                return Err(CoreError::EveryTeamsOnly {
                    what: "see the counts of every team's runs",
                })
            }
            SeriesOf::All => crate::series::ALL.to_string(),
            SeriesOf::Job(job) => {
                if !self.job_allowed(job, scope) {
                    return Err(self.no_such_job_for(job, scope));
                }
                crate::series::job_key(job)
            }
            SeriesOf::Pool(pool) => {
                if !self.alert_visible(None, Some(pool), scope) {
                    return Err(CoreError::NoSuchPool { pool: pool.clone() });
                }
                crate::series::pool_key(pool)
            }
        };
        let (step_ms, points, (wait_p50_ms, wait_p99_ms)) =
            self.series.points(&key, resolution, points, now.ms());
        Ok(Reply::Series {
            step_ms,
            points,
            wait_p50_ms,
            wait_p99_ms,
        })
    }

    pub(super) fn alerts(&self, scope: &Scope, before: Option<u64>, limit: u32) -> Reply {
        let current = self
            .tables
            .alerts
            .values()
            .filter(|a| self.alert_visible(a.job.as_deref(), a.pool.as_deref(), scope))
            .cloned()
            .collect();
        let visible = |r: &jobcast_protocol::AlertRecord| {
            self.alert_visible(r.job.as_deref(), r.pool.as_deref(), scope)
        };
        Reply::Alerts {
            current,
            history: self.alert_log.page(visible, before, limit),
        }
    }

    /// Marks the standing alert `id` as seen by `actor`.
    pub(super) fn ack_alert(&mut self, id: &str, actor: &str, scope: &Scope, now: Now) -> Handled {
        let seen =
            self.tables.alerts.values().any(|a| {
                a.id == id && self.alert_visible(a.job.as_deref(), a.pool.as_deref(), scope)
            });
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
