//! `Series`: counts over time, of all runs (callers not limited to teams), a job's or a
//! pool's (`crate::series` keeps them).

use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Scope};
use jobcast_protocol::{Reply, Resolution, SeriesOf};

impl<S: Store> Core<S> {
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
                if !self.sees(None, Some(pool), scope) {
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
}
