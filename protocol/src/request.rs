//! Requests, by who may send them: a worker key can only express [`WorkerRequest`]s and
//! the admin key only [`AdminRequest`]s, so the broker's handlers for each never see the
//! other kind.
//!
//! On the wire a request is one externally tagged MessagePack value, `{"claim": {...}}`
//! or `"status"`, whichever kind it is; [`Request`] reads the tag first and decodes the
//! rest as the kind that tag belongs to.

use crate::message::{Heartbeat, JobSpec, Register, RunFilter, RunFinished, RunId, WorkerInfo};
use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A request as it travels: from a worker or from an operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Request {
    Worker(WorkerRequest),
    Admin(AdminRequest),
}

/// What a worker key may ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRequest {
    Register(Register),
    Heartbeat(Heartbeat),
    /// Up to `max` runs from the worker's pools. With `wait_ms` > 0 and nothing to
    /// grant, the broker holds the request and answers it as soon as runs arrive (in the
    /// same group commit that queued them) or, with no runs, when the wait is over.
    Claim {
        max: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        wait_ms: u64,
    },
    RunStarted {
        run_id: RunId,
        pid: u32,
        /// When the process was spawned, µs since the epoch (worker clock).
        #[serde(default)]
        spawned_at_us: u64,
    },
    LogChunk {
        run_id: RunId,
        /// Byte offset of `data` in the run's whole output stream.
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    RunFinished(RunFinished),
    Release {
        run_ids: Vec<RunId>,
    },
    /// The worker is exiting and holds no runs: it is offline now, not after the
    /// broker's worker timeout. Refused (`bad_request`) while it still holds runs.
    Leaving,
    Pong {
        ping_id: u64,
        info: WorkerInfo,
    },
    FetchOrders,
    /// Several reports in one message, handled in order as if sent one by one; the
    /// reply is `Reply::Reports`, one reply for each. Sent only to a broker whose
    /// `Registered` says `reports_together`; at most [`MAX_REPORTS`] at a time.
    Reports(Vec<Report>),
}

/// The most reports one [`WorkerRequest::Reports`] may carry.
pub const MAX_REPORTS: usize = 1_024;

/// A report about a run, as it goes inside [`WorkerRequest::Reports`]: the fields and
/// the wire form of the worker request of the same name (and nothing else, so that
/// reports never nest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    RunStarted {
        run_id: RunId,
        pid: u32,
        #[serde(default)]
        spawned_at_us: u64,
    },
    LogChunk {
        run_id: RunId,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    RunFinished(RunFinished),
    Release {
        run_ids: Vec<RunId>,
    },
}

impl From<Report> for WorkerRequest {
    fn from(report: Report) -> WorkerRequest {
        match report {
            Report::RunStarted {
                run_id,
                pid,
                spawned_at_us,
            } => WorkerRequest::RunStarted {
                run_id,
                pid,
                spawned_at_us,
            },
            Report::LogChunk {
                run_id,
                offset,
                data,
            } => WorkerRequest::LogChunk {
                run_id,
                offset,
                data,
            },
            Report::RunFinished(finished) => WorkerRequest::RunFinished(finished),
            Report::Release { run_ids } => WorkerRequest::Release { run_ids },
        }
    }
}

impl WorkerRequest {
    /// Its wire tag (`claim`, `run_finished`, …): what it is, for counting.
    pub fn tag(&self) -> &'static str {
        match self {
            WorkerRequest::Register(_) => "register",
            WorkerRequest::Heartbeat(_) => "heartbeat",
            WorkerRequest::Claim { .. } => "claim",
            WorkerRequest::RunStarted { .. } => "run_started",
            WorkerRequest::LogChunk { .. } => "log_chunk",
            WorkerRequest::RunFinished(_) => "run_finished",
            WorkerRequest::Release { .. } => "release",
            WorkerRequest::Leaving => "leaving",
            WorkerRequest::Pong { .. } => "pong",
            WorkerRequest::FetchOrders => "fetch_orders",
            WorkerRequest::Reports(_) => "reports",
        }
    }
}

impl Report {
    /// The wire tags of its variants.
    pub const TAGS: [&'static str; 4] = ["run_started", "log_chunk", "run_finished", "release"];

    /// Its wire tag, the same as the worker request of its name.
    pub fn tag(&self) -> &'static str {
        match self {
            Report::RunStarted { .. } => "run_started",
            Report::LogChunk { .. } => "log_chunk",
            Report::RunFinished(_) => "run_finished",
            Report::Release { .. } => "release",
        }
    }
}

impl TryFrom<WorkerRequest> for Report {
    /// A request that is not a report, given back.
    type Error = WorkerRequest;

    fn try_from(request: WorkerRequest) -> Result<Report, WorkerRequest> {
        Ok(match request {
            WorkerRequest::RunStarted {
                run_id,
                pid,
                spawned_at_us,
            } => Report::RunStarted {
                run_id,
                pid,
                spawned_at_us,
            },
            WorkerRequest::LogChunk {
                run_id,
                offset,
                data,
            } => Report::LogChunk {
                run_id,
                offset,
                data,
            },
            WorkerRequest::RunFinished(finished) => Report::RunFinished(finished),
            WorkerRequest::Release { run_ids } => Report::Release { run_ids },
            other => return Err(other),
        })
    }
}

/// What the admin key (`jobcastctl`, the HTTP API) may ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRequest {
    Ping {
        worker: Option<String>,
        timeout_ms: u64,
    },
    Kill {
        selectors: Vec<String>,
    },
    Enqueue {
        job: String,
        /// An idempotency key chosen by the client and reused when it retries: a second
        /// `Enqueue` of the job with the same key answers with the run the first created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Parameter values, checked against the job's declaration.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        params: crate::params::Params,
        /// This run's priority instead of the job's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<i32>,
    },
    ListRuns(RunFilter),
    ListJobs,
    GetLog {
        run: String,
        /// `None`: the whole capped log. `Some(n)`: stored output from stream offset `n`.
        offset: Option<u64>,
        /// With `offset`: while the run is unfinished and has no output past `offset`,
        /// the broker holds the answer until it has, or ends, or this many ms pass (at
        /// most 25 s). `offset` `u64::MAX` waits for the run's end alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    ApplyJobs {
        jobs: Vec<JobSpec>,
    },
    Status,
    Drain {
        worker: String,
    },
    /// Runs a run's job again as a new attempt of it (linked to the first attempt).
    Retry {
        run: String,
    },
    /// The alerts standing now, and the history of alerts (raised, cleared,
    /// acknowledged), newest first: records numbered below `before` when it is given, at
    /// most `limit` (up to 1,000).
    Alerts {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        limit: u32,
    },
    /// Marks a standing alert as seen (by its `id`): it stands until its condition ends,
    /// but dashboards stop raising it.
    AckAlert {
        id: String,
    },
    /// Retries each of several finished runs (at most 1,000), each as `Retry` would; one
    /// that cannot be retried is refused on its own and the others go on.
    RetryMany {
        runs: Vec<String>,
    },
    /// Enables or disables a job, or every job of a pool. Disabled jobs' ticks are
    /// skipped; they can still be enqueued by hand.
    SetEnabled {
        target: EnableTarget,
        enabled: bool,
    },
    /// What retention deletes: with `dry_run`, counts what it would delete now (looking
    /// at up to 100,000 of the oldest runs); without, deletes it now, a bounded step at a
    /// time as the broker does by itself.
    Prune {
        dry_run: bool,
    },
    /// Reads the broker's settings file again and takes its keys, API tokens and
    /// webhooks (as SIGHUP does); other settings need a restart and are reported.
    Reload,
    /// The next times a job's schedule starts runs (at most 100), skipping ticks that
    /// fall in its exclusion windows; none when it is manual, disabled or done.
    NextFires {
        job: String,
        count: u32,
    },
    /// Counts over time: runs started, succeeded, failed and otherwise ended, their wait
    /// to start and the queue's depth, per minute (the last day) or per hour (the last
    /// 30 days), of all runs, a job's or a pool's; the newest `points` buckets (up to
    /// 1,440), oldest first, the current one last.
    Series {
        of: SeriesOf,
        resolution: Resolution,
        points: u32,
    },
    /// The next ticks that start runs across all jobs, soonest first (at most `limit`, up
    /// to 200; excluded ticks skipped).
    Upcoming {
        limit: u32,
    },
    /// The audit log, newest first: what operators changed (kills, retries, enabling and
    /// disabling, drains, jobs applied, prunes, reloads), by whom and when; entries with
    /// a sequence number below `before` when it is given, at most `limit` (up to 1,000).
    Audit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        limit: u32,
    },
    /// Writes a consistent copy of the embedded store as it is now (every run, log, job,
    /// setting) into a new directory `to` on the broker's host: an absolute path that
    /// does not exist yet, in a directory that does. The copy is a store of its own,
    /// which `jobcast-broker restore` copies back. Answered once it is written and read
    /// back (`BackedUp`); a PostgreSQL store is backed up with PostgreSQL's tools.
    Backup {
        to: String,
    },
}

impl AdminRequest {
    /// Whether it only reads (a standby of several brokers answers these from the
    /// database; anything else goes to the leader).
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            AdminRequest::ListRuns(_)
                | AdminRequest::ListJobs
                | AdminRequest::GetLog { .. }
                | AdminRequest::Status
                | AdminRequest::NextFires { .. }
                | AdminRequest::Audit { .. }
                | AdminRequest::Alerts { .. }
                | AdminRequest::Upcoming { .. }
                | AdminRequest::Series { .. }
        )
    }
}

/// Whose counts a `Series` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesOf {
    All,
    Job(String),
    Pool(String),
}

/// A `Series`' bucket length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Minute,
    Hour,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnableTarget {
    Job(String),
    Pool(String),
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl From<WorkerRequest> for Request {
    fn from(request: WorkerRequest) -> Request {
        Request::Worker(request)
    }
}

impl From<AdminRequest> for Request {
    fn from(request: AdminRequest) -> Request {
        Request::Admin(request)
    }
}

/// The wire tags of [`WorkerRequest`]'s variants (a test checks them against serde's).
pub const WORKER_TAGS: &[&str] = &[
    "register",
    "heartbeat",
    "claim",
    "run_started",
    "log_chunk",
    "run_finished",
    "release",
    "leaving",
    "pong",
    "fetch_orders",
    "reports",
];
/// The wire tags of [`AdminRequest`]'s variants (a test checks them against serde's).
const ADMIN_TAGS: &[&str] = &[
    "ping",
    "kill",
    "enqueue",
    "list_runs",
    "list_jobs",
    "get_log",
    "apply_jobs",
    "status",
    "drain",
    "retry",
    "set_enabled",
    "prune",
    "reload",
    "next_fires",
    "audit",
    "retry_many",
    "alerts",
    "ack_alert",
    "upcoming",
    "series",
    "backup",
];
/// Every request tag, worker ones first.
const ALL_TAGS: &[&str] = &ALL_TAG_ARRAY;
const ALL_TAG_ARRAY: [&str; WORKER_TAGS.len() + ADMIN_TAGS.len()] = {
    let mut all = [""; WORKER_TAGS.len() + ADMIN_TAGS.len()];
    let mut i = 0;
    while i < WORKER_TAGS.len() {
        all[i] = WORKER_TAGS[i];
        i += 1;
    }
    while i < all.len() {
        all[i] = ADMIN_TAGS[i - WORKER_TAGS.len()];
        i += 1;
    }
    all
};

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Request, D::Error> {
        deserializer.deserialize_enum("Request", ALL_TAGS, RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = Request;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a request")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Request, A::Error> {
        let (tag, variant) = data.variant::<String>()?;
        let tagged = Tagged { tag: &tag, variant };
        if WORKER_TAGS.contains(&tag.as_str()) {
            WorkerRequest::deserialize(tagged).map(Request::Worker)
        } else if ADMIN_TAGS.contains(&tag.as_str()) {
            AdminRequest::deserialize(tagged).map(Request::Admin)
        } else {
            Err(de::Error::unknown_variant(&tag, ALL_TAGS))
        }
    }
}

/// An enum whose tag has been read already: hands the derived decoder of one kind the
/// tag, then the rest as it comes.
struct Tagged<'t, V> {
    tag: &'t str,
    variant: V,
}

impl<'de, A: de::VariantAccess<'de>> Deserializer<'de> for Tagged<'_, A> {
    type Error = A::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, A::Error> {
        Err(de::Error::custom("a request can only be read as an enum"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de, A: de::VariantAccess<'de>> EnumAccess<'de> for Tagged<'_, A> {
    type Error = A::Error;
    type Variant = A;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, A), A::Error> {
        let tag: de::value::StrDeserializer<'_, A::Error> = self.tag.into_deserializer();
        Ok((seed.deserialize(tag)?, self.variant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listings_logs_status_and_next_fires_are_reads() {
        let reads = [
            AdminRequest::ListRuns(Default::default()),
            AdminRequest::ListJobs,
            AdminRequest::GetLog {
                run: "r".into(),
                offset: None,
                wait_ms: None,
            },
            AdminRequest::Status,
            AdminRequest::NextFires {
                job: "j".into(),
                count: 1,
            },
        ];
        assert!(reads.iter().all(AdminRequest::only_reads));
        let writes = [
            AdminRequest::Reload,
            AdminRequest::Prune { dry_run: true },
            AdminRequest::Retry { run: "r".into() },
            AdminRequest::Drain { worker: "w".into() },
        ];
        assert!(!writes.iter().any(AdminRequest::only_reads));
    }

    /// The variant names serde's derive gives an enum, read by asking it to decode from a
    /// deserializer that only records what `deserialize_enum` is told.
    fn variants_of<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        struct Recorder(Option<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl fmt::Display for Stop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl de::Error for Stop {
            fn custom<M: fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> Deserializer<'de> for &mut Recorder {
            type Error = Stop;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _: &'static str,
                variants: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0 = Some(variants);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                struct identifier ignored_any
            }
        }
        let mut recorder = Recorder(None);
        let _ = T::deserialize(&mut recorder);
        recorder.0.unwrap_or_default().to_vec()
    }

    #[test]
    fn the_tag_lists_are_exactly_the_variants_of_each_kind() {
        let sorted = |mut tags: Vec<&'static str>| {
            tags.sort_unstable();
            tags
        };
        assert_eq!(
            sorted(WORKER_TAGS.to_vec()),
            sorted(variants_of::<WorkerRequest>())
        );
        assert_eq!(
            sorted(ADMIN_TAGS.to_vec()),
            sorted(variants_of::<AdminRequest>())
        );
    }

    #[test]
    fn a_request_names_itself_by_its_wire_tag() {
        let finished = crate::RunFinished {
            run_id: "r".into(),
            outcome: crate::Outcome::Exited { code: 0 },
            duration_ms: 1,
            log_bytes: 0,
            claim: 0,
            usage: None,
            started: None,
        };
        let reports = vec![
            Report::RunStarted {
                run_id: "r".into(),
                pid: 1,
                spawned_at_us: 0,
            },
            Report::LogChunk {
                run_id: "r".into(),
                offset: 0,
                data: vec![1],
            },
            Report::RunFinished(finished.clone()),
            Report::Release {
                run_ids: vec!["r".into()],
            },
        ];
        let mut requests: Vec<WorkerRequest> =
            reports.iter().cloned().map(WorkerRequest::from).collect();
        requests.extend([
            WorkerRequest::Claim { max: 1, wait_ms: 0 },
            WorkerRequest::Leaving,
            WorkerRequest::FetchOrders,
            WorkerRequest::Reports(reports.clone()),
        ]);
        // The tag serde writes: the map's one key.
        let wire_tag = |value: serde_json::Value| -> String {
            match value {
                serde_json::Value::String(tag) => tag,
                serde_json::Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
                other => panic!("{other}"),
            }
        };
        for request in &requests {
            let tag = wire_tag(serde_json::to_value(request).unwrap());
            assert_eq!(request.tag(), tag);
            assert!(WORKER_TAGS.contains(&request.tag()));
        }
        for report in &reports {
            assert_eq!(
                report.tag(),
                wire_tag(serde_json::to_value(report).unwrap())
            );
        }
        let mut tags: Vec<&str> = reports.iter().map(Report::tag).collect();
        tags.sort_unstable();
        let mut all = Report::TAGS;
        all.sort_unstable();
        assert_eq!(tags, all, "one report of each kind, each in TAGS");
    }

    #[test]
    fn no_tag_belongs_to_both_kinds() {
        assert_eq!(ALL_TAGS.len(), WORKER_TAGS.len() + ADMIN_TAGS.len());
        let mut unique = ALL_TAGS.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ALL_TAGS.len(), "a tag in both kinds");
    }

    #[test]
    fn the_wire_form_is_one_tagged_value() {
        let bytes =
            rmp_serde::to_vec_named(&Request::from(WorkerRequest::Claim { max: 2, wait_ms: 0 }))
                .unwrap();
        // {"claim": {"max": 2}}: no trace of the kind.
        assert_eq!(
            bytes,
            [0x81, 0xa5, b'c', b'l', b'a', b'i', b'm', 0x81, 0xa3, b'm', b'a', b'x', 0x02]
        );
        let status = rmp_serde::to_vec_named(&Request::from(AdminRequest::Status)).unwrap();
        assert_eq!(status, [0xa6, b's', b't', b'a', b't', b'u', b's']);
        assert_eq!(
            rmp_serde::from_slice::<Request>(&status).unwrap(),
            Request::Admin(AdminRequest::Status)
        );
    }

    #[test]
    fn reports_go_together_in_the_wire_form_of_each_and_cannot_nest() {
        let reports = Request::from(WorkerRequest::Reports(vec![Report::Release {
            run_ids: vec!["r".into()],
        }]));
        let bytes = rmp_serde::to_vec_named(&reports).unwrap();
        // {"reports": [{"release": {"run_ids": ["r"]}}]}
        let mut expected = vec![0x81, 0xa7];
        expected.extend_from_slice(b"reports");
        expected.extend_from_slice(&[0x91, 0x81, 0xa7]);
        expected.extend_from_slice(b"release");
        expected.extend_from_slice(&[0x81, 0xa7]);
        expected.extend_from_slice(b"run_ids");
        expected.extend_from_slice(&[0x91, 0xa1, b'r']);
        assert_eq!(bytes, expected);
        assert_eq!(rmp_serde::from_slice::<Request>(&bytes).unwrap(), reports);
        // Each report converts to the request of the same name and back; anything else
        // is not a report.
        let started = WorkerRequest::RunStarted {
            run_id: "r".into(),
            pid: 7,
            spawned_at_us: 9,
        };
        let report = Report::try_from(started.clone()).unwrap();
        assert_eq!(
            rmp_serde::to_vec_named(&report).unwrap(),
            rmp_serde::to_vec_named(&started).unwrap()
        );
        assert_eq!(WorkerRequest::from(report), started);
        assert_eq!(
            Report::try_from(WorkerRequest::FetchOrders),
            Err(WorkerRequest::FetchOrders)
        );
        // Reports inside reports are not a report.
        let nested = rmp_serde::to_vec_named(&std::collections::BTreeMap::from([(
            "reports",
            vec![std::collections::BTreeMap::from([(
                "reports",
                Vec::<u8>::new(),
            )])],
        )]))
        .unwrap();
        assert!(rmp_serde::from_slice::<Request>(&nested).is_err());
    }

    #[test]
    fn unknown_and_malformed_requests_are_errors_not_panics() {
        let unknown = rmp_serde::to_vec_named(&std::collections::BTreeMap::from([(
            "launch_missiles",
            1u8,
        )]))
        .unwrap();
        let err = rmp_serde::from_slice::<Request>(&unknown).unwrap_err();
        assert!(err.to_string().contains("launch_missiles"), "{err}");
        // A known tag with the wrong content.
        let wrong = rmp_serde::to_vec_named(&std::collections::BTreeMap::from([("claim", "many")]))
            .unwrap();
        assert!(rmp_serde::from_slice::<Request>(&wrong).is_err());
        for bytes in [&[][..], &[0xc1], &[0x81], &[0x92, 0x01, 0x02]] {
            assert!(rmp_serde::from_slice::<Request>(bytes).is_err());
        }
    }
}
