//! Writes waiting for the next commit, and the one transaction that commits them: a
//! multi-row statement per table (`unnest` of arrays), so a batch of any size is one
//! round trip per kind of record rather than one per record.

use super::connection::Session;
use crate::store::run_codec::{self, SpecKey};
use futures_util::future::LocalBoxFuture;
use jobcast_protocol::RunRecord;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_postgres::types::ToSql;

pub enum PendingRun {
    /// Created or rewritten: the record, the key of its job spec version, whether its
    /// row is marked (`unfinished`), and whether it is new in this batch (a plain insert:
    /// an upsert costs the database a look for the row first). Encoded by the commit,
    /// on the connection's thread: once however often the batch changed it, and not on
    /// the loop.
    Put {
        run: Box<RunRecord>,
        spec: SpecKey,
        marked: bool,
        created: bool,
    },
    /// Deleted by retention, with its log.
    Deleted,
}

#[derive(Default)]
pub struct Pending {
    /// Job spec versions new to the store.
    pub specs: Vec<(SpecKey, Vec<u8>)>,
    runs: BTreeMap<u64, PendingRun>,
    /// Runs written before this batch to be marked by it (`unfinished`).
    marks: Vec<u64>,
    /// Where a start's read of the newest runs begins from this batch on, if it moves.
    pub scan_from: Option<u64>,
    /// Sequence numbers of the pending runs, by id.
    ids: HashMap<String, u64>,
    /// Log chunks written (`Some`) or deleted (`None`).
    logs: BTreeMap<(String, u64), Option<Vec<u8>>>,
    /// Runs whose stored logs are deleted with them.
    pub logs_dropped: HashSet<String>,
    pub jobs: BTreeMap<String, Vec<u8>>,
    pub job_states: BTreeMap<String, Vec<u8>>,
    pub workers: BTreeMap<String, Vec<u8>>,
    pub settings: BTreeMap<String, Vec<u8>>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
            && self.runs.is_empty()
            && self.marks.is_empty()
            && self.scan_from.is_none()
            && self.logs.is_empty()
            && self.logs_dropped.is_empty()
            && self.jobs.is_empty()
            && self.job_states.is_empty()
            && self.workers.is_empty()
            && self.settings.is_empty()
    }

    pub fn spec(&self, key: &SpecKey) -> Option<&[u8]> {
        self.specs
            .iter()
            .find(|(pending, _)| pending == key)
            .map(|(_, bytes)| bytes.as_slice())
    }

    pub fn put_run(&mut self, run: &RunRecord, spec: SpecKey, marked: bool, created: bool) {
        if let Some(PendingRun::Put {
            run: held,
            spec: held_spec,
            marked: held_marked,
            created: held_created,
        }) = self.runs.get_mut(&run.seq)
        {
            // Written again in this batch (granted, started, ended): the copy held is
            // overwritten in place, keeping its allocations.
            held.as_mut().clone_from(run);
            *held_spec = spec;
            *held_marked = marked;
            *held_created |= created;
            return;
        }
        self.ids.insert(run.id.clone(), run.seq);
        self.runs.insert(
            run.seq,
            PendingRun::Put {
                run: Box::new(run.clone()),
                spec,
                marked,
                created,
            },
        );
    }

    /// Marks the row of run `seq` in this batch: its write if it has one here (unless
    /// deleted), else an update of the row as stored.
    pub fn mark(&mut self, seq: u64) {
        match self.runs.get_mut(&seq) {
            Some(PendingRun::Put { marked, .. }) => *marked = true,
            Some(PendingRun::Deleted) => {}
            None => self.marks.push(seq),
        }
    }

    pub fn delete_run(&mut self, run: &RunRecord) {
        self.ids.insert(run.id.clone(), run.seq);
        self.runs.insert(run.seq, PendingRun::Deleted);
        let chunks: Vec<(String, u64)> = self
            .logs
            .range((run.id.clone(), 0)..=(run.id.clone(), u64::MAX))
            .map(|(key, _)| key.clone())
            .collect();
        for key in chunks {
            self.logs.remove(&key);
        }
        self.logs_dropped.insert(run.id.clone());
    }

    pub fn run(&self, id: &str) -> Option<&PendingRun> {
        self.ids.get(id).and_then(|seq| self.runs.get(seq))
    }

    pub fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: Option<Vec<u8>>) {
        self.logs.insert((run_id.to_string(), offset), data);
    }

    /// A run's stored chunks with the pending writes over them, in stream order.
    pub fn log_chunks_over(
        &self,
        run_id: &str,
        stored: Vec<(u64, Vec<u8>)>,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut chunks: BTreeMap<u64, Vec<u8>> = stored.into_iter().collect();
        let id = run_id.to_string();
        for ((_, offset), data) in self.logs.range((id.clone(), 0)..=(id, u64::MAX)) {
            match data {
                Some(data) => chunks.insert(*offset, data.clone()),
                None => chunks.remove(offset),
            };
        }
        chunks.into_iter().collect()
    }

    /// Deletions pending among the runs from `from_seq` on: how many more stored rows a
    /// read of the oldest must ask for, to have `limit` left once they are taken out.
    pub fn deleted_from(&self, from_seq: u64) -> usize {
        self.runs
            .range(from_seq..)
            .filter(|(_, run)| matches!(run, PendingRun::Deleted))
            .count()
    }

    /// Lays this batch's runs from `from_seq` to `to_seq` over `runs`.
    fn lay_runs_over(&self, runs: &mut BTreeMap<u64, RunRecord>, from_seq: u64, to_seq: u64) {
        for (seq, pending) in self.runs.range(from_seq..=to_seq) {
            match pending {
                PendingRun::Put { run, .. } => runs.insert(*seq, (**run).clone()),
                PendingRun::Deleted => runs.remove(seq),
            };
        }
    }

    /// Deletions pending among the runs whose id starts with `prefix`.
    pub fn deleted_with_prefix(&self, prefix: &str) -> usize {
        self.ids
            .iter()
            .filter(|(id, seq)| {
                id.starts_with(prefix) && matches!(self.runs.get(seq), Some(PendingRun::Deleted))
            })
            .count()
    }

    /// Lays this batch's ids starting with `prefix`, up to `to` (if any), over `ids`.
    fn lay_ids_over(
        &self,
        ids: &mut std::collections::BTreeSet<String>,
        prefix: &str,
        to: Option<&String>,
    ) {
        for (id, seq) in &self.ids {
            if !id.starts_with(prefix) || to.is_some_and(|end| id > end) {
                continue;
            }
            match self.runs.get(seq) {
                Some(PendingRun::Put { .. }) => ids.insert(id.clone()),
                Some(PendingRun::Deleted) => ids.remove(id),
                None => false,
            };
        }
    }

    /// Deletions pending in all `layers` among runs from `from_seq` on (see
    /// [`Pending::deleted_from`]).
    pub fn deleted_from_all(layers: &[&Pending], from_seq: u64) -> usize {
        layers
            .iter()
            .map(|layer| layer.deleted_from(from_seq))
            .sum()
    }

    /// As [`Pending::deleted_with_prefix`], over all `layers`.
    pub fn deleted_with_prefix_all(layers: &[&Pending], prefix: &str) -> usize {
        layers
            .iter()
            .map(|layer| layer.deleted_with_prefix(prefix))
            .sum()
    }

    /// Stored (key, value) rows with the pending writes of that table over them, by key.
    pub fn over(
        stored: Vec<(String, Vec<u8>)>,
        pending: &BTreeMap<String, Vec<u8>>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut merged: BTreeMap<String, Vec<u8>> = stored.into_iter().collect();
        for (key, value) in pending {
            merged.insert(key.clone(), value.clone());
        }
        merged.into_iter().collect()
    }

    /// Writes everything in one transaction. The statements, BEGIN to COMMIT, are sent
    /// together and answered together (the client pipelines requests made at once): one
    /// round trip per batch.
    /// With `fence`, the first statement checks that this epoch still holds the
    /// leader's lease, keeping the lease row shared-locked until the commit ends.
    /// Borrows the writes (they stay readable by the loop until the commit is told).
    pub async fn commit(
        &self,
        fence: Option<u64>,
        session: &mut Session,
    ) -> Result<(), tokio_postgres::Error> {
        let [fence_sql, specs_sql, insert_runs_sql, runs_sql, mark_runs_sql, scan_from_sql, delete_runs_sql, delete_logs_of_runs_sql, delete_chunks_sql, chunks_sql, jobs_sql, job_states_sql, workers_sql, settings_sql] =
            session
                .statements([
                    FENCE,
                    UPSERT_SPECS,
                    INSERT_RUNS,
                    UPSERT_RUNS,
                    MARK_RUNS,
                    SET_SCAN_FROM,
                    DELETE_RUNS,
                    DELETE_LOGS_OF_RUNS,
                    DELETE_LOG_CHUNKS,
                    UPSERT_LOG_CHUNKS,
                    UPSERT_JOBS,
                    UPSERT_JOB_STATES,
                    UPSERT_WORKERS,
                    UPSERT_SETTINGS,
                ])
                .await?;
        let (spec_keys, spec_bytes): (Vec<Vec<u8>>, Vec<&[u8]>) = self
            .specs
            .iter()
            .map(|(key, bytes)| (key.to_vec(), bytes.as_slice()))
            .unzip();
        let mut deleted_seqs = Vec::new();
        let mut written = Vec::with_capacity(self.runs.len());
        for (seq, pending) in &self.runs {
            match pending {
                PendingRun::Put {
                    run,
                    spec,
                    marked,
                    created,
                } => written.push((run, run_codec::encode_run(run, *spec), *marked, *created)),
                PendingRun::Deleted => deleted_seqs.push(*seq as i64),
            }
        }
        let (mut inserted, mut put) = (RunColumns::default(), RunColumns::default());
        for (run, bytes, marked, created) in &written {
            match created {
                true => inserted.push(run, bytes, *marked),
                false => put.push(run, bytes, *marked),
            }
        }
        let marks: Vec<i64> = self.marks.iter().map(|seq| *seq as i64).collect();
        let scan_from = self.scan_from.map(|seq| seq as i64);
        let logs_dropped: Vec<&str> = self.logs_dropped.iter().map(String::as_str).collect();
        let (mut gone_ids, mut gone_offsets) = (Vec::new(), Vec::new());
        let (mut run_ids, mut offsets, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for ((run_id, offset), chunk) in &self.logs {
            match chunk {
                Some(chunk) => {
                    run_ids.push(run_id.as_str());
                    offsets.push(*offset as i64);
                    data.push(chunk.as_slice());
                }
                None => {
                    gone_ids.push(run_id.as_str());
                    gone_offsets.push(*offset as i64);
                }
            }
        }
        let keyed: Vec<(Vec<&str>, Vec<&[u8]>)> =
            [&self.jobs, &self.job_states, &self.workers, &self.settings]
                .into_iter()
                .map(|rows| {
                    rows.iter()
                        .map(|(key, value)| (key.as_str(), value.as_slice()))
                        .unzip()
                })
                .collect();

        let fence = fence.map(|epoch| epoch as i64);
        let client = &session.client;
        let mut statements: Vec<LocalBoxFuture<'_, Result<u64, tokio_postgres::Error>>> =
            vec![Box::pin(async {
                client.batch_execute("BEGIN").await.map(|()| 0)
            })];
        if let Some(epoch) = &fence {
            statements.push(Box::pin(async {
                client.execute(&fence_sql, &[epoch]).await
            }));
        }
        if !spec_keys.is_empty() {
            statements.push(Box::pin(async {
                client.execute(&specs_sql, &[&spec_keys, &spec_bytes]).await
            }));
        }
        for (sql, runs) in [(&insert_runs_sql, &inserted), (&runs_sql, &put)] {
            if runs.seq.is_empty() {
                continue;
            }
            statements.push(Box::pin(async move {
                let columns: [&(dyn ToSql + Sync); 8] = [
                    &runs.seq,
                    &runs.id,
                    &runs.job,
                    &runs.state,
                    &runs.finished,
                    &runs.created_at_ms,
                    &runs.record,
                    &runs.marked,
                ];
                client.execute(sql, &columns).await
            }));
        }
        if !marks.is_empty() {
            statements.push(Box::pin(async {
                client.execute(&mark_runs_sql, &[&marks]).await
            }));
        }
        if let Some(scan_from) = &scan_from {
            statements.push(Box::pin(async {
                client.execute(&scan_from_sql, &[scan_from]).await
            }));
        }
        if !deleted_seqs.is_empty() {
            statements.push(Box::pin(async {
                client.execute(&delete_runs_sql, &[&deleted_seqs]).await
            }));
        }
        if !logs_dropped.is_empty() {
            statements.push(Box::pin(async {
                client
                    .execute(&delete_logs_of_runs_sql, &[&logs_dropped])
                    .await
            }));
        }
        if !gone_ids.is_empty() {
            statements.push(Box::pin(async {
                client
                    .execute(&delete_chunks_sql, &[&gone_ids, &gone_offsets])
                    .await
            }));
        }
        if !run_ids.is_empty() {
            statements.push(Box::pin(async {
                client
                    .execute(&chunks_sql, &[&run_ids, &offsets, &data])
                    .await
            }));
        }
        for (sql, (keys, values)) in [&jobs_sql, &job_states_sql, &workers_sql, &settings_sql]
            .into_iter()
            .zip(&keyed)
        {
            if !keys.is_empty() {
                statements.push(Box::pin(async move {
                    client.execute(sql, &[keys, values]).await
                }));
            }
        }
        // Sent with the rest: after a statement that failed, the server turns the
        // COMMIT into a ROLLBACK, and that statement's error is the commit's.
        statements.push(Box::pin(async {
            client.batch_execute("COMMIT").await.map(|()| 0)
        }));
        let outcomes = futures_util::future::join_all(statements).await;
        match outcomes.into_iter().find_map(Result::err) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The oldest stored runs from `from_seq` on (`asked` were asked for), with the writes
/// of several batches (`layers`, oldest first) over them, oldest first, `limit` at most.
/// When the stored read came back full, pending runs past its last are left for a later
/// read: stored runs between the two were not read.
pub fn oldest_over_all(
    layers: &[&Pending],
    stored: Vec<RunRecord>,
    from_seq: u64,
    asked: usize,
    limit: usize,
) -> Vec<RunRecord> {
    let window_end = match stored.last() {
        Some(last) if stored.len() >= asked => last.seq,
        _ => u64::MAX,
    };
    let mut runs: BTreeMap<u64, RunRecord> = stored.into_iter().map(|run| (run.seq, run)).collect();
    for layer in layers {
        layer.lay_runs_over(&mut runs, from_seq, window_end);
    }
    runs.into_values().take(limit).collect()
}

/// Stored run ids starting with `prefix` (`asked` were asked for, in order), with the
/// runs of several batches (`layers`, oldest first) over them: created ones in, deleted
/// ones out; `limit` at most. As for [`oldest_over_all`], a full read leaves pending ids
/// past its last out.
pub fn ids_over_all(
    layers: &[&Pending],
    stored: Vec<String>,
    prefix: &str,
    asked: usize,
    limit: usize,
) -> Vec<String> {
    let window_end = match stored.last() {
        Some(last) if stored.len() >= asked => Some(last.clone()),
        _ => None,
    };
    let mut ids: std::collections::BTreeSet<String> = stored.into_iter().collect();
    for layer in layers {
        layer.lay_ids_over(&mut ids, prefix, window_end.as_ref());
    }
    ids.into_iter().take(limit).collect()
}

/// The runs of a commit, column by column (each column is one array parameter).
#[derive(Default)]
struct RunColumns<'a> {
    seq: Vec<i64>,
    id: Vec<&'a str>,
    job: Vec<&'a str>,
    state: Vec<&'a str>,
    finished: Vec<bool>,
    created_at_ms: Vec<i64>,
    record: Vec<&'a [u8]>,
    marked: Vec<bool>,
}

impl<'a> RunColumns<'a> {
    fn push(&mut self, run: &'a RunRecord, bytes: &'a [u8], marked: bool) {
        self.marked.push(marked);
        self.seq.push(run.seq as i64);
        self.state.push(run.state.as_str());
        self.finished.push(run.state.is_terminal());
        self.created_at_ms.push(run.created_at_ms as i64);
        self.id.push(&run.id);
        self.job.push(&run.job);
        self.record.push(bytes);
    }
}

const FENCE: &str = "SELECT jobcast_fence($1::bigint)";
const UPSERT_SPECS: &str = "INSERT INTO jobcast_job_specs (key, spec)
     SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT (key) DO NOTHING";
const INSERT_RUNS: &str = "INSERT INTO jobcast_runs (seq, id, job, state, finished, created_at_ms, record, marked)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bigint[], $7::bytea[], $8::boolean[])";
const UPSERT_RUNS: &str = "INSERT INTO jobcast_runs (seq, id, job, state, finished, created_at_ms, record, marked)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bigint[], $7::bytea[], $8::boolean[])
     ON CONFLICT (seq) DO UPDATE SET state = excluded.state, finished = excluded.finished, record = excluded.record, marked = excluded.marked";
const SET_SCAN_FROM: &str = "UPDATE jobcast_runs_scan SET scan_from = $1 WHERE id = 1";
const MARK_RUNS: &str = "UPDATE jobcast_runs SET marked = true WHERE seq = ANY($1::bigint[])";
const DELETE_RUNS: &str = "DELETE FROM jobcast_runs WHERE seq = ANY($1::bigint[])";
const DELETE_LOGS_OF_RUNS: &str = "DELETE FROM jobcast_log_chunks WHERE run_id = ANY($1::text[])";
const DELETE_LOG_CHUNKS: &str = "DELETE FROM jobcast_log_chunks WHERE (run_id, \"offset\") IN
     (SELECT * FROM unnest($1::text[], $2::bigint[]))";
const UPSERT_LOG_CHUNKS: &str = "INSERT INTO jobcast_log_chunks (run_id, \"offset\", data)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
     ON CONFLICT (run_id, \"offset\") DO UPDATE SET data = excluded.data";
const UPSERT_JOBS: &str = "INSERT INTO jobcast_jobs (name, spec)
     SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec";
const UPSERT_JOB_STATES: &str = "INSERT INTO jobcast_job_states (job, state)
     SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (job) DO UPDATE SET state = excluded.state";
const UPSERT_WORKERS: &str = "INSERT INTO jobcast_workers (id, status)
     SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (id) DO UPDATE SET status = excluded.status";
const UPSERT_SETTINGS: &str = "INSERT INTO jobcast_settings (key, value)
     SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (key) DO UPDATE SET value = excluded.value";
