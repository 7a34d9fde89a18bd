//! The broker's pure core: authenticated requests in; replies, events and store writes out.
//!
//! No sockets and no clock: the server passes the current time in microseconds and sends
//! what the [`Outbox`] holds after the store has been flushed. Everything happens on one
//! thread, one request at a time, which is what makes a grant atomic: a run moved to
//! `assigned` by one `Claim` is gone from the queue for the next.

pub mod schedule;
pub mod store;

mod admin;
mod after_end;
mod alert_log;
mod alerts;
mod audit;
mod clock_step;
mod definitions;
mod disk;
mod error;
pub mod fast_hash;
mod given_up;
mod job_table;
mod limits;
mod liveness;
mod log_table;
mod log_waiters;
mod now;
mod outbox;
mod ping_table;
mod retention;
mod ring;
mod run_table;
mod runs;
mod scheduling;
mod scope;
mod selector;
mod series;
mod totals;
mod unwritten;
mod waiting_claims;
mod worker;
mod worker_table;

pub use admin::log_reply;
pub use after_end::Notification;
pub use disk::{DiskChange, LowDisk};
pub use error::{CoreError, Handled};
use job_table::JobTable;
use log_table::LogTable;
pub use now::Now;
pub use outbox::{
    BackupAsked, ListingAsked, LogAsked, Observation, OldestAsked, OutReply, Outbox, ReloadAsked,
    ReplyTo,
};
use ping_table::PingTable;
pub use retention::Retention;
use run_table::RunTable;
pub use scheduling::{format_ms, DECIDE_AHEAD_MS, MISFIRE_GRACE_MS};
pub use scope::Scope;
pub use totals::count_stored_runs;
use worker_table::{Session, WorkerTable};

use crate::store::{Store, StoreResult};
use jobcast_protocol::{
    AdminRequest, Alert, AlertKind, Reply, Request, RunRecord, RunState, WorkerStatus,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The ZeroMQ routing identity of the connection a request came in on.
pub type PeerId = Vec<u8>;

/// The sender name of `jobcastctl`.
pub const ADMIN: &str = "admin";

/// Largest number of runs one listing returns.
pub const MAX_LIST: u32 = 10_000;
/// Largest log slice one `GetLog` reply carries when following.
const MAX_LOG_SLICE: usize = 1 << 20;
/// Most candidates shown for an ambiguous run selector.
const MAX_CANDIDATES: usize = 20;

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub heartbeat_interval_ms: u64,
    pub worker_timeout_ms: u64,
    /// After a start, how long workers have to register again before their absence
    /// counts (no `no_worker` alert, jobs for every worker wait). The broker sets it to
    /// the worker timeout: a live worker has re-registered by then.
    pub restart_grace_ms: u64,
    /// How long finished runs are kept, and how many.
    pub retention: Retention,
    /// The pools each restricted worker key may register for; others may use any.
    pub worker_pools: HashMap<String, BTreeSet<String>>,
    /// How long a run granted to a worker that went silent, and never reported started,
    /// waits for that worker to come back and say whether it started it.
    pub unstarted_grant_hold_ms: u64,
    /// The most log stored per run, whatever a worker declares.
    pub max_log_bytes: u64,
    /// The most runs assigned or running at once, by pool (where set).
    pub pool_limits: BTreeMap<String, u32>,
    /// Seeds the core's random source (run ids, the boot id); `None` seeds it from the
    /// operating system. Tests fix it, so that every run of them names the same runs.
    pub seed: Option<u64>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            heartbeat_interval_ms: 1_000,
            worker_timeout_ms: 10_000,
            restart_grace_ms: 10_000,
            retention: Retention::default(),
            worker_pools: HashMap::new(),
            unstarted_grant_hold_ms: 600_000,
            max_log_bytes: 1 << 20,
            pool_limits: BTreeMap::new(),
            seed: None,
        }
    }
}

/// Connections seen by the sockets, for `status`.
#[derive(Debug, Default)]
struct ConnectionCounts {
    opened: u64,
    closed: u64,
}

/// The state the core's rules keep, each table with its own (a request handler is handed
/// the tables it uses).
#[derive(Default)]
pub(crate) struct Tables {
    /// Jobs, their schedules and scheduling state.
    pub jobs: JobTable,
    /// Runs not yet finished, and where the queued ones wait.
    pub runs: RunTable,
    /// Connected workers, every worker's status, claims held open.
    pub workers: WorkerTable,
    /// Live runs' logs, as far as pruning them to the cap needs.
    pub logs: LogTable,
    /// Pings waiting for their answers.
    pub pings: PingTable,
    /// Reads of runs' logs held until there is more to say (`GetLog` with a wait).
    pub log_waiters: log_waiters::LogWaiters,
    /// Standing conditions, keyed by kind and job or pool.
    pub alerts: BTreeMap<(AlertKind, String), Alert>,
    /// The ids grants name job definitions by.
    pub definitions: definitions::DefinitionIds,
    /// Runs of `runs` changed since they were handed to the store: handed over at the
    /// end of each request and tick.
    pub unwritten: unwritten::UnwrittenRuns,
}

pub struct Core<S: Store> {
    store: S,
    config: CoreConfig,
    /// The state the core's rules keep: jobs, runs, workers, live logs, pings, alerts.
    tables: Tables,
    /// Where new runs' sequence numbers and ids come from.
    ids: RunIds,
    /// This broker process: who it is, since when, and the state of its host.
    process: Process,
    /// What the sockets saw.
    seen: Seen,
    /// The stored runs as a whole: finished ones counted by state, and where pruning is.
    stored: StoredRuns,
    /// What operators changed.
    audit: audit::AuditLog,
    /// Alerts raised, acknowledged and cleared.
    alert_log: alert_log::AlertLog,
    /// Counts over time.
    series: series::SeriesTable,
    /// What changed since the last `take_changes`, for live views.
    changes: Changes,
}

/// The one source of run sequence numbers and of randomness (run ids, the boot id),
/// seeded once: tests fix the seed so that every run of them names the same runs.
struct RunIds {
    next_seq: u64,
    rng: StdRng,
    /// `next_seq` when the job table's version (its definitions, enabling, auto-disable)
    /// was last seen to move, and that version.
    jobs_changed_seq: u64,
    jobs_version_seen: u64,
    /// The newest run made other than as a tick decided ahead (by hand, a chain, a retry,
    /// a tick at its time). A tick decided ahead numbered after both was decided with
    /// nothing since that its judgement at its time looks at (`scheduling.rs`).
    other_run_seq: u64,
}

/// This broker process.
struct Process {
    boot_id: u64,
    booted_at_ms: u64,
    /// When worker liveness is next looked at (once per heartbeat interval).
    next_alive_ms: u64,
    /// Set while free space in the data directory is under the reserve.
    low_disk: Option<LowDisk>,
    /// Several brokers: the lease this one leads by, and when it was last renewed (ms
    /// since the epoch), as its keeper last saw them.
    leadership: Option<(jobcast_protocol::Leadership, u64)>,
    /// The cause every run of one tick time is given.
    tick_cause: scheduling::TickCause,
}

/// Frames refused by reason, and connections opened and closed, for `status`.
#[derive(Default)]
struct Seen {
    rejected: BTreeMap<String, u64>,
    connections: ConnectionCounts,
}

/// The stored runs as a whole.
struct StoredRuns {
    /// Finished runs stored, by state.
    finished: totals::FinishedCounts,
    /// Where retention's walk over the stored runs is.
    pruning: retention::Pruning,
    /// Runs given up as lost whose worker may still report them.
    given_up: given_up::GivenUpRuns,
}

/// What changed in a batch, for the dashboard's live feed.
#[derive(Debug)]
pub struct Changes {
    /// Whether changes are noted at all: only while a live view listens (the server says
    /// so before each batch, [`Core::track_changes`]). A view that connects while a batch
    /// goes untracked misses nothing: it subscribes first, then reads its snapshot through
    /// the loop, in a later batch.
    tracking: bool,
    pub runs: BTreeSet<String>,
    pub workers: bool,
    /// Every job (definitions applied, pools enabled or disabled).
    pub jobs: bool,
    /// Jobs whose state changed (a tick, a start, an end), when not every job did.
    pub job_names: BTreeSet<String>,
    /// Log output received: (run id, stream offset, bytes).
    pub logs: Vec<(String, u64, Vec<u8>)>,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            tracking: true,
            runs: BTreeSet::new(),
            workers: false,
            jobs: false,
            job_names: BTreeSet::new(),
            logs: Vec::new(),
        }
    }
}

impl Changes {
    /// None noted yet, tracking as `self` does.
    fn emptied(&self) -> Changes {
        Changes {
            tracking: self.tracking,
            ..Changes::default()
        }
    }

    /// Notes that run `id` changed (a run changes several times in a batch: created and
    /// granted, started and ended; its id is copied once).
    pub(crate) fn run(&mut self, id: &str) {
        if self.tracking && !self.runs.contains(id) {
            self.runs.insert(id.to_string());
        }
    }

    /// Notes that job `name`'s state changed.
    pub(crate) fn job(&mut self, name: &str) {
        if self.tracking && !self.jobs && !self.job_names.contains(name) {
            self.job_names.insert(name.to_string());
        }
    }

    /// Notes log output received for run `id`.
    pub(crate) fn log(&mut self, id: &str, offset: u64, data: &[u8]) {
        if self.tracking {
            self.logs.push((id.to_string(), offset, data.to_vec()));
        }
    }
}

/// The changes of a batch, resolved to what a live view shows.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub runs: Vec<RunRecord>,
    pub workers: Option<Vec<WorkerStatus>>,
    /// Every job, when all may have changed.
    pub jobs: Option<Vec<jobcast_protocol::JobView>>,
    /// Only the jobs that changed, otherwise.
    pub changed_jobs: Vec<jobcast_protocol::JobView>,
    /// Every stored run by state, when runs changed.
    pub runs_by_state: Option<BTreeMap<String, u64>>,
    pub logs: Vec<(String, u64, Vec<u8>)>,
}

fn ms(now_us: u64) -> u64 {
    now_us / 1_000
}

fn nothing_granted() -> Reply {
    Reply::Granted {
        runs: vec![],
        more_queued: false,
    }
}

impl<S: Store> Core<S> {
    /// Loads jobs and unfinished runs from `store`.
    pub fn new(store: S, config: CoreConfig, now_us: u64) -> StoreResult<Core<S>> {
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let jobs = JobTable::restored(store.jobs()?);
        let finished = totals::FinishedCounts::load(&store)?;
        let given_up = given_up::GivenUpRuns::load(&store, ms(now_us))?;
        // Read once for all that is kept as settings (on PostgreSQL, one round trip).
        let settings = store.settings()?;
        let audit = audit::AuditLog::load(&settings)?;
        let alert_log = alert_log::AlertLog::load(&settings)?;
        let series = series::SeriesTable::load(&settings)?;
        // The boot id is the random source's first draw; run ids come after.
        let boot_id = rng.next_u64();
        let next_seq = store.last_run_seq()? + 1;
        let mut core = Core {
            ids: RunIds {
                next_seq,
                rng,
                // Ticks held by an earlier process are judged in full.
                jobs_changed_seq: next_seq,
                jobs_version_seen: 0,
                other_run_seq: 0,
            },
            process: Process {
                boot_id,
                booted_at_ms: ms(now_us),
                next_alive_ms: 0,
                low_disk: None,
                leadership: None,
                tick_cause: Default::default(),
            },
            tables: Tables {
                workers: WorkerTable::restored(store.workers()?),
                jobs,
                ..Default::default()
            },
            store,
            config,
            seen: Seen::default(),
            stored: StoredRuns {
                finished,
                pruning: Default::default(),
                given_up,
            },
            changes: Changes::default(),
            audit,
            alert_log,
            series,
        };
        for run in core.store.active_runs()? {
            if run.state == RunState::Queued {
                if scheduling::is_held_tick(run.attempt, run.not_before_ms) {
                    // A tick decided ahead by an earlier process and not released before
                    // it stopped: judged at its time, or at once if that has passed (a
                    // tick missed while the broker was down follows the misfire policy).
                    core.tables.runs.hold_unreleased_tick(&run);
                } else {
                    core.tables.runs.enqueue(&run, ms(now_us));
                }
            }
            if run.state == RunState::Running {
                // What it printed before this broker started, read now rather than on
                // the loop when its next chunk comes.
                let stored = core.store.log_chunks(&run.id)?;
                let stored = stored.iter().map(|(o, bytes)| (*o, bytes.len() as u64));
                core.tables
                    .logs
                    .track(&run.id, run.log_cap as usize, stored);
            }
            core.tables.runs.activate(run);
        }
        core.load_scheduling(Now::from_us(now_us))?;
        Ok(core)
    }

    /// Job views with their latest runs' ends (kept with the counts over time).
    pub(crate) fn with_recent(
        &self,
        mut views: Vec<jobcast_protocol::JobView>,
    ) -> Vec<jobcast_protocol::JobView> {
        for view in &mut views {
            view.state.recent_runs = self.series.recent(&view.spec.name);
        }
        views
    }

    /// Writes what the core keeps only now and then (the time series), before a clean
    /// stop's last flush.
    pub fn save_before_stop(&mut self, now_us: u64) -> StoreResult<()> {
        self.series.save(&mut self.store, ms(now_us), true)
    }

    pub fn boot_id(&self) -> u64 {
        self.process.boot_id
    }

    /// Several brokers: the lease this broker leads by, for `status` (the shell reads
    /// it from the database; the core only reports it).
    /// `renewed_at_ms` is when the lease was last renewed (ms since the epoch, this
    /// host's clock): `status` reports its age at the time it is asked.
    pub fn set_leadership(&mut self, leadership: Option<(jobcast_protocol::Leadership, u64)>) {
        self.process.leadership = leadership;
    }

    /// The store, with every change the core made so far (each request and tick hands
    /// its runs over before it returns).
    pub fn store(&self) -> &S {
        debug_assert!(
            self.tables.unwritten.is_empty(),
            "runs not yet handed to the store"
        );
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        debug_assert!(
            self.tables.unwritten.is_empty(),
            "runs not yet handed to the store"
        );
        &mut self.store
    }

    /// Hands the runs changed since the last hand-over to the store (`unwritten.rs`): at
    /// the end of every request and tick, so that whoever reads or commits the store
    /// next finds every change in it.
    fn write_runs(&mut self) -> StoreResult<()> {
        self.tables
            .unwritten
            .write(&self.tables.runs, &mut self.store)
    }

    /// Stops the core, handing back its store (as a broker that stops leaves it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Forgets what changed (nobody is watching).
    pub fn clear_changes(&mut self) {
        self.changes = self.changes.emptied();
    }

    /// Whether the changes of the batches from now on are noted (a live view listens).
    pub fn track_changes(&mut self, tracking: bool) {
        self.changes.tracking = tracking;
    }

    /// What changed since the last call, as the records live views show.
    pub fn take_changes(&mut self, now_us: u64) -> StoreResult<ChangeSet> {
        let emptied = self.changes.emptied();
        let changes = std::mem::replace(&mut self.changes, emptied);
        let mut runs = Vec::with_capacity(changes.runs.len());
        for id in changes.runs {
            runs.extend(
                crate::selector::find_run(&self.tables.runs, &self.store, &id)?
                    .map(RunRecord::with_secrets_masked),
            );
        }
        self.limits().mark_held(&self.tables.runs, &mut runs);
        let changed_jobs = if changes.jobs {
            Vec::new()
        } else {
            self.with_recent(self.tables.jobs.views_of(changes.job_names.iter()))
        };
        Ok(ChangeSet {
            runs_by_state: (!runs.is_empty()).then(|| self.runs_by_state()),
            runs,
            workers: changes
                .workers
                .then(|| self.status(Now::from_us(now_us)).map(|s| s.workers))
                .transpose()?,
            jobs: changes
                .jobs
                .then(|| self.with_recent(self.tables.jobs.views())),
            changed_jobs,
            logs: changes.logs,
        })
    }

    /// Counts a frame the server refused before it reached the core.
    pub fn note_rejection(&mut self, reason: &str) {
        *self.seen.rejected.entry(reason.to_string()).or_default() += 1;
    }

    /// Counts a connection to the broker's sockets opening or closing.
    pub fn note_connection(&mut self, opened: bool) {
        if opened {
            self.seen.connections.opened += 1;
        } else {
            self.seen.connections.closed += 1;
        }
    }

    /// Handles one authenticated request from the key `from` on connection `peer`. What
    /// it changes is recorded as done "by key <from>".
    pub fn handle(
        &mut self,
        peer: &PeerId,
        from: &str,
        id: u64,
        request: impl Into<Request>,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let reply_to = ReplyTo::peer(peer, from);
        let answer = match (request.into(), from == ADMIN) {
            (Request::Admin(request), true) => {
                let actor = format!("key {from}");
                let caller = admin::Caller {
                    actor: &actor,
                    scope: &Scope::all(),
                };
                self.handle_admin(&reply_to, caller, id, request, now_us, out)
            }
            (Request::Worker(request), false) => {
                self.handle_worker(peer, from, id, request, now_us, out)
            }
            (Request::Worker(_), true) => Err(CoreError::AdminKeyForWorkerRequest),
            (Request::Admin(_), false) => Err(CoreError::NeedsAdminKey),
        };
        self.write_runs()?;
        Self::answer(&reply_to, id, answer, out)
    }

    /// Sends what a request module decided: its reply, or its refusal as an error reply.
    /// `None` is answered later (a ping's answers, a waiting claim's runs); a store failure
    /// goes back to the server.
    fn answer(
        reply_to: &ReplyTo,
        id: u64,
        answer: Handled<Option<Reply>>,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let reply = match answer {
            Ok(reply) => reply,
            Err(refusal) => Some(refusal.into_reply()?),
        };
        if let Some(reply) = reply {
            out.reply(reply_to, id, reply);
        }
        Ok(())
    }

    /// Handles an operator request from the HTTP API, recording `actor` (`token alice`)
    /// as who asked; the reply is addressed to [`ReplyTo::Api`] with the same `id`.
    pub fn handle_api(
        &mut self,
        actor: &str,
        id: u64,
        request: AdminRequest,
        scope: &Scope,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let caller = admin::Caller { actor, scope };
        let answer = self
            .scoped_request(request, scope)
            .and_then(|request| self.handle_admin(&ReplyTo::Api, caller, id, request, now_us, out));
        let answer = match answer {
            Ok(Some(reply)) => Ok(Some(self.scoped_reply(reply, scope)?)),
            other => other,
        };
        self.write_runs()?;
        Self::answer(&ReplyTo::Api, id, answer, out)
    }

    /// The pools each restricted worker key may serve, as a reload found them; they apply
    /// from each worker's next registration.
    pub fn set_worker_pools(&mut self, worker_pools: HashMap<String, BTreeSet<String>>) {
        self.config.worker_pools = worker_pools;
    }

    /// What a listing found in the store, as its reply: queued runs marked with the limit
    /// that holds them (as the tables are now), secret parameter values masked.
    pub fn listing_reply(
        &self,
        filter: &jobcast_protocol::RunFilter,
        listing: store::Listing,
    ) -> Reply {
        let total = admin::counted_filter(filter).then(|| {
            let scope = filter.teams.clone().map_or_else(Scope::all, Scope::teams);
            let counts = self.runs_by_state_in(&scope);
            match filter.state {
                Some(state) => counts.get(state.as_str()).copied().unwrap_or(0),
                None => counts.values().sum(),
            }
        });
        admin::listing_reply(&self.tables.runs, self.limits(), listing, total)
    }

    /// Answers the listings and logs `out` holds by reading the store here, on the
    /// caller's thread (the core's tests; a store that cannot be read from another
    /// thread).
    pub fn answer_reads(&self, out: &mut Outbox) -> StoreResult<()> {
        for asked in std::mem::take(&mut out.listings) {
            let filter = &asked.filter;
            let listing = match store::listing_by_id(filter, |id| self.store.run(id))? {
                Some(listing) => listing,
                None if filter.output.is_some() => store::listing_by_output(
                    filter,
                    |page| self.store.runs(page),
                    |id| self.store.log_chunks(id),
                )?,
                None => self.store.runs(filter)?,
            };
            out.reply(
                &asked.to,
                asked.id,
                self.listing_reply(&asked.filter, listing),
            );
        }
        for asked in std::mem::take(&mut out.logs) {
            let chunks = self.store.log_chunks(&asked.run.id)?;
            out.reply(
                &asked.to,
                asked.id,
                log_reply(*asked.run, &chunks, asked.offset, asked.waited),
            );
        }
        Ok(())
    }

    /// Whether a worker currently has a session (for tests and the server).
    pub fn is_online(&self, worker: &str) -> bool {
        self.tables.workers.is_connected(worker)
    }
}

#[cfg(test)]
mod tests;
