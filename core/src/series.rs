//! Counts over time: per minute for the last day and per hour for the last 30 days, of
//! all runs, of each pool and of each job (a job's minutes only for the last 3 hours):
//! runs started, succeeded, failed, otherwise ended, their wait to start, the queue's
//! depth. Buckets are kept sparsely (a quiet job costs nothing), so memory is bounded
//! by [`MINUTES_KEPT`] + [`HOURS_KEPT`] buckets per pool and for all runs, and
//! [`JOB_MINUTES_KEPT`] + [`HOURS_KEPT`] per job. Each changed series is written to the
//! store (setting `series/KEY`) at most every [`SAVE_EVERY_MS`] and when the broker
//! stops, so a restart keeps them (a kill loses at most the last few minutes).

use crate::store::{Store, StoreError, StoreResult};
use jobcast_protocol::{Resolution, RunState, SeriesPoint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;
pub const MINUTES_KEPT: u64 = 1_440;
pub const JOB_MINUTES_KEPT: u64 = 180;
pub const HOURS_KEPT: u64 = 720;
pub const SAVE_EVERY_MS: u64 = 5 * MINUTE_MS;
const PREFIX: &str = "series/";

/// The key of all runs' series, and of a job's and a pool's.
pub const ALL: &str = "all";
pub fn job_key(job: &str) -> String {
    format!("job:{job}")
}
pub fn pool_key(pool: &str) -> String {
    format!("pool:{pool}")
}

/// Upper bounds (ms) of the classes a start's wait is counted in, for its percentiles;
/// the last class holds everything longer.
const WAIT_CLASSES_MS: [u64; 11] = [
    10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 60_000, 300_000, 1_800_000,
];

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    started: u32,
    succeeded: u32,
    failed: u32,
    other: u32,
    wait_sum_ms: u64,
    wait_max_ms: u64,
    queued: u32,
    /// Starts by wait class ([`WAIT_CLASSES_MS`], then longer).
    #[serde(default)]
    waits: [u32; 12],
}

/// The wait (a class's upper bound; the longest seen for the last class) under which
/// `share` of the starts counted in `waits` fell.
fn wait_percentile(waits: &[u32; 12], longest_ms: u64, share: f64) -> u64 {
    let total: u64 = waits.iter().map(|n| u64::from(*n)).sum();
    if total == 0 {
        return 0;
    }
    let wanted = ((total as f64) * share).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (class, count) in waits.iter().enumerate() {
        seen += u64::from(*count);
        if seen >= wanted {
            return WAIT_CLASSES_MS
                .get(class)
                .copied()
                .unwrap_or(longest_ms)
                .min(longest_ms);
        }
    }
    longest_ms
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Series {
    /// By the start of the bucket (ms since the epoch).
    minutes: BTreeMap<u64, Bucket>,
    hours: BTreeMap<u64, Bucket>,
    /// A job's latest runs' ends, oldest first: (state, when, ms it ran). Kept here, not
    /// in the job's state, which is written at every start and end (a kilobyte more on
    /// each cost 15 % of the broker's capacity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent: Vec<(RunState, u64, u64)>,
}

impl Series {
    fn each_bucket(&mut self, now_ms: u64, change: impl Fn(&mut Bucket)) {
        change(self.minutes.entry(now_ms - now_ms % MINUTE_MS).or_default());
        change(self.hours.entry(now_ms - now_ms % HOUR_MS).or_default());
    }

    fn prune(&mut self, now_ms: u64, minutes_kept: u64) {
        let minutes_from = now_ms.saturating_sub(minutes_kept * MINUTE_MS);
        self.minutes = self
            .minutes
            .split_off(&(minutes_from - minutes_from % MINUTE_MS + MINUTE_MS));
        let hours_from = now_ms.saturating_sub(HOURS_KEPT * HOUR_MS);
        self.hours = self
            .hours
            .split_off(&(hours_from - hours_from % HOUR_MS + HOUR_MS));
    }

    fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.hours.is_empty() && self.recent.is_empty()
    }
}

/// Keyed by `all`, `job:NAME` and `pool:NAME`, looked up three times at every start and
/// end.
type ByKey<V> = crate::fast_hash::FastMap<String, V>;

#[derive(Debug, Default)]
pub(crate) struct SeriesTable {
    by_key: ByKey<Series>,
    /// Changed since written.
    dirty: crate::fast_hash::FastSet<String>,
    next_save_ms: u64,
}

impl SeriesTable {
    pub fn load(settings: &[(String, Vec<u8>)]) -> StoreResult<SeriesTable> {
        let mut by_key = ByKey::default();
        for (key, bytes) in settings {
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let series: Series = rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
                what: "time series",
                detail: format!("{key}: {e}"),
            })?;
            if !series.is_empty() {
                by_key.insert(name.to_string(), series);
            }
        }
        Ok(SeriesTable {
            by_key,
            ..Default::default()
        })
    }

    /// Applies `change` to the current buckets of all runs, of `job` and of `pool`. On
    /// the path of every start and end: a key is allocated only the first time.
    fn each(&mut self, job: &str, pool: &str, now_ms: u64, change: impl Fn(&mut Bucket)) {
        let mut key = String::with_capacity(5 + job.len().max(pool.len()));
        for (prefix, name) in [("", ALL), ("job:", job), ("pool:", pool)] {
            key.clear();
            key.push_str(prefix);
            key.push_str(name);
            match self.by_key.get_mut(key.as_str()) {
                Some(series) => series.each_bucket(now_ms, &change),
                None => {
                    let mut series = Series::default();
                    series.each_bucket(now_ms, &change);
                    self.by_key.insert(key.clone(), series);
                }
            }
            if !self.dirty.contains(key.as_str()) {
                self.dirty.insert(key.clone());
            }
        }
    }

    pub fn started(&mut self, job: &str, pool: &str, waited_ms: u64, now_ms: u64) {
        let class = WAIT_CLASSES_MS
            .iter()
            .position(|bound| waited_ms <= *bound)
            .unwrap_or(WAIT_CLASSES_MS.len());
        self.each(job, pool, now_ms, |b| {
            b.started += 1;
            b.wait_sum_ms += waited_ms;
            b.wait_max_ms = b.wait_max_ms.max(waited_ms);
            b.waits[class] += 1;
        });
    }

    /// The latest ends of `job`'s runs, oldest first.
    pub fn recent(&self, job: &str) -> Vec<(RunState, u64, u64)> {
        self.by_key
            .get(&job_key(job))
            .map(|s| s.recent.clone())
            .unwrap_or_default()
    }

    pub fn ended(&mut self, job: &str, pool: &str, state: RunState, ran_ms: u64, now_ms: u64) {
        self.each(job, pool, now_ms, |b| match state {
            RunState::Succeeded => b.succeeded += 1,
            RunState::Failed | RunState::TimedOut | RunState::Lost => b.failed += 1,
            _ => b.other += 1,
        });
        if let Some(series) = self.by_key.get_mut(&job_key(job)) {
            series.recent.push((state, now_ms, ran_ms));
            let excess = series
                .recent
                .len()
                .saturating_sub(jobcast_protocol::job::RECENT_RUNS);
            series.recent.drain(..excess);
        }
    }

    /// The runs queued now, per pool: each bucket keeps the most it saw.
    pub fn queued(&mut self, by_pool: &BTreeMap<String, u32>, now_ms: u64) {
        let total: u32 = by_pool.values().sum();
        let mut seen = vec![(ALL.to_string(), total)];
        seen.extend(by_pool.iter().map(|(pool, n)| (pool_key(pool), *n)));
        // Pools that had runs queued and have none now go to 0 in a new bucket.
        for (key, series) in &self.by_key {
            if key.starts_with("pool:") && !seen.iter().any(|(k, _)| k == key) {
                let last = series.minutes.last_key_value().map(|(_, b)| b.queued);
                if last.is_some_and(|n| n > 0) {
                    seen.push((key.clone(), 0));
                }
            }
        }
        for (key, count) in seen {
            if count == 0 && !self.by_key.contains_key(&key) {
                continue;
            }
            let series = self.by_key.entry(key.clone()).or_default();
            series.each_bucket(now_ms, |b| b.queued = b.queued.max(count));
            self.dirty.insert(key);
        }
    }

    /// The newest `count` buckets of `key`, oldest first, empty ones included, and the
    /// wait percentiles (p50, p99) of the starts in them all.
    pub fn points(
        &self,
        key: &str,
        resolution: Resolution,
        count: u32,
        now_ms: u64,
    ) -> (u64, Vec<SeriesPoint>, (u64, u64)) {
        let (step, kept) = match resolution {
            Resolution::Minute if key.starts_with("job:") => (MINUTE_MS, JOB_MINUTES_KEPT),
            Resolution::Minute => (MINUTE_MS, MINUTES_KEPT),
            Resolution::Hour => (HOUR_MS, HOURS_KEPT),
        };
        let count = u64::from(count).clamp(1, kept);
        let newest = now_ms - now_ms % step;
        let from = newest.saturating_sub((count - 1) * step);
        let series = self.by_key.get(key);
        let buckets = series.map(|s| match resolution {
            Resolution::Minute => &s.minutes,
            Resolution::Hour => &s.hours,
        });
        let mut waits = [0u32; 12];
        let mut longest = 0;
        let points = (0..count)
            .map(|i| from + i * step)
            .filter(|at| *at <= newest)
            .map(|at| {
                let b = buckets
                    .and_then(|b| b.get(&at))
                    .copied()
                    .unwrap_or_default();
                for (all, n) in waits.iter_mut().zip(b.waits) {
                    *all += n;
                }
                longest = longest.max(b.wait_max_ms);
                SeriesPoint {
                    at_ms: at,
                    started: b.started,
                    succeeded: b.succeeded,
                    failed: b.failed,
                    other: b.other,
                    wait_avg_ms: b.wait_sum_ms.checked_div(u64::from(b.started)).unwrap_or(0),
                    wait_max_ms: b.wait_max_ms,
                    queued: b.queued,
                }
            })
            .collect();
        let percentiles = (
            wait_percentile(&waits, longest, 0.5),
            wait_percentile(&waits, longest, 0.99),
        );
        (step, points, percentiles)
    }

    /// Drops what is past keeping and writes the changed series, when due (`force`: now).
    pub fn save(&mut self, store: &mut impl Store, now_ms: u64, force: bool) -> StoreResult<()> {
        if !force && now_ms < self.next_save_ms {
            return Ok(());
        }
        self.next_save_ms = now_ms + SAVE_EVERY_MS;
        let mut changed = std::mem::take(&mut self.dirty);
        for (key, series) in &mut self.by_key {
            let kept = if key.starts_with("job:") {
                JOB_MINUTES_KEPT
            } else {
                MINUTES_KEPT
            };
            let before = (series.minutes.len(), series.hours.len());
            series.prune(now_ms, kept);
            if before != (series.minutes.len(), series.hours.len()) {
                changed.insert(key.clone());
            }
        }
        for key in changed {
            // A series with nothing left is written empty (and not loaded again).
            let series = self.by_key.remove(&key).unwrap_or_default();
            let bytes = rmp_serde::to_vec(&series).map_err(|e| StoreError::Corrupt {
                what: "time series",
                detail: e.to_string(),
            })?;
            store.put_setting(&format!("{PREFIX}{key}"), &bytes)?;
            if !series.is_empty() {
                self.by_key.insert(key, series);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_percentiles_are_a_class_bound_and_never_past_the_longest_wait() {
        let mut waits = [0u32; 12];
        waits[0] = 98; // <= 10 ms
        waits[5] = 1; // <= 3 s
        waits[11] = 1; // longer than 30 min
        assert_eq!(wait_percentile(&waits, 4_000_000, 0.5), 10);
        assert_eq!(wait_percentile(&waits, 4_000_000, 0.99), 3_000);
        assert_eq!(wait_percentile(&waits, 4_000_000, 1.0), 4_000_000);
        assert_eq!(wait_percentile(&[0; 12], 0, 0.5), 0);
        assert_eq!(
            wait_percentile(&waits, 5, 0.5),
            5,
            "the longest seen bounds it"
        );
    }
    use crate::store::MemoryStore;

    const T: u64 = 1_800_000_000_000; // on a whole hour

    #[test]
    fn counts_fall_in_their_minute_and_hour_and_survive_a_restart() {
        let mut store = MemoryStore::default();
        let mut table = SeriesTable::load(&store.settings().unwrap()).unwrap();
        table.started("a", "p", 100, T + 5_000);
        table.started("a", "p", 300, T + 6_000);
        table.ended("a", "p", RunState::Succeeded, 9, T + 7_000);
        table.ended("a", "p", RunState::TimedOut, 10, T + MINUTE_MS + 1);
        table.ended("b", "p", RunState::Cancelled, 0, T + MINUTE_MS + 2);
        let mut queued = BTreeMap::new();
        queued.insert("p".to_string(), 4);
        table.queued(&queued, T + MINUTE_MS + 3);
        table.save(&mut store, T + MINUTE_MS + 4, true).unwrap();
        let table = SeriesTable::load(&store.settings().unwrap()).unwrap();
        assert_eq!(
            table.recent("a"),
            vec![
                (RunState::Succeeded, T + 7_000, 9),
                (RunState::TimedOut, T + MINUTE_MS + 1, 10)
            ],
            "a job's latest ends, kept across a restart"
        );
        let now = T + 2 * MINUTE_MS + 10;
        let (step, minutes, waits) = table.points(&job_key("a"), Resolution::Minute, 3, now);
        assert_eq!(waits, (100, 300), "p50 and p99 by class: 100 ms and 300 ms");
        assert_eq!(step, MINUTE_MS);
        let counts: Vec<(u64, u32, u32, u32, u64, u64)> = minutes
            .iter()
            .map(|p| {
                (
                    p.at_ms - T,
                    p.started,
                    p.succeeded,
                    p.failed,
                    p.wait_avg_ms,
                    p.wait_max_ms,
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                (0, 2, 1, 0, 200, 300),
                (MINUTE_MS, 0, 0, 1, 0, 0),
                (2 * MINUTE_MS, 0, 0, 0, 0, 0)
            ]
        );
        let (_, hours, _) = table.points(ALL, Resolution::Hour, 1, now);
        assert_eq!(
            (
                hours[0].at_ms,
                hours[0].started,
                hours[0].succeeded,
                hours[0].failed,
                hours[0].other,
                hours[0].queued
            ),
            (T, 2, 1, 1, 1, 4)
        );
        let (_, pool, _) = table.points(&pool_key("p"), Resolution::Minute, 2, now);
        assert_eq!(pool[0].queued, 4);
    }

    #[test]
    fn old_buckets_are_dropped_and_a_jobs_minutes_are_kept_for_three_hours() {
        let mut store = MemoryStore::default();
        let mut table = SeriesTable::load(&store.settings().unwrap()).unwrap();
        table.ended("a", "p", RunState::Succeeded, 0, T);
        let later = T + (JOB_MINUTES_KEPT + 1) * MINUTE_MS;
        table.ended("a", "p", RunState::Succeeded, 0, later);
        table.save(&mut store, later, true).unwrap();
        let job = &table.by_key[&job_key("a")];
        assert_eq!(job.minutes.len(), 1, "the first minute is past keeping");
        assert_eq!(
            table.by_key[ALL].minutes.len(),
            2,
            "all runs: a day of minutes"
        );
        let much_later = T + (HOURS_KEPT + 5) * HOUR_MS;
        table.ended("b", "r", RunState::Succeeded, 0, much_later);
        table.save(&mut store, much_later, true).unwrap();
        let job = &table.by_key[&job_key("a")];
        assert!(
            job.minutes.is_empty() && job.hours.is_empty(),
            "a job's counts past keeping are dropped"
        );
        assert_eq!(job.recent.len(), 2, "its latest runs' ends stay");
        assert!(
            !table.by_key.contains_key(&pool_key("p")),
            "a series with nothing left is dropped"
        );
        assert_eq!(table.by_key[ALL].hours.len(), 1, "30 days of hours");
        let again = SeriesTable::load(&store.settings().unwrap()).unwrap();
        assert_eq!(again.recent("a").len(), 2);
        assert!(
            !again.by_key.contains_key(&pool_key("p")),
            "and not loaded again"
        );
    }
}
