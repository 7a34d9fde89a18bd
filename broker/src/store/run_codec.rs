//! How a run is laid out on disk: a compact MessagePack array (no field names), led by a
//! format tag, and without its job spec, which is stored once per version in a tree of
//! its own and named by a hash of its content. A finished run took 976 bytes as a map
//! with its spec inline; this way, about 290.
//!
//! Records written before this format (maps, spec inline) are still read.

use super::{StoreError, StoreResult};
use jobcast_protocol::{JobSpec, Outcome, RunRecord, RunState, Transition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// The first byte of a record in this format: 0xc1 is never the first byte of a
/// MessagePack value, so a record of the older format (a map) cannot be taken for one.
const TAG: u8 = 0xc1;
/// The layout after the tag; a new layout gets a new number and its own reader.
/// 2 appended the run's parameter values and priority; a record of layout 1 reads with
/// none (those last fields are optional for that). 3 appended the late result of a run
/// given up as lost; 4 what the run used.
const VERSION: u8 = 4;

/// A job spec version's name in the specs tree: the start of the SHA-256 of its stored
/// bytes.
pub type SpecKey = [u8; 16];

/// The run's fields in a fixed order, borrowed for writing. The same order as
/// [`StoredRun`]: `round_trip_keeps_every_field` fails if they drift apart.
#[derive(Serialize)]
struct StoredRunRef<'a> {
    id: &'a str,
    seq: u64,
    job: &'a str,
    pool: &'a str,
    attempt: u32,
    state: RunState,
    worker: &'a Option<String>,
    pid: Option<u32>,
    created_at_ms: u64,
    scheduled_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    outcome: &'a Option<Outcome>,
    kill_requested: bool,
    log_bytes: u64,
    log_cap: u64,
    parent: &'a Option<String>,
    first_attempt: &'a Option<String>,
    pinned_worker: &'a Option<String>,
    not_before_ms: u64,
    created_at_us: u64,
    spawned_at_us: Option<u64>,
    ended_at_us: Option<u64>,
    schedule_id: &'a Option<String>,
    worker_instance: Option<u64>,
    history: &'a [Transition],
    spec: SpecKey,
    params: &'a jobcast_protocol::params::Params,
    priority: i32,
    late_result: &'a Option<jobcast_protocol::LateResult>,
    usage: &'a Option<jobcast_protocol::RunUsage>,
}

#[derive(Deserialize)]
struct StoredRun {
    id: String,
    seq: u64,
    job: String,
    pool: String,
    attempt: u32,
    state: RunState,
    worker: Option<String>,
    pid: Option<u32>,
    created_at_ms: u64,
    scheduled_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    outcome: Option<Outcome>,
    kill_requested: bool,
    log_bytes: u64,
    log_cap: u64,
    parent: Option<String>,
    first_attempt: Option<String>,
    pinned_worker: Option<String>,
    not_before_ms: u64,
    created_at_us: u64,
    spawned_at_us: Option<u64>,
    ended_at_us: Option<u64>,
    schedule_id: Option<String>,
    worker_instance: Option<u64>,
    history: Vec<Transition>,
    spec: SpecKey,
    /// Not in layout 1.
    #[serde(default)]
    params: jobcast_protocol::params::Params,
    /// Not in layout 1.
    #[serde(default)]
    priority: i32,
    /// Not in layouts 1 and 2.
    #[serde(default)]
    late_result: Option<jobcast_protocol::LateResult>,
    /// Not in layouts 1 to 3.
    #[serde(default)]
    usage: Option<jobcast_protocol::RunUsage>,
}

/// A spec as stored: a map with field names (written once per version, so size matters
/// less than being readable by anything that reads MessagePack).
pub fn encode_spec(spec: &JobSpec) -> (SpecKey, Vec<u8>) {
    let bytes = rmp_serde::to_vec_named(spec).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    (key, bytes)
}

pub fn decode_spec(bytes: &[u8]) -> StoreResult<JobSpec> {
    rmp_serde::from_slice(bytes).map_err(|e| corrupt("job spec", e))
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

pub fn encode_run(run: &RunRecord, spec: SpecKey) -> Vec<u8> {
    let stored = StoredRunRef {
        id: &run.id,
        seq: run.seq,
        job: &run.job,
        pool: &run.pool,
        attempt: run.attempt,
        state: run.state,
        worker: &run.worker,
        pid: run.pid,
        created_at_ms: run.created_at_ms,
        scheduled_at_ms: run.scheduled_at_ms,
        started_at_ms: run.started_at_ms,
        finished_at_ms: run.finished_at_ms,
        outcome: &run.outcome,
        kill_requested: run.kill_requested,
        log_bytes: run.log_bytes,
        log_cap: run.log_cap,
        parent: &run.parent,
        first_attempt: &run.first_attempt,
        pinned_worker: &run.pinned_worker,
        not_before_ms: run.not_before_ms,
        created_at_us: run.created_at_us,
        spawned_at_us: run.spawned_at_us,
        ended_at_us: run.ended_at_us,
        schedule_id: &run.schedule_id,
        worker_instance: run.worker_instance,
        history: &run.history,
        spec,
        params: &run.params,
        priority: run.priority,
        late_result: &run.late_result,
        usage: &run.usage,
    };
    let mut bytes = Vec::with_capacity(320);
    bytes.push(TAG);
    bytes.push(VERSION);
    // Writing to a Vec cannot fail, and every field serializes.
    let _ = rmp_serde::encode::write(&mut bytes, &stored);
    bytes
}

/// Reads a run; `spec` finds a spec version by its key.
pub fn decode_run(
    bytes: &[u8],
    spec: impl FnOnce(&SpecKey) -> StoreResult<Arc<JobSpec>>,
) -> StoreResult<RunRecord> {
    match bytes {
        [TAG, 1..=VERSION, rest @ ..] => {
            let s: StoredRun = rmp_serde::from_slice(rest).map_err(|e| corrupt("run", e))?;
            Ok(RunRecord {
                spec: spec(&s.spec)?,
                id: s.id,
                seq: s.seq,
                job: s.job,
                pool: s.pool,
                attempt: s.attempt,
                state: s.state,
                worker: s.worker,
                pid: s.pid,
                created_at_ms: s.created_at_ms,
                scheduled_at_ms: s.scheduled_at_ms,
                started_at_ms: s.started_at_ms,
                finished_at_ms: s.finished_at_ms,
                outcome: s.outcome,
                kill_requested: s.kill_requested,
                log_bytes: s.log_bytes,
                log_cap: s.log_cap,
                parent: s.parent,
                first_attempt: s.first_attempt,
                pinned_worker: s.pinned_worker,
                not_before_ms: s.not_before_ms,
                created_at_us: s.created_at_us,
                spawned_at_us: s.spawned_at_us,
                ended_at_us: s.ended_at_us,
                schedule_id: s.schedule_id,
                worker_instance: s.worker_instance,
                history: s.history,
                params: s.params,
                priority: s.priority,
                usage: s.usage,
                late_result: s.late_result,
                waiting_for: None,
            })
        }
        [TAG, version, ..] => Err(corrupt(
            "run",
            format!("record format {version} is newer than this broker reads"),
        )),
        // The format before this one: a map with the spec inline.
        _ => rmp_serde::from_slice(bytes).map_err(|e| corrupt("run", e)),
    }
}

/// The spec versions a store has seen, both ways: the key of each job's current spec (so
/// a run's write hashes nothing while its job is unchanged) and specs by key (so reading
/// runs decodes each version once, and the runs read share it).
#[derive(Default)]
pub struct SpecCache {
    current: HashMap<String, (Arc<JobSpec>, SpecKey)>,
    by_key: HashMap<SpecKey, Arc<JobSpec>>,
}

/// Versions kept decoded; past this the cache starts over (it only saves decoding).
const MAX_CACHED_SPECS: usize = 4_096;

impl SpecCache {
    /// The key of `spec`, and its bytes when this version is new to the cache (to be
    /// written to the specs tree).
    pub fn key_of(&mut self, spec: &Arc<JobSpec>) -> (SpecKey, Option<Vec<u8>>) {
        if let Some((known, key)) = self.current.get(&spec.name) {
            // `Arc`'s equality looks at the pointer first (runs of one version share
            // one definition), and compares definitions only when they differ.
            if known == spec {
                return (*key, None);
            }
        }
        let (key, bytes) = encode_spec(spec);
        self.current.insert(spec.name.clone(), (spec.clone(), key));
        self.remember(key, spec.clone());
        (key, Some(bytes))
    }

    pub fn get(&self, key: &SpecKey) -> Option<&Arc<JobSpec>> {
        self.by_key.get(key)
    }

    /// The version `key` names: from the cache, else read by `stored` (its bytes), decoded
    /// and remembered. A run naming a version the store does not hold is corrupt.
    pub fn get_or_read(
        &mut self,
        key: &SpecKey,
        stored: impl FnOnce() -> StoreResult<Option<Vec<u8>>>,
    ) -> StoreResult<Arc<JobSpec>> {
        if let Some(spec) = self.get(key) {
            return Ok(spec.clone());
        }
        let bytes = stored()?.ok_or_else(|| StoreError::Corrupt {
            what: "run",
            detail: format!(
                "it refers to a job spec version {} not stored",
                hex::encode(key)
            ),
        })?;
        let spec = Arc::new(decode_spec(&bytes)?);
        self.remember(*key, spec.clone());
        Ok(spec)
    }

    pub fn remember(&mut self, key: SpecKey, spec: Arc<JobSpec>) {
        if self.by_key.len() >= MAX_CACHED_SPECS {
            self.by_key.clear();
        }
        self.by_key.insert(key, spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::Exec;

    fn spec() -> JobSpec {
        JobSpec {
            timeout_ms: Some(3_600_000),
            ..JobSpec::new(
                "nightly",
                "default",
                Exec::Script("#!/bin/sh\npg_dump db\n".into()),
            )
        }
    }

    /// Every field set to a value no other field has, so fields that swapped places
    /// between the writer and the reader cannot come back equal.
    fn full_run() -> RunRecord {
        RunRecord {
            id: "0123456789abcdef".into(),
            seq: 11,
            job: "nightly".into(),
            pool: "pool-x".into(),
            attempt: 12,
            state: RunState::Failed,
            worker: Some("w-a".into()),
            pid: Some(13),
            created_at_ms: 14,
            scheduled_at_ms: 15,
            started_at_ms: Some(16),
            finished_at_ms: Some(17),
            outcome: Some(Outcome::Exited { code: 18 }),
            kill_requested: true,
            log_bytes: 19,
            log_cap: 20,
            parent: Some("parent-run".into()),
            first_attempt: Some("first-run".into()),
            pinned_worker: Some("w-b".into()),
            not_before_ms: 21,
            created_at_us: 22,
            spawned_at_us: Some(23),
            ended_at_us: Some(24),
            schedule_id: Some("tick-25".into()),
            worker_instance: Some(26),
            history: vec![Transition {
                state: RunState::Queued,
                at_ms: 27,
                cause: "enqueued".into(),
            }],
            spec: spec().into(),
            params: [("target".to_string(), "db".to_string())].into(),
            priority: -28,
            late_result: Some(jobcast_protocol::LateResult {
                outcome: Outcome::Exited { code: 29 },
                duration_ms: 30,
                log_bytes: 31,
                reported_at_ms: 32,
            }),
            usage: Some(jobcast_protocol::RunUsage {
                cpu_us: Some(33),
                peak_memory_bytes: Some(34),
            }),
            waiting_for: None,
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let run = full_run();
        let (key, spec_bytes) = encode_spec(&run.spec);
        let bytes = encode_run(&run, key);
        let back = decode_run(&bytes, |k| {
            assert_eq!(*k, key);
            decode_spec(&spec_bytes).map(Arc::new)
        })
        .unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn records_of_the_older_format_are_still_read() {
        let run = full_run();
        let old = rmp_serde::to_vec_named(&run).unwrap();
        let back = decode_run(&old, |_| panic!("the old format has its spec inline")).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn records_of_layout_2_read_with_no_late_result() {
        let run = RunRecord {
            late_result: None,
            usage: None,
            ..full_run()
        };
        let mut bytes = encode_run(&run, [7; 16]);
        // Layout 2 is layout 4 without its last two fields: an array of 29, not 31.
        assert_eq!(&bytes[2..5], &[0xdc, 0, 31], "an array16 header");
        assert_eq!(bytes.pop(), Some(0xc0), "no usage");
        assert_eq!(bytes.pop(), Some(0xc0), "no late result");
        bytes[1] = 2;
        bytes[4] = 29;
        let back = decode_run(&bytes, |_| Ok(spec().into())).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn records_of_layout_1_read_with_no_parameters() {
        let run = RunRecord {
            params: Default::default(),
            priority: 0,
            late_result: None,
            usage: None,
            ..full_run()
        };
        let mut bytes = encode_run(&run, [7; 16]);
        // Layout 1 is layout 4 without the last four fields: an array of 27, not 31.
        assert_eq!(&bytes[2..5], &[0xdc, 0, 31], "an array16 header");
        assert_eq!(bytes.pop(), Some(0xc0), "no usage");
        assert_eq!(bytes.pop(), Some(0xc0), "no late result");
        assert_eq!(bytes.pop(), Some(0), "priority 0");
        assert_eq!(bytes.pop(), Some(0x80), "the empty map of parameters");
        bytes[1] = 1;
        bytes[4] = 27;
        let back = decode_run(&bytes, |_| Ok(spec().into())).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn a_newer_format_is_refused_with_a_clear_error() {
        let mut bytes = encode_run(&full_run(), [0; 16]);
        bytes[1] = VERSION + 1;
        let err = decode_run(&bytes, |_| Ok(spec().into())).unwrap_err();
        assert!(
            err.to_string().contains("newer than this broker reads"),
            "{err}"
        );
    }

    #[test]
    fn the_compact_record_is_less_than_half_the_old_one() {
        let run = full_run();
        let old = rmp_serde::to_vec_named(&run).unwrap().len();
        let new = encode_run(&run, [0; 16]).len();
        assert!(new * 2 < old, "{new} bytes against {old}");
    }

    #[test]
    fn a_job_unchanged_keeps_its_key_and_an_edit_makes_a_new_version() {
        let mut cache = SpecCache::default();
        let shared = Arc::new(spec());
        let (first, bytes) = cache.key_of(&shared);
        assert!(bytes.is_some(), "a new version is written once");
        assert_eq!(cache.key_of(&shared), (first, None));
        // An equal definition held elsewhere is the same version.
        assert_eq!(cache.key_of(&Arc::new(spec())), (first, None));
        let edited = Arc::new(JobSpec {
            timeout_ms: Some(60_000),
            ..spec()
        });
        let (second, bytes) = cache.key_of(&edited);
        assert_ne!(second, first);
        assert!(bytes.is_some());
        assert_eq!(cache.get(&first).map(|s| &**s), Some(&spec()));
        assert_eq!(cache.get(&second), Some(&edited));
    }
}
