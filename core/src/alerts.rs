//! Standing conditions: runs that could not start in time (missed), late jobs, jobs that
//! never ran, jobs that disabled themselves, pools without workers, a data directory short
//! of space.

use crate::alert_log::alert_id;
use crate::scheduling::format_ms;
use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Notification, Outbox};
use jobcast_protocol::{Alert, AlertKind, RunState};
use std::collections::BTreeMap;

impl<S: Store> Core<S> {
    /// Starting deadlines, late runs, never-run jobs and pools without workers.
    pub(crate) fn check_alerts(&mut self, now: Now, out: &mut Outbox) -> StoreResult<()> {
        // Runs that could not start in time are missed, not started late.
        let expired: Vec<String> = self
            .tables
            .runs
            .iter()
            .filter(|r| r.state == RunState::Queued)
            .filter(|r| {
                r.spec
                    .policy
                    .starting_deadline_ms
                    .is_some_and(|d| now.ms() > r.scheduled_at_ms.max(r.not_before_ms) + d)
            })
            .map(|r| r.id.clone())
            .collect();
        for run_id in expired {
            self.finish_as(
                &run_id,
                RunState::Missed,
                now,
                "not started within its starting deadline".into(),
                out,
            )?;
        }

        let mut standing: BTreeMap<(AlertKind, String), Alert> = BTreeMap::new();
        for run in self
            .tables
            .runs
            .iter()
            .filter(|r| r.state == RunState::Queued)
        {
            let due = run.scheduled_at_ms.max(run.not_before_ms);
            if now.ms() > due + run.spec.policy.late_after_ms {
                standing
                    .entry((AlertKind::Late, run.job.clone()))
                    .or_insert_with(|| Alert {
                        id: String::new(),
                        acknowledged: None,
                        kind: AlertKind::Late,
                        job: Some(run.job.clone()),
                        pool: Some(run.pool.clone()),
                        run_id: Some(run.id.clone()),
                        since_ms: due,
                        message: format!(
                            "job {}: run {} due at {} has not started",
                            run.job,
                            run.id,
                            format_ms(due)
                        ),
                    });
            }
            // Just after a start, workers are still registering again: no alarm yet.
            let served =
                self.tables.workers.serve_pool(&run.pool) || now.ms() < self.worker_grace_end();
            if !served {
                standing
                    .entry((AlertKind::NoWorker, run.pool.clone()))
                    .or_insert_with(|| Alert {
                        id: String::new(),
                        acknowledged: None,
                        kind: AlertKind::NoWorker,
                        job: None,
                        pool: Some(run.pool.clone()),
                        run_id: None,
                        since_ms: run.created_at_ms,
                        message: format!(
                            "pool {} has queued runs and no worker available that can handle them",
                            run.pool
                        ),
                    });
            }
        }
        // One walk of the jobs and their states (checked once per heartbeat interval,
        // and there may be tens of thousands of jobs): most have run, and only those
        // that never have are looked up further.
        for (spec, state) in self.tables.jobs.with_states() {
            let name = &spec.name;
            if let Some(reason) = &state.auto_disabled {
                let key = (AlertKind::AutoDisabled, name.clone());
                let since_ms = self.standing_since(&key, now);
                standing.insert(
                    key,
                    Alert {
                        id: String::new(),
                        acknowledged: None,
                        kind: AlertKind::AutoDisabled,
                        job: Some(name.clone()),
                        pool: Some(spec.pool.clone()),
                        run_id: None,
                        since_ms,
                        message: format!("job {name}: {reason}"),
                    },
                );
            }
            if state.last_started_ms.is_some() {
                continue;
            }
            let Some(first) = self.tables.jobs.first_due(name) else {
                continue;
            };
            if self.tables.jobs.is_active(spec) && now.ms() > first + spec.policy.late_after_ms {
                standing.insert(
                    (AlertKind::NeverRun, name.clone()),
                    Alert {
                        id: String::new(),
                        acknowledged: None,
                        kind: AlertKind::NeverRun,
                        job: Some(name.clone()),
                        pool: Some(spec.pool.clone()),
                        run_id: None,
                        since_ms: first,
                        message: format!(
                            "job {name} has never run since it was created (first due {})",
                            format_ms(first)
                        ),
                    },
                );
            }
        }
        if let Some(low) = self.process.low_disk {
            let key = (AlertKind::DiskLow, String::new());
            let since_ms = self.standing_since(&key, now);
            standing.insert(
                key,
                Alert {
                    id: String::new(),
                    acknowledged: None,
                    kind: AlertKind::DiskLow,
                    job: None,
                    pool: None,
                    run_id: None,
                    since_ms,
                    message: low.describe(),
                },
            );
        }
        // Each alert named, its acknowledgement kept while it stands, and recorded.
        let mut new = Vec::new();
        for ((kind, subject), alert) in standing.iter_mut() {
            alert.id = alert_id(*kind, subject);
            match self.tables.alerts.get(&(*kind, subject.clone())) {
                Some(before) => alert.acknowledged = before.acknowledged.clone(),
                None => {
                    // Raised before a restart and still open: not news.
                    if !self.alert_log.is_open(&alert.id) {
                        new.push(alert.clone());
                    }
                    alert.acknowledged = self.alert_log.raised(&mut self.store, alert, now.ms())?;
                }
            }
        }
        let ids: std::collections::HashSet<&str> =
            standing.values().map(|a| a.id.as_str()).collect();
        // While workers may still be registering after a start, "no worker" is not
        // known: an alert of it from before stays open.
        let in_grace = now.ms() < self.worker_grace_end();
        let no_worker = AlertKind::NoWorker.as_str();
        let stands =
            |id: &str| ids.contains(id) || (in_grace && id.split(':').next() == Some(no_worker));
        self.alert_log
            .clear_all_but(&mut self.store, stands, now.ms())?;
        // Notify each condition once, when it appears.
        for alert in new {
            if alert.kind != AlertKind::AutoDisabled {
                out.notifications.push(Notification {
                    kind: alert.kind,
                    job: alert.job.clone(),
                    pool: alert.pool.clone(),
                    run_id: alert.run_id.clone(),
                    at_ms: now.ms(),
                    text: alert.message.clone(),
                });
            }
        }
        self.tables.alerts = standing;
        Ok(())
    }

    /// Since when a condition observed now (not dated by a record) stands: kept from its
    /// standing alert, not reset at each check.
    fn standing_since(&self, key: &(AlertKind, String), now: Now) -> u64 {
        self.tables
            .alerts
            .get(key)
            .map_or(now.ms(), |alert| alert.since_ms)
    }
}
