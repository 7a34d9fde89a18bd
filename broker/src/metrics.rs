//! The Prometheus exposition at `/metrics`: counters and histograms fed as things happen
//! (from the core's observations and the server's flushes), and gauges read from the
//! core's status at each scrape. Encoded by `prometheus-client` in the Prometheus text
//! format (0.0.4), which every scraper reads.

use jobcast_core::Observation;
use jobcast_protocol::envelope::Rejection;
use jobcast_protocol::request::WORKER_TAGS;
use jobcast_protocol::{AlertKind, Report, StatusReport, WorkerRequest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// What `/metrics` answers with.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStateLabels {
    job: String,
    state: String,
}

/// A run's end: the job's name moved in from the observation, the state a constant, so
/// that counting a run costs no allocation of its own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    job: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// The commit in `--version`'s "0.1.0 (abcdef012345)" (`build/version.rs`).
fn commit_built_from() -> &'static str {
    let long = env!("JOBCAST_VERSION_LONG");
    long.split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or("unknown")
}

/// Every reason a frame or a connection is refused for: the envelope's, and those of the
/// sockets (`sockets.rs`) and the server (`revoked`).
const REFUSAL_REASONS: [&str; 14] = [
    Rejection::REASONS[0],
    Rejection::REASONS[1],
    Rejection::REASONS[2],
    Rejection::REASONS[3],
    Rejection::REASONS[4],
    Rejection::REASONS[5],
    Rejection::REASONS[6],
    Rejection::REASONS[7],
    Rejection::REASONS[8],
    "multipart",
    "handshake_failed",
    "auth_failed",
    "revoked",
    "subscription",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TagLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Run durations from 10 ms to about 11.6 days, ×4 a bucket.
fn run_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 4.0, 14)
}

/// Dispatch waits from 0.5 ms to about 2.3 hours, ×4 a bucket.
fn dispatch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 4.0, 13)
}

/// Store flushes (fsync) from 50 µs to about 3.3 s, ×2 a bucket.
fn flush_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 17)
}

/// The metrics kept between scrapes; clones share them.
#[derive(Clone)]
pub struct Metrics {
    runs_ended: Family<EndedLabels, Counter>,
    run_duration: Family<JobLabel, Histogram>,
    dispatch_latency: Family<PoolLabel, Histogram>,
    flush_time: Histogram,
    /// Messages from workers, by kind (`reports`: several reports in one).
    worker_requests: Family<TagLabel, Counter>,
    /// Reports about runs, by kind, whether each came alone or in a `reports` message.
    worker_reports: Family<TagLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs_ended: Family::default(),
            run_duration: Family::new_with_constructor(|| Histogram::new(run_buckets())),
            dispatch_latency: Family::new_with_constructor(|| Histogram::new(dispatch_buckets())),
            flush_time: Histogram::new(flush_buckets()),
            worker_requests: zeroed(WORKER_TAGS),
            worker_reports: zeroed(&Report::TAGS),
        }
    }
}

/// A counter for each kind, at zero from the start: a series that appears only with its
/// first event makes `rate()` miss that event.
fn zeroed(kinds: &[&'static str]) -> Family<TagLabel, Counter> {
    let family = Family::<TagLabel, Counter>::default();
    for &kind in kinds {
        family.get_or_create(&TagLabel { kind }).inc_by(0);
    }
    family
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1_000.0
}

impl Metrics {
    /// Counts what happened; it is on the path of every run, and takes the names it
    /// holds rather than copying them.
    pub fn observe(&self, observation: Observation) {
        match observation {
            Observation::Started { pool, waited_ms } => {
                self.dispatch_latency
                    .get_or_create(&PoolLabel { pool })
                    .observe(seconds(waited_ms));
            }
            Observation::Ended { job, state, ran_ms } => {
                let ended = EndedLabels {
                    job,
                    state: state.as_str(),
                };
                self.runs_ended.get_or_create(&ended).inc();
                if let Some(ran_ms) = ran_ms {
                    self.run_duration
                        .get_or_create(&JobLabel { job: ended.job })
                        .observe(seconds(ran_ms));
                }
            }
        }
    }

    /// Counts a message from a worker, and the reports it carries.
    pub fn count_worker_request(&self, request: &WorkerRequest) {
        self.worker_requests
            .get_or_create(&TagLabel {
                kind: request.tag(),
            })
            .inc();
        let count_report = |kind| self.worker_reports.get_or_create(&TagLabel { kind }).inc();
        match request {
            WorkerRequest::Reports(reports) => {
                for report in reports {
                    count_report(report.tag());
                }
            }
            WorkerRequest::RunStarted { .. }
            | WorkerRequest::LogChunk { .. }
            | WorkerRequest::RunFinished(_)
            | WorkerRequest::Release { .. } => {
                count_report(request.tag());
            }
            _ => {}
        }
    }

    pub fn observe_flush(&self, took: Duration) {
        self.flush_time.observe(took.as_secs_f64());
    }

    /// The exposition: the kept metrics, and gauges from `status` (and the store's size
    /// on disk, when it could be measured). Without `every_job`, the series kept since
    /// start for every job (ends, durations) are left out: `status` is then a caller's
    /// view limited to some teams, and those series name other teams' jobs.
    pub fn encode(
        &self,
        status: &StatusReport,
        store_bytes: Option<u64>,
        every_job: bool,
    ) -> String {
        let mut registry = Registry::with_prefix("jobcast");
        if every_job {
            registry.register(
                "runs_ended",
                "Runs that reached an end, by job and end state, since the broker started",
                self.runs_ended.clone(),
            );
            registry.register_with_unit(
                "run_duration",
                "How long runs ran, from start to end, by job",
                Unit::Seconds,
                self.run_duration.clone(),
            );
        }
        registry.register_with_unit(
            "dispatch_latency",
            "From when a run could be handed out to its reported start, by pool",
            Unit::Seconds,
            self.dispatch_latency.clone(),
        );
        registry.register(
            "worker_requests",
            "Messages from workers since the broker started, by kind (a `reports` message carries several reports)",
            self.worker_requests.clone(),
        );
        registry.register(
            "worker_reports",
            "Reports about runs from workers since the broker started, by kind, whether each came alone or in a `reports` message",
            self.worker_reports.clone(),
        );
        registry.register_with_unit(
            "store_flush",
            "Time of each group commit (the store's flush to disk)",
            Unit::Seconds,
            self.flush_time.clone(),
        );

        let runs_active = Family::<JobStateLabels, Gauge>::default();
        for (job, states) in &status.active_by_job {
            for (state, count) in states {
                runs_active
                    .get_or_create(&JobStateLabels {
                        job: job.clone(),
                        state: state.clone(),
                    })
                    .set(*count as i64);
            }
        }
        registry.register(
            "runs_active",
            "Runs not yet ended (queued, assigned, running), by job and state",
            runs_active,
        );
        let queued = Family::<PoolLabel, Gauge>::default();
        for (pool, count) in &status.queued_by_pool {
            queued
                .get_or_create(&PoolLabel { pool: pool.clone() })
                .set(*count as i64);
        }
        registry.register(
            "queue_depth",
            "Runs waiting in each pool's queue to be handed out",
            queued,
        );
        let stored = Gauge::<i64>::default();
        stored.set(status.total_runs as i64);
        registry.register("runs_stored", "Runs in the store, ended or not", stored);
        let online = Gauge::<i64>::default();
        online.set(status.workers.iter().filter(|w| w.online).count() as i64);
        registry.register("workers_online", "Workers with a session", online);
        let slots = Gauge::<i64>::default();
        slots.set(
            status
                .workers
                .iter()
                .filter(|w| w.online)
                .map(|w| i64::from(w.concurrency))
                .sum(),
        );
        registry.register(
            "worker_slots",
            "Runs the online workers may run at once, together",
            slots,
        );
        // Counts the core keeps from its start: counters, as Prometheus expects. Every
        // known reason is there from the start, at zero: a family that appears only with
        // its first event has no HELP or TYPE before it, and `rate()` misses that event.
        let refused = Family::<ReasonLabel, Counter>::default();
        for reason in REFUSAL_REASONS {
            refused
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc_by(0);
        }
        for (reason, count) in &status.rejected {
            refused
                .get_or_create(&ReasonLabel {
                    reason: reason.clone(),
                })
                .inc_by(*count);
        }
        registry.register(
            "refused_frames",
            "Frames and connections refused since the broker started, by reason",
            refused,
        );
        let pruned = Counter::<u64>::default();
        pruned.inc_by(status.pruned_runs);
        registry.register(
            "runs_pruned",
            "Ended runs retention deleted since the broker started",
            pruned,
        );
        let alerts = Family::<KindLabel, Gauge>::default();
        for kind in AlertKind::STANDING {
            alerts
                .get_or_create(&KindLabel {
                    kind: kind.as_str().to_string(),
                })
                .set(0);
        }
        for alert in &status.alerts {
            alerts
                .get_or_create(&KindLabel {
                    kind: alert.kind.as_str().to_string(),
                })
                .inc();
        }
        registry.register(
            "alerts",
            "Standing alerts, by kind (late, never_run, no_worker, disk_low, …)",
            alerts,
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: status.version.clone(),
                commit: commit_built_from().to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The broker's release and the commit it was built from (always 1)",
            build,
        );
        let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        uptime.set(seconds(status.uptime_ms));
        registry.register_with_unit(
            "uptime",
            "Time since the broker started",
            Unit::Seconds,
            uptime,
        );
        let leadership = status.leadership.as_ref();
        register_leadership(&mut registry, true, leadership.map(|l| l.epoch), leadership);
        if let Some(bytes) = store_bytes {
            let size = Gauge::<i64>::default();
            size.set(bytes as i64);
            registry.register_with_unit(
                "store_size",
                "Bytes the store's files take in the data directory",
                Unit::Bytes,
                size,
            );
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        if let Some(stats) = crate::process_stats::read() {
            let _ = prometheus_client::encoding::prometheus_text::encode(
                &mut text,
                &process_registry(&stats),
            );
        }
        text
    }
}

/// The process's own figures, under the names every Prometheus client uses (no prefix).
fn process_registry(stats: &crate::process_stats::ProcessStats) -> Registry {
    let mut registry = Registry::default();
    let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    cpu.inc_by(stats.cpu_seconds);
    registry.register_with_unit(
        "process_cpu",
        "User and system CPU time the broker has used",
        Unit::Seconds,
        cpu,
    );
    let gauge = |value: u64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge
    };
    registry.register_with_unit(
        "process_resident_memory",
        "Resident memory of the broker",
        Unit::Bytes,
        gauge(stats.resident_bytes),
    );
    registry.register_with_unit(
        "process_virtual_memory",
        "Virtual memory of the broker",
        Unit::Bytes,
        gauge(stats.virtual_bytes),
    );
    registry.register(
        "process_open_fds",
        "File descriptors the broker has open",
        gauge(stats.open_fds),
    );
    registry.register(
        "process_max_fds",
        "The most file descriptors the broker may open (its soft limit)",
        gauge(stats.max_fds),
    );
    let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    start.set(stats.start_time_seconds);
    registry.register_with_unit(
        "process_start_time",
        "When the broker started, in seconds since the Unix epoch",
        Unit::Seconds,
        start,
    );
    registry
}

/// Bytes of the files under `dir`, recursively (the store's size on disk).
pub fn directory_size(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// `/metrics` of a standby (several brokers): that it does not act, and the epoch of the
/// leader it names.
pub fn encode_standby(leader: Option<&jobcast_protocol::LeaderAddress>) -> String {
    let mut registry = Registry::with_prefix("jobcast");
    register_leadership(&mut registry, false, leader.map(|l| l.epoch), None);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// Whether this broker acts; with several brokers, the leader's epoch and, on the
/// leader, the lease it leads by.
fn register_leadership(
    registry: &mut Registry,
    acting: bool,
    epoch: Option<u64>,
    leadership: Option<&jobcast_protocol::Leadership>,
) {
    let leader = Gauge::<i64>::default();
    leader.set(i64::from(acting));
    registry.register(
        "leader",
        "1 when this broker acts (alone on its store, or the leader of several), 0 when it stands by",
        leader,
    );
    if let Some(epoch) = epoch {
        let gauge = Gauge::<i64>::default();
        gauge.set(epoch as i64);
        registry.register(
            "leader_epoch",
            "The epoch of the leader's lease (rises at each takeover)",
            gauge,
        );
    }
    let Some(leadership) = leadership else {
        return;
    };
    let age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    age.set(seconds(leadership.renewed_ms_ago));
    registry.register_with_unit(
        "lease_age",
        "Since the leader's lease was last renewed",
        Unit::Seconds,
        age,
    );
    let brokers = Gauge::<i64>::default();
    brokers.set(leadership.brokers.len() as i64);
    registry.register(
        "brokers_seen",
        "Brokers seen on the database within the last three leases, this one included",
        brokers,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::RunState;
    use std::collections::BTreeMap;

    fn status() -> StatusReport {
        StatusReport {
            version: "test".into(),
            boot_id: 1,
            uptime_ms: 1_500,
            active: BTreeMap::from([("queued".into(), 3)]),
            total_runs: 10,
            jobs: 2,
            workers: Vec::new(),
            rejected: BTreeMap::from([("bad_mac".into(), 4)]),
            connections: BTreeMap::new(),
            alerts: Vec::new(),
            disabled_pools: Vec::new(),
            pruned_runs: 0,
            active_by_job: BTreeMap::from([(
                "backup".into(),
                BTreeMap::from([("queued".into(), 3)]),
            )]),
            queued_by_pool: BTreeMap::from([("default".into(), 3)]),
            oldest_queued_by_pool: Default::default(),
            held_by_pool: Default::default(),
            runs_by_state: BTreeMap::from([("queued".into(), 3), ("succeeded".into(), 7)]),
            leadership: None,
        }
    }

    /// The value of the sample `name{labels}` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn observations_and_status_become_samples() {
        let metrics = Metrics::default();
        metrics.observe(Observation::Started {
            pool: "default".into(),
            waited_ms: 2,
        });
        for (state, ran_ms) in [
            (RunState::Succeeded, Some(1_000)),
            (RunState::Failed, Some(30)),
            (RunState::Cancelled, None),
        ] {
            metrics.observe(Observation::Ended {
                job: "backup".into(),
                state,
                ran_ms,
            });
        }
        metrics.observe_flush(Duration::from_micros(300));
        let text = metrics.encode(&status(), Some(4096), true);
        // A caller limited to teams gets no series kept for every job (its status, and so
        // its gauges, are already its teams' only).
        let limited = metrics.encode(&status(), Some(4096), false);
        assert!(!limited.contains("jobcast_runs_ended"), "{limited}");
        assert!(!limited.contains("jobcast_run_duration"), "{limited}");
        assert!(limited.contains("jobcast_queue_depth"), "{limited}");
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert_eq!(
            value(r#"jobcast_runs_ended_total{job="backup",state="succeeded"}"#),
            1.0
        );
        assert_eq!(
            value(r#"jobcast_runs_ended_total{job="backup",state="cancelled"}"#),
            1.0
        );
        // Only runs that started have a duration.
        assert_eq!(
            value(r#"jobcast_run_duration_seconds_count{job="backup"}"#),
            2.0
        );
        assert_eq!(
            value(r#"jobcast_run_duration_seconds_sum{job="backup"}"#),
            1.03
        );
        assert_eq!(
            value(r#"jobcast_dispatch_latency_seconds_count{pool="default"}"#),
            1.0
        );
        assert_eq!(
            value(r#"jobcast_dispatch_latency_seconds_bucket{pool="default",le="0.002"}"#),
            1.0
        );
        assert_eq!(value("jobcast_store_flush_seconds_count"), 1.0);
        assert_eq!(
            value(r#"jobcast_runs_active{job="backup",state="queued"}"#),
            3.0
        );
        assert_eq!(value(r#"jobcast_queue_depth{pool="default"}"#), 3.0);
        assert_eq!(
            value(r#"jobcast_refused_frames_total{reason="bad_mac"}"#),
            4.0
        );
        assert_eq!(value("jobcast_store_size_bytes"), 4096.0);
        assert_eq!(value("jobcast_uptime_seconds"), 1.5);
        assert_eq!(value("jobcast_workers_online"), 0.0);
    }

    /// Messages are counted by kind, and the reports in a `reports` message each by its
    /// own kind, like reports sent alone; kinds not seen yet are there at zero.
    #[test]
    fn worker_messages_and_the_reports_they_carry_are_counted_by_kind() {
        use jobcast_protocol::{Outcome, RunFinished};
        let finished = RunFinished {
            run_id: "r1".into(),
            outcome: Outcome::Exited { code: 0 },
            duration_ms: 1,
            log_bytes: 2,
            claim: 0,
            usage: None,
            started: None,
        };
        let metrics = Metrics::default();
        metrics.count_worker_request(&WorkerRequest::Claim { max: 4, wait_ms: 0 });
        metrics.count_worker_request(&WorkerRequest::RunFinished(finished.clone()));
        metrics.count_worker_request(&WorkerRequest::Reports(vec![
            Report::LogChunk {
                run_id: "r2".into(),
                offset: 0,
                data: b"hi".to_vec(),
            },
            Report::RunFinished(RunFinished {
                run_id: "r2".into(),
                ..finished
            }),
        ]));
        let text = metrics.encode(&status(), None, true);
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        for (family, kind, count) in [
            ("requests", "claim", 1.0),
            ("requests", "run_finished", 1.0),
            ("requests", "reports", 1.0),
            ("requests", "log_chunk", 0.0),
            ("requests", "register", 0.0),
            ("reports", "run_finished", 2.0),
            ("reports", "log_chunk", 1.0),
            ("reports", "run_started", 0.0),
            ("reports", "release", 0.0),
        ] {
            let series = format!(r#"jobcast_worker_{family}_total{{kind="{kind}"}}"#);
            assert_eq!(value(&series), count, "{series}");
        }
        assert!(
            sample(&text, r#"jobcast_worker_reports_total{kind="claim"}"#).is_none(),
            "a claim is not a report"
        );
    }

    /// A family that appears only with its first event has no HELP or TYPE before it, and
    /// `rate()` over it misses that event: every known label value is there at zero.
    #[test]
    fn counted_reasons_and_alert_kinds_are_there_at_zero_with_the_build() {
        let mut quiet = status();
        quiet.rejected.clear();
        quiet.alerts.clear();
        let text = Metrics::default().encode(&quiet, None, true);
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        for reason in REFUSAL_REASONS {
            let series = format!(r#"jobcast_refused_frames_total{{reason="{reason}"}}"#);
            assert_eq!(value(&series), 0.0);
        }
        for kind in AlertKind::STANDING {
            let series = format!(r#"jobcast_alerts{{kind="{}"}}"#, kind.as_str());
            assert_eq!(value(&series), 0.0);
        }
        assert!(text.contains("# TYPE jobcast_alerts gauge"), "{text}");
        let build = format!(
            r#"jobcast_build_info{{version="{}",commit="{}"}}"#,
            quiet.version,
            commit_built_from()
        );
        assert_eq!(value(&build), 1.0);
        // The process's own figures, under the names every client library uses.
        assert!(value("process_resident_memory_bytes") > 0.0, "{text}");
        assert!(value("process_open_fds") > 0.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_start_time_seconds") > 1.7e9);
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert_ne!(commit_built_from(), "", "{text}");
    }

    #[test]
    fn the_store_size_counts_files_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 50]).unwrap();
        assert_eq!(directory_size(dir.path()).unwrap(), 150);
        assert!(directory_size(&dir.path().join("missing")).is_err());
    }
}
