//! The broker's records in PostgreSQL: the same records as the embedded store (runs in
//! `run_codec`'s layout, job versions by content, logs in chunks, settings), one table
//! per kind (`broker/migrations/`).
//!
//! Writes wait in memory ([`pending::Pending`]) and go to the database together at
//! [`Store::flush`], as one transaction of a few multi-row statements: one round trip
//! per batch, not per write. Reads see them: a read by key looks at the pending writes
//! first; a read over a range (a listing, the unfinished runs) commits them first.

mod connection;
pub mod lease;
mod pending;
pub mod schema;
mod settings;

use super::run_codec::{self, SpecCache, SpecKey};
use super::unfinished::Unfinished;
use super::{list_newest_first, setting_u64, FlushDone, Listing, Store, StoreError, StoreResult};
use connection::{database_error, Connection, Session};
use jobcast_core::store::{OldestRun, RunReader};
use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use pending::{Pending, PendingRun};
use serde::de::DeserializeOwned;
pub use settings::PgSettings;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use tokio_postgres::types::ToSql;

pub struct PgStore {
    connection: Connection,
    settings: PgSettings,
    /// Writes not yet committed (a cell: a read over a range commits them first).
    pending: RefCell<Pending>,
    spec_cache: RefCell<SpecCache>,
    /// Runs deleted by retention (a setting, as in the embedded store): the count of
    /// stored runs is the last sequence number less these.
    pruned: u64,
    /// The highest run sequence number stored or pending (it only grows).
    last_seq: u64,
    /// Batches handed to the committer whose outcome the loop has not been told yet,
    /// oldest first: their runs are laid over what the database answers, so that the
    /// loop's reads of runs need not wait behind the commits in flight.
    in_flight: std::collections::VecDeque<Arc<Pending>>,
    /// A second connection, for listings read away from the loop, opened off the loop.
    reader: Arc<Mutex<ReaderSlot>>,
    /// A third, for the loop's reads of runs (a run by id, ids by prefix, the oldest for
    /// retention): not behind the commits in flight, nor behind a long listing.
    lookups: Arc<Mutex<ReaderSlot>>,
    /// The leader's epoch every commit is fenced with (several brokers), if any.
    fence: Option<u64>,
    /// The unfinished runs, and where a start's read of the newest begins (`unfinished`).
    unfinished: RefCell<Unfinished>,
}

/// A connection besides the commits': there, or being opened on a thread of its own
/// (connecting takes round trips and, with TLS, a handshake: never on the loop).
#[derive(Default)]
struct ReaderSlot {
    connection: Option<Arc<Connection>>,
    opening: bool,
}

/// Starts opening the connection of `slot`, unless it is open or being opened; `what`
/// it is for, for the log.
fn open_in_background(slot: &Arc<Mutex<ReaderSlot>>, settings: &PgSettings, what: &'static str) {
    let Ok(mut held) = slot.lock() else {
        return;
    };
    if held.connection.is_some() || held.opening {
        return;
    }
    held.opening = true;
    let (settings, slot) = (settings.clone(), slot.clone());
    let spawned = std::thread::Builder::new()
        .name("jobcast-pg-connect".into())
        .spawn(move || {
            let opened = Connection::open(&settings);
            let Ok(mut held) = slot.lock() else { return };
            held.opening = false;
            match opened {
                Ok(connection) => held.connection = Some(Arc::new(connection)),
                Err(e) => tracing::warn!(error = %e, what, "a connection to the database is not open yet: its reads are made on the commit connection"),
            }
        });
    if let Err(e) = spawned {
        held.opening = false;
        tracing::warn!(error = %e, what, "cannot start a thread to open a connection");
    }
}

/// The SQLSTATE `jobcast_fence` raises (migration 0002).
const FENCED: &str = "JC001";
/// The settings key of the pruned-runs count (the embedded store's).
const PRUNED: &str = "pruned_runs";
/// The unfinished runs, by the two reads of `unfinished` (`$1`: where the read of the
/// newest begins).
const UNFINISHED_SEQS: &str =
    "SELECT seq, marked FROM jobcast_runs WHERE NOT finished AND (marked OR seq >= $1) ORDER BY seq";
const UNFINISHED_RUNS: &str =
    "SELECT record FROM jobcast_runs WHERE NOT finished AND (marked OR seq >= $1) ORDER BY seq";
/// Runs read per query when a listing walks back through history.
const LISTING_PAGE: i64 = 500;

impl PgStore {
    /// Starts opening the second connection, unless it is open or being opened.
    fn open_reader_in_background(&self) {
        open_in_background(&self.reader, &self.settings, "listings");
    }

    /// The connection for the loop's reads of runs, once open (until then they go to
    /// the commit connection, behind the commits in flight, as before).
    fn lookup_connection(&self) -> Option<Arc<Connection>> {
        let connection = self.lookups.lock().ok()?.connection.clone();
        if connection.is_none() {
            open_in_background(&self.lookups, &self.settings, "the loop's reads of runs");
        }
        connection
    }

    /// Waits (up to `within`) for the second connection, for tests.
    #[cfg(test)]
    pub fn reader_within(&self, within: std::time::Duration) -> Option<Box<dyn RunReader>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(reader) = self.reader() {
                return Some(reader);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Waits (up to `within`) for the connection of the loop's reads of runs, for tests.
    #[cfg(test)]
    pub fn lookups_within(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.lookup_connection().is_none() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// Connects, brings the schema up to date, and reads what the store keeps in memory.
    pub fn open(settings: &PgSettings) -> StoreResult<PgStore> {
        let store = Self::open_with(settings, None)?;
        store.open_reader_in_background();
        Ok(store)
    }

    /// As [`PgStore::open`], for the holder of the leader's lease at `epoch`: every
    /// commit first checks, in its transaction, that `epoch` still holds an unexpired
    /// lease, and fails with [`StoreError::Fenced`] (nothing written) otherwise.
    pub fn open_fenced(settings: &PgSettings, epoch: u64) -> StoreResult<PgStore> {
        let store = Self::open_with(settings, Some(epoch))?;
        store.open_reader_in_background();
        Ok(store)
    }

    /// As [`PgStore::open`], for reading only (a standby's view of the database): the
    /// database refuses any write made through it.
    pub fn open_read_only(settings: &PgSettings) -> StoreResult<PgStore> {
        let store = Self::open_with(settings, None)?;
        store.connection.call(|session| {
            Box::pin(async move {
                session
                    .client
                    .batch_execute("SET default_transaction_read_only = on")
                    .await
            })
        })?;
        Ok(store)
    }

    fn open_with(settings: &PgSettings, fence: Option<u64>) -> StoreResult<PgStore> {
        let connection = Connection::open(settings)?;
        if fence.is_some() {
            // A leader stopped (SIGSTOP) halfway through sending a commit would hold the
            // lease row and stall a takeover; the server ends such a transaction itself.
            connection.call(|session| {
                Box::pin(async move {
                    session
                        .client
                        .batch_execute("SET idle_in_transaction_session_timeout = '2s'")
                        .await
                })
            })?;
        }
        let applied = schema::migrate(&connection)?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, store = %settings.describe(), "schema migrated");
        }
        let mut store = PgStore {
            connection,
            settings: settings.clone(),
            pending: Default::default(),
            spec_cache: Default::default(),
            pruned: 0,
            last_seq: 0,
            in_flight: Default::default(),
            reader: Default::default(),
            lookups: Default::default(),
            fence,
            unfinished: Default::default(),
        };
        // The last run's number, and where the read of the newest runs begins (0 if its
        // row were missing: it is there once migrated; a read of every run finds all).
        let (last_seq, scan_from) = store
            .rows(
                "SELECT (SELECT coalesce(max(seq), 0) FROM jobcast_runs),
                        coalesce((SELECT scan_from FROM jobcast_runs_scan WHERE id = 1), 0)",
                Vec::new(),
                |row| (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64),
            )?
            .pop()
            .unwrap_or((0, 0));
        store.last_seq = last_seq;
        let unfinished = store.rows(UNFINISHED_SEQS, vec![Box::new(scan_from as i64)], |row| {
            (row.get::<_, i64>(0) as u64, row.get::<_, bool>(1))
        })?;
        store.unfinished = RefCell::new(Unfinished::new(scan_from, unfinished));
        store.pruned = setting_u64(store.setting(PRUNED)?, "pruned-runs count")?.unwrap_or(0);
        Ok(store)
    }

    /// From now on, a call waits at most `limit` for PostgreSQL's answer, on this and on
    /// the connections opened later; past it, the store fails (the connection is given
    /// up). A leader's: a database that stops answering must not keep the loop from
    /// seeing its lease end.
    pub fn limit_answers(&mut self, limit: std::time::Duration) {
        self.settings = self.settings.answering_within(limit);
        self.connection.limit_answers(limit);
        // The loop's lookups too: a connection opened before is let go, and the next
        // is opened with the limit.
        self.lookups = Default::default();
    }

    /// Host, port, database and user (never the password).
    pub fn describe(&self) -> String {
        self.settings.describe()
    }

    fn decode_run(&self, bytes: &[u8]) -> StoreResult<RunRecord> {
        run_codec::decode_run(bytes, |key| self.spec(key))
    }

    /// Runs read with the lookup connection (when open: else the commit connection),
    /// decoded; job versions they need are read there too (a committed run's version is
    /// committed).
    fn look_up_runs(&self, sql: &'static str, params: Vec<Param>) -> StoreResult<Vec<RunRecord>> {
        let Some(connection) = self.lookup_connection() else {
            return self.query_runs(sql, params);
        };
        let rows = connection.rows(sql, params, |row| row.get::<_, Vec<u8>>(0))?;
        rows.iter()
            .map(|bytes| run_codec::decode_run(bytes, |key| self.spec_read_on(&connection, key)))
            .collect()
    }

    /// Ids read with the lookup connection (when open: else the commit connection).
    fn look_up_ids(&self, sql: &'static str, params: Vec<Param>) -> StoreResult<Vec<String>> {
        match self.lookup_connection() {
            Some(connection) => connection.rows(sql, params, |row| row.get(0)),
            None => self.rows(sql, params, |row| row.get(0)),
        }
    }

    /// The writes not yet told committed, oldest first, then those of the batch being
    /// applied; `with` sees them all.
    fn with_unsettled<R>(&self, with: impl FnOnce(&[&Pending]) -> R) -> R {
        let pending = self.pending.borrow();
        let layers: Vec<&Pending> = self
            .in_flight
            .iter()
            .map(|batch| batch.as_ref())
            .chain(std::iter::once(&*pending))
            .collect();
        with(&layers)
    }

    /// A job spec version, from the cache, the pending writes or the database.
    fn spec(&self, key: &SpecKey) -> StoreResult<std::sync::Arc<JobSpec>> {
        self.spec_read_on(&self.connection, key)
    }

    /// As [`PgStore::spec`], read on `connection` when neither the cache nor the pending
    /// writes have it.
    fn spec_read_on(
        &self,
        connection: &Connection,
        key: &SpecKey,
    ) -> StoreResult<std::sync::Arc<JobSpec>> {
        self.spec_cache.borrow_mut().get_or_read(key, || {
            if let Some(bytes) = self.pending.borrow().spec(key) {
                return Ok(Some(bytes.to_vec()));
            }
            read_spec(connection, key)
        })
    }

    /// The rows of one query (prepared once per connection), each read by `read`.
    fn rows<R: Send + 'static>(
        &self,
        sql: &'static str,
        params: Vec<Param>,
        read: fn(&tokio_postgres::Row) -> R,
    ) -> StoreResult<Vec<R>> {
        self.connection.rows(sql, params, read)
    }

    /// Records of a query that returns `record` alone, decoded.
    fn query_runs(&self, sql: &'static str, params: Vec<Param>) -> StoreResult<Vec<RunRecord>> {
        let rows = self.rows(sql, params, |row| row.get::<_, Vec<u8>>(0))?;
        rows.iter().map(|bytes| self.decode_run(bytes)).collect()
    }

    /// One of the small tables, with its pending writes over it, values decoded.
    fn keyed<T: DeserializeOwned>(
        &self,
        sql: &'static str,
        pending: fn(&Pending) -> &std::collections::BTreeMap<String, Vec<u8>>,
        what: &'static str,
    ) -> StoreResult<Vec<(String, T)>> {
        let stored = self.keyed_values(sql)?;
        Pending::over(stored, pending(&self.pending.borrow()))
            .into_iter()
            .map(|(key, bytes)| Ok((key, decode(what, &bytes)?)))
            .collect()
    }

    /// Rows of (key, value) of one of the small tables.
    fn keyed_values(&self, sql: &'static str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.rows(sql, Vec::new(), |row| (row.get(0), row.get(1)))
    }
}

/// One parameter of a query, owned (the query runs on the connection's thread).
pub type Param = Box<dyn ToSql + Sync + Send>;

/// A listing: runs newest first (oldest first from `after_seq`), read a page at a time as
/// the listing walks, until it has enough or has looked at as many as a listing may.
fn newest_first(
    connection: &Connection,
    filter: &RunFilter,
    mut decode: impl FnMut(&[u8]) -> StoreResult<RunRecord>,
) -> StoreResult<Listing> {
    let before = filter.before_seq.map_or(i64::MAX, |seq| seq as i64);
    // Newest first from `before` down, or oldest first from `after_seq` up: `edge` is the
    // last sequence number read, where the next page starts.
    let oldest_first = filter.after_seq.is_some();
    let mut edge = match filter.after_seq {
        Some(after) => after.min(i64::MAX as u64) as i64,
        None => before,
    };
    let mut page: std::vec::IntoIter<Vec<u8>> = Vec::new().into_iter();
    let mut done = false;
    let records = std::iter::from_fn(move || loop {
        if let Some(bytes) = page.next() {
            return Some(Ok(bytes));
        }
        if done {
            return None;
        }
        let rows = match oldest_first {
            true => connection.rows(
                "SELECT seq, record FROM jobcast_runs WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3",
                vec![Box::new(edge), Box::new(before), Box::new(LISTING_PAGE)],
                |row| (row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)),
            ),
            false => connection.rows(
                "SELECT seq, record FROM jobcast_runs WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                vec![Box::new(edge), Box::new(LISTING_PAGE)],
                |row| (row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)),
            ),
        };
        match rows {
            Ok(rows) => {
                done = (rows.len() as i64) < LISTING_PAGE;
                if let Some((seq, _)) = rows.last() {
                    edge = *seq;
                }
                page = rows
                    .into_iter()
                    .map(|(_, bytes)| bytes)
                    .collect::<Vec<_>>()
                    .into_iter();
            }
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
    });
    list_newest_first(records.map(|bytes| decode(&bytes?)), filter)
}

/// The stored bytes of a job spec version.
fn read_spec(connection: &Connection, key: &SpecKey) -> StoreResult<Option<Vec<u8>>> {
    Ok(connection
        .rows(
            "SELECT spec FROM jobcast_job_specs WHERE key = $1",
            vec![Box::new(key.to_vec())],
            |row| row.get::<_, Vec<u8>>(0),
        )?
        .pop())
}

/// A run's stored log chunks, in stream order.
fn read_log_chunks(connection: &Connection, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
    connection.rows(
        "SELECT \"offset\", data FROM jobcast_log_chunks WHERE run_id = $1 ORDER BY \"offset\"",
        vec![Box::new(run_id.to_string())],
        |row| (row.get::<_, i64>(0) as u64, row.get(1)),
    )
}

/// Listings and logs on a connection of their own, away from the loop. They see what is
/// committed, which includes the batch that asked (it is durable before it is read).
struct PgReader {
    connection: Arc<Connection>,
    specs: SpecCache,
}

impl RunReader for PgReader {
    fn back_up(&mut self, _to: &std::path::Path) -> StoreResult<jobcast_core::store::Copied> {
        Err(StoreError::Unsupported(
            "the store is in PostgreSQL: back it up with PostgreSQL's own tools (pg_dump, or continuous archiving); `jobcast-broker migrate --to DIR` copies it into an embedded store while the brokers are stopped",
        ))
    }

    fn runs(&mut self, filter: &RunFilter) -> StoreResult<Listing> {
        let (connection, specs) = (&self.connection, &mut self.specs);
        newest_first(connection, filter, |bytes| {
            run_codec::decode_run(bytes, |key| {
                specs.get_or_read(key, || read_spec(connection, key))
            })
        })
    }

    fn log_chunks(&mut self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        read_log_chunks(&self.connection, run_id)
    }

    fn run(&mut self, id: &str) -> StoreResult<Option<RunRecord>> {
        let (connection, specs) = (&self.connection, &mut self.specs);
        let rows = connection.rows(
            "SELECT record FROM jobcast_runs WHERE id = $1",
            vec![Box::new(id.to_string())],
            |row| row.get::<_, Vec<u8>>(0),
        )?;
        rows.first()
            .map(|bytes| {
                run_codec::decode_run(bytes, |key| {
                    specs.get_or_read(key, || read_spec(connection, key))
                })
            })
            .transpose()
    }

    fn oldest_runs(&mut self, from_seq: u64, limit: usize) -> StoreResult<Vec<OldestRun>> {
        let (connection, specs) = (&self.connection, &mut self.specs);
        let rows = connection.rows(
            "SELECT record FROM jobcast_runs WHERE seq >= $1 ORDER BY seq LIMIT $2",
            vec![Box::new(from_seq as i64), Box::new(limit as i64)],
            |row| row.get::<_, Vec<u8>>(0),
        )?;
        rows.iter()
            .map(|bytes| {
                let run = run_codec::decode_run(bytes, |key| {
                    specs.get_or_read(key, || read_spec(connection, key))
                })?;
                // A run's log goes with it by its id: no chunk needs naming.
                Ok(OldestRun {
                    run,
                    log_offsets: Vec::new(),
                })
            })
            .collect()
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> StoreResult<T> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// `prefix` as a LIKE pattern that matches what starts with it.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Store for PgStore {
    fn jobs(&self) -> StoreResult<Vec<JobSpec>> {
        self.keyed(
            "SELECT name, spec FROM jobcast_jobs ORDER BY name",
            |p| &p.jobs,
            "job",
        )
        .map(|rows| rows.into_iter().map(|(_, job)| job).collect())
    }

    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()> {
        self.pending
            .get_mut()
            .jobs
            .insert(job.name.clone(), encode(job));
        Ok(())
    }

    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.write_run(run, true)
    }

    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.write_run(run, false)
    }

    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        let unsettled = self.with_unsettled(|layers| {
            layers.iter().rev().find_map(|layer| {
                layer.run(id).map(|pending| match pending {
                    PendingRun::Put { run, .. } => Some(run.as_ref().clone()),
                    PendingRun::Deleted => None,
                })
            })
        });
        if let Some(found) = unsettled {
            return Ok(found);
        }
        Ok(self
            .look_up_runs(
                "SELECT record FROM jobcast_runs WHERE id = $1",
                vec![Box::new(id.to_string())],
            )?
            .pop())
    }

    /// Taken only if a write not yet committed has it. A new id is 64 random bits, so a stored run
    /// with the same one is next to impossible, and the unique index on `id` refuses it
    /// should it happen: the commit fails, nothing of its batch is acknowledged, and the
    /// request is asked again (a new id). Not asking the database saves a round trip on
    /// every run created.
    fn run_id_taken(&self, id: &str) -> StoreResult<bool> {
        Ok(self.with_unsettled(|layers| layers.iter().any(|layer| layer.run(id).is_some())))
    }

    fn active_runs(&self) -> StoreResult<Vec<RunRecord>> {
        self.committed()?;
        let scan_from = self.unfinished.borrow().scan_from() as i64;
        self.query_runs(UNFINISHED_RUNS, vec![Box::new(scan_from)])
    }

    fn runs(&self, filter: &RunFilter) -> StoreResult<Listing> {
        self.committed()?;
        newest_first(&self.connection, filter, |bytes| self.decode_run(bytes))
    }

    fn walks_away(&self) -> bool {
        // Until the reader's connection is there, retention reads on the loop.
        self.reader
            .lock()
            .is_ok_and(|reader| reader.connection.is_some())
    }

    fn reader(&self) -> Option<Box<dyn RunReader>> {
        let connection = self.reader.lock().ok()?.connection.clone();
        match connection {
            Some(connection) => Some(Box::new(PgReader {
                connection,
                specs: SpecCache::default(),
            })),
            None => {
                // Until it is there, listings are read on the loop, as before.
                self.open_reader_in_background();
                None
            }
        }
    }

    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        // The writes not yet committed laid over what is stored, rather than committing
        // them or waiting for them (a selector of `kill` or `logs` costs the loop a read).
        let asked =
            limit + self.with_unsettled(|layers| Pending::deleted_with_prefix_all(layers, prefix));
        let stored = self.look_up_ids(
            "SELECT id FROM jobcast_runs WHERE id LIKE $1 ORDER BY id COLLATE \"C\" LIMIT $2",
            vec![Box::new(like_prefix(prefix)), Box::new(asked as i64)],
        )?;
        Ok(self
            .with_unsettled(|layers| pending::ids_over_all(layers, stored, prefix, asked, limit)))
    }

    fn last_run_seq(&self) -> StoreResult<u64> {
        Ok(self.last_seq)
    }

    fn run_count(&self) -> StoreResult<u64> {
        // Runs are numbered from 1, and only retention deletes them (never the newest).
        Ok(self.last_seq.saturating_sub(self.pruned))
    }

    fn oldest_runs(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<RunRecord>> {
        // Read with the writes not yet committed laid over what is stored, rather than
        // committing them or waiting for them: retention's walk costs the loop a read.
        let asked =
            limit + self.with_unsettled(|layers| Pending::deleted_from_all(layers, from_seq));
        let stored = self.look_up_runs(
            "SELECT record FROM jobcast_runs WHERE seq >= $1 ORDER BY seq LIMIT $2",
            vec![Box::new(from_seq as i64), Box::new(asked as i64)],
        )?;
        Ok(self.with_unsettled(|layers| {
            pending::oldest_over_all(layers, stored, from_seq, asked, limit)
        }))
    }

    fn delete_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        // The run was read from the store (retention's `oldest_runs`, which sees the
        // pending writes), so only a deletion pending since can have taken it: no round
        // trip per deleted run. Deleting it again in the database changes nothing.
        if matches!(
            self.pending.get_mut().run(&run.id),
            Some(PendingRun::Deleted)
        ) {
            return Ok(());
        }
        self.unfinished.get_mut().deleted(run.seq);
        let pending = self.pending.get_mut();
        pending.delete_run(run);
        self.pruned += 1;
        pending
            .settings
            .insert(PRUNED.into(), self.pruned.to_be_bytes().to_vec());
        Ok(())
    }

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.pending
            .get_mut()
            .put_log_chunk(run_id, offset, Some(data.to_vec()));
        Ok(())
    }

    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()> {
        self.pending.get_mut().put_log_chunk(run_id, offset, None);
        Ok(())
    }

    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let dropped = self.pending.borrow().logs_dropped.contains(run_id);
        let stored = if dropped {
            Vec::new()
        } else {
            read_log_chunks(&self.connection, run_id)?
        };
        Ok(self.pending.borrow().log_chunks_over(run_id, stored))
    }

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>> {
        self.keyed(
            "SELECT id, status FROM jobcast_workers ORDER BY id",
            |p| &p.workers,
            "worker",
        )
        .map(|rows| rows.into_iter().map(|(_, worker)| worker).collect())
    }

    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()> {
        self.pending
            .get_mut()
            .workers
            .insert(worker.id.clone(), encode(worker));
        Ok(())
    }

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>> {
        self.keyed(
            "SELECT job, state FROM jobcast_job_states ORDER BY job",
            |p| &p.job_states,
            "job state",
        )
    }

    fn put_job_state(&mut self, job: &str, state: &JobState) -> StoreResult<()> {
        self.pending
            .get_mut()
            .job_states
            .insert(job.to_string(), encode(state));
        Ok(())
    }

    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        if let Some(value) = self.pending.borrow().settings.get(key) {
            return Ok(Some(value.clone()));
        }
        Ok(self
            .rows(
                "SELECT value FROM jobcast_settings WHERE key = $1",
                vec![Box::new(key.to_string())],
                |row| row.get::<_, Vec<u8>>(0),
            )?
            .pop())
    }

    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.pending
            .get_mut()
            .settings
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn settings(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let stored = self.keyed_values("SELECT key, value FROM jobcast_settings ORDER BY key")?;
        Ok(Pending::over(stored, &self.pending.borrow().settings))
    }

    fn flush(&mut self) -> StoreResult<()> {
        self.committed()
    }

    fn start_flush(&mut self, done: FlushDone) {
        self.advance_scan();
        let writes = Arc::new(self.pending.take());
        // Read over until the loop is told this commit's outcome.
        self.in_flight.push_back(writes.clone());
        let fence = self.fence;
        self.connection.submit(
            move |session| Box::pin(async move { commit(&writes, fence, session).await }),
            done,
        );
    }

    fn commit_told(&mut self) {
        self.in_flight.pop_front();
    }
}

/// Commits `writes` on `session`, unless an earlier commit failed there (a later batch
/// may build on it: nothing after a failed commit may be acknowledged).
async fn commit(writes: &Pending, fence: Option<u64>, session: &mut Session) -> StoreResult<()> {
    if let Some(why) = &session.commit_failed {
        return Err(StoreError::Engine(
            format!("not committed: an earlier commit failed ({why})").into(),
        ));
    }
    if writes.is_empty() {
        return Ok(());
    }
    let outcome = writes
        .commit(fence, session)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) if db.code().code() == FENCED => StoreError::Fenced(db.message().to_string()),
            _ => database_error(&e),
        });
    if let Err(e) = &outcome {
        session.commit_failed = Some(e.to_string());
    }
    outcome
}

impl PgStore {
    /// A run's write, `created` if it is new (`Store::create_run`).
    fn write_run(&mut self, run: &RunRecord, created: bool) -> StoreResult<()> {
        let (key, new_version) = self.spec_cache.get_mut().key_of(&run.spec);
        if let Some(bytes) = new_version {
            self.pending.get_mut().specs.push((key, bytes));
        }
        self.last_seq = self.last_seq.max(run.seq);
        let marked = self
            .unfinished
            .get_mut()
            .written(run.seq, run.state.is_terminal());
        self.pending.get_mut().put_run(run, key, marked, created);
        Ok(())
    }

    /// Moves where a start's read of the newest runs begins, in the writes about to be
    /// committed, marking the unfinished runs it passes in the same commit.
    fn advance_scan(&self) {
        let Some((scan_from, marks)) = self.unfinished.borrow_mut().advance(self.last_seq) else {
            return;
        };
        let mut pending = self.pending.borrow_mut();
        for seq in marks {
            pending.mark(seq);
        }
        pending.scan_from = Some(scan_from);
    }

    /// Commits the pending writes (one transaction, one round trip), so that a read over
    /// a range sees them. Taken out first: if the commit fails, the broker's outage
    /// rebuilds everything from the database, and nothing of this batch was acknowledged.
    fn committed(&self) -> StoreResult<()> {
        self.advance_scan();
        let writes = self.pending.take();
        if writes.is_empty() {
            // A read queued now comes after every commit queued before it anyway.
            return Ok(());
        }
        let fence = self.fence;
        self.connection
            .wait(move |session| Box::pin(async move { commit(&writes, fence, session).await }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::{Exec, RunState};
    use std::time::Duration;

    /// A database of its own on a PostgreSQL started for the test, and the settings that
    /// reach it (the server and the password file last as long as the two guards); `None`
    /// where this host has no PostgreSQL.
    fn database(
        name: &str,
    ) -> Option<(
        jobcast_test_postgres::TestPostgres,
        tempfile::NamedTempFile,
        PgSettings,
    )> {
        let pg = jobcast_test_postgres::TestPostgres::start()?;
        let password = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(password.path(), jobcast_test_postgres::PASSWORD).unwrap();
        let url = pg.create_database(name);
        let settings = PgSettings::new(&url, Some(password.path()), None).unwrap();
        Some((pg, password, settings))
    }

    /// A commit held by a lock another session keeps on a row it rewrites: the loop's
    /// reads of runs answer meanwhile, with what that commit carries laid over what is
    /// stored, and read what is stored once the loop is told it committed.
    #[test]
    fn the_loops_reads_of_runs_do_not_wait_for_commits_in_flight() {
        let Some((_pg, _password, settings)) = database("in_flight") else {
            return;
        };
        let mut store = PgStore::open(&settings).unwrap();
        let job = JobSpec::new("job", "default", Exec::Command(vec!["true".into()]));
        store.put_job(&job).unwrap();
        let mut first = RunRecord::queued("run-a".into(), 1, job.clone(), 1, "q");
        store.create_run(&first).unwrap();
        store.flush().unwrap();
        assert!(store.lookups_within(Duration::from_secs(10)));

        let blocker = Connection::open(&settings).unwrap();
        blocker
            .execute("BEGIN; SELECT 1 FROM jobcast_runs WHERE id = 'run-a' FOR UPDATE")
            .unwrap();
        first.transition(RunState::Assigned, 2, "granted").unwrap();
        store.put_run(&first).unwrap();
        store
            .create_run(&RunRecord::queued("run-b".into(), 2, job, 2, "q"))
            .unwrap();
        let (told, outcome) = std::sync::mpsc::channel();
        store.start_flush(Box::new(move |result| {
            let _ = told.send(result);
        }));
        assert!(
            outcome.recv_timeout(Duration::from_millis(300)).is_err(),
            "the commit waits for the lock"
        );

        // On a thread of their own, so that reads that waited for the commit would fail
        // the test rather than hang it.
        let (answered, answers) = std::sync::mpsc::channel();
        let reads = std::thread::spawn(move || {
            let read = (
                store.run("run-a").unwrap().map(|run| run.state),
                store.run("run-b").unwrap().is_some(),
                store.run_ids_with_prefix("run-", 10).unwrap(),
                store
                    .oldest_runs(0, 10)
                    .unwrap()
                    .into_iter()
                    .map(|run| (run.id, run.state))
                    .collect::<Vec<_>>(),
            );
            let _ = answered.send(read);
            store
        });
        let read = answers.recv_timeout(Duration::from_secs(10));
        blocker.execute("ROLLBACK").unwrap();
        let (run_a, run_b, ids, oldest) = read.expect("the reads answered while the commit waited");
        assert_eq!(run_a, Some(RunState::Assigned));
        assert!(run_b);
        assert_eq!(ids, ["run-a", "run-b"]);
        assert_eq!(
            oldest,
            [
                ("run-a".to_string(), RunState::Assigned),
                ("run-b".to_string(), RunState::Queued)
            ]
        );

        let mut store = reads.join().unwrap();
        outcome
            .recv_timeout(Duration::from_secs(10))
            .expect("the commit ends once the lock is gone")
            .unwrap();
        store.commit_told();
        assert!(store.in_flight.is_empty());
        let stored = store.run("run-a").unwrap().map(|run| run.state);
        assert_eq!(
            stored,
            Some(RunState::Assigned),
            "read from the database now"
        );
    }

    /// A start finds every unfinished run, however old, with the two reads of
    /// `unfinished`; only runs still unfinished once the newest have moved past them are
    /// marked (so a run that ends soon is never rewritten out of place for it); and a
    /// database at schema 3, with its index of unfinished runs, migrates to them.
    #[test]
    fn a_start_finds_every_unfinished_run_however_old_and_marks_only_old_ones() {
        let Some((_pg, _password, settings)) = database("unfinished") else {
            return;
        };
        let admin = Connection::open(&settings).unwrap();
        let marked = || -> Vec<u64> {
            admin
                .rows(
                    "SELECT seq FROM jobcast_runs WHERE marked ORDER BY seq",
                    Vec::new(),
                    |row| row.get::<_, i64>(0) as u64,
                )
                .unwrap()
        };
        let active = |store: &PgStore| -> Vec<u64> {
            store
                .active_runs()
                .unwrap()
                .iter()
                .map(|run| run.seq)
                .collect()
        };

        let mut store = PgStore::open(&settings).unwrap();
        let job = JobSpec::new("job", "default", Exec::Command(vec!["true".into()]));
        store.put_job(&job).unwrap();
        let total = crate::store::unfinished::NEWEST + 300;
        let run = |seq: u64| RunRecord::queued(format!("run-{seq:05}"), seq, job.clone(), 1, "q");
        let ended = |seq: u64| {
            let mut run = run(seq);
            run.state = RunState::Succeeded;
            run
        };
        let open = [1, 2, total - 5];
        for seq in 1..=total {
            store.create_run(&run(seq)).unwrap();
            if !open.contains(&seq) {
                store.put_run(&ended(seq)).unwrap();
            }
            if seq % 100 == 0 {
                store.flush().unwrap();
            }
        }
        store.flush().unwrap();
        assert_eq!(marked(), [1, 2], "only the old unfinished runs are marked");
        drop(store);

        let mut store = PgStore::open(&settings).unwrap();
        assert_eq!(active(&store), open);
        // A marked run that ends is no longer marked.
        store.put_run(&ended(1)).unwrap();
        store.flush().unwrap();
        assert_eq!(marked(), [2]);
        assert_eq!(active(&store), [2, total - 5]);
        drop(store);

        // Back to schema 3: no marks, the index of unfinished runs.
        admin
            .execute(
                "ALTER TABLE jobcast_runs DROP COLUMN marked;
                 DROP TABLE jobcast_runs_scan;
                 DELETE FROM jobcast_schema WHERE version = 4;
                 CREATE INDEX jobcast_runs_unfinished ON jobcast_runs (seq) WHERE NOT finished",
            )
            .unwrap();
        let store = PgStore::open(&settings).unwrap();
        assert_eq!(active(&store), [2, total - 5]);
        assert_eq!(
            marked(),
            [2, total - 5],
            "migrated: every unfinished run is marked"
        );
        assert_eq!(store.unfinished.borrow().scan_from(), total + 1);
    }

    /// A run created is inserted as such (no look for the row first): created, rewritten
    /// in the same batch and again in the next, it lands as last written; and creating
    /// one whose number is stored already fails the commit rather than overwriting it.
    #[test]
    fn a_created_run_is_inserted_and_never_overwrites_a_stored_one() {
        let Some((_pg, _password, settings)) = database("created") else {
            return;
        };
        let mut store = PgStore::open(&settings).unwrap();
        let job = JobSpec::new("job", "default", Exec::Command(vec!["true".into()]));
        store.put_job(&job).unwrap();
        let mut run = RunRecord::queued("run-a".into(), 1, job.clone(), 1, "q");
        store.create_run(&run).unwrap();
        run.state = RunState::Assigned;
        store.put_run(&run).unwrap();
        store.flush().unwrap();
        run.state = RunState::Succeeded;
        store.put_run(&run).unwrap();
        store.flush().unwrap();
        drop(store);

        let mut store = PgStore::open(&settings).unwrap();
        let stored = store.run("run-a").unwrap().map(|run| run.state);
        assert_eq!(stored, Some(RunState::Succeeded));
        let again = RunRecord::queued("run-b".into(), 1, job.clone(), 1, "q");
        store.create_run(&again).unwrap();
        let error = store.flush().unwrap_err().to_string();
        assert!(error.contains("duplicate key"), "{error}");
        drop(store);
        let store = PgStore::open(&settings).unwrap();
        assert_eq!(
            store.run("run-a").unwrap().map(|run| run.state),
            Some(RunState::Succeeded)
        );
        assert_eq!(store.run("run-b").unwrap(), None);
    }
}
