use super::*;
use crate::store::MemoryStore;
use jobcast_protocol::logcap;
use jobcast_protocol::message::topic;
use jobcast_protocol::{
    AdminRequest, ErrorCode, Event, Exec, Heartbeat, JobSpec, KillOutcome, Orders, Outcome,
    Register, RunFilter, RunFinished, WorkerInfo, WorkerRequest,
};

const T0: u64 = 1_800_000_000_000_000; // µs

fn job(name: &str, pool: &str) -> JobSpec {
    JobSpec::new(name, pool, Exec::Script("#!/bin/sh\necho hi\n".into()))
}

/// A one-slot worker's registration for `pools`, declaring `max_log_bytes`.
fn registration(pools: &[&str], max_log_bytes: u64) -> Register {
    Register {
        hostname: "host".into(),
        pid: 1,
        version: "0.1.0".into(),
        concurrency: 1,
        pools: pools.iter().map(|p| p.to_string()).collect(),
        running: vec![],
        max_log_bytes,
        // The same worker process in every registration, unless a test says otherwise.
        instance: 7,
        prefetch: 0,
        kill_grace_ms: 5_000,
        earlier_started: None,
        definition_ids: false,
    }
}

/// The key a reply is sealed for (`admin` for an API call).
fn sealed_for(to: &ReplyTo) -> &str {
    match to {
        ReplyTo::Peer { name, .. } => name,
        ReplyTo::Api => ADMIN,
    }
}

/// The `Granted` answers in `out` for `worker`, by request id.
fn grants_for(out: &Outbox, worker: &str) -> Vec<(u64, Vec<String>)> {
    out.replies
        .iter()
        .filter(|r| sealed_for(&r.to) == worker)
        .filter_map(|r| match &r.reply {
            Reply::Granted { runs, .. } => {
                Some((r.id, runs.iter().map(|a| a.run_id.clone()).collect()))
            }
            _ => None,
        })
        .collect()
}

struct Harness {
    core: Core<MemoryStore>,
    now: u64,
    next_id: u64,
}

impl Harness {
    fn new() -> Harness {
        Self::with_store(MemoryStore::default())
    }

    fn with_store(store: MemoryStore) -> Harness {
        Self::with_config(store, CoreConfig::default())
    }

    fn with_config(store: MemoryStore, config: CoreConfig) -> Harness {
        Self::started_at(store, config, T0)
    }

    /// A core that starts (or restarts, on a store an earlier one left) at `now` (µs).
    fn started_at(store: MemoryStore, config: CoreConfig, now: u64) -> Harness {
        // A fixed seed: the same run ids on every run of the tests.
        let config = CoreConfig {
            seed: config.seed.or(Some(1)),
            ..config
        };
        let mut h = Harness {
            core: Core::new(store, config, now).unwrap(),
            now,
            next_id: 1,
        };
        h.admin(AdminRequest::ApplyJobs {
            jobs: vec![job("hello", "default"), job("gpu-job", "gpu")],
        });
        h
    }

    fn send(&mut self, from: &str, request: impl Into<Request>) -> (Reply, Outbox) {
        let mut out = Outbox::default();
        let id = self.next_id;
        self.next_id += 1;
        let peer = from.as_bytes().to_vec();
        self.core
            .handle(&peer, from, id, request, self.now, &mut out)
            .unwrap();
        // As the server does once the batch is durable.
        self.core.answer_reads(&mut out).unwrap();
        let reply = out
            .replies
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.reply.clone())
            .unwrap_or(Reply::Ack);
        (reply, out)
    }

    fn admin(&mut self, request: AdminRequest) -> Reply {
        self.send(ADMIN, request).0
    }

    fn worker(&mut self, worker: &str, request: WorkerRequest) -> Reply {
        self.send(worker, request).0
    }

    fn register(
        &mut self,
        worker: &str,
        concurrency: u32,
        pools: &[&str],
        running: &[&str],
    ) -> Orders {
        let mut register = registration(pools, 4096);
        register.concurrency = concurrency;
        register.running = running.iter().map(|r| r.to_string()).collect();
        match self.worker(worker, WorkerRequest::Register(register)) {
            Reply::Registered { orders, .. } => orders,
            other => panic!("register: {other:?}"),
        }
    }

    fn enqueue(&mut self, job: &str) -> String {
        match self.admin(AdminRequest::Enqueue {
            job: job.into(),
            key: None,
            params: Default::default(),
            priority: None,
        }) {
            Reply::Enqueued { run } => run.id,
            other => panic!("enqueue: {other:?}"),
        }
    }

    fn claim(&mut self, worker: &str, max: u32) -> Vec<String> {
        match self.worker(worker, WorkerRequest::Claim { max, wait_ms: 0 }) {
            Reply::Granted { runs, .. } => runs.into_iter().map(|a| a.run_id).collect(),
            other => panic!("claim: {other:?}"),
        }
    }

    /// `worker` reports `run_id` started (as pid 1).
    fn start(&mut self, worker: &str, run_id: &str) -> Reply {
        self.worker(
            worker,
            WorkerRequest::RunStarted {
                run_id: run_id.into(),
                pid: 1,
                spawned_at_us: 0,
            },
        )
    }

    /// Reports the run's end; what the report produced.
    fn finish(&mut self, worker: &str, run_id: &str, outcome: Outcome) -> Outbox {
        let finished = WorkerRequest::RunFinished(RunFinished {
            run_id: run_id.into(),
            outcome,
            duration_ms: 5,
            log_bytes: 0,
            claim: 0,
            usage: None,
            started: None,
        });
        self.send(worker, finished).1
    }

    /// Sends a claim that may wait; returns its request id and what the request produced
    /// (no answer while it waits).
    fn waiting_claim(&mut self, worker: &str, max: u32, wait_ms: u64) -> (u64, Outbox) {
        let id = self.next_id;
        let (_, out) = self.send(worker, WorkerRequest::Claim { max, wait_ms });
        (id, out)
    }

    fn state(&self, run_id: &str) -> RunState {
        self.stored(run_id).state
    }

    /// The whole stored record of a run (replies name runs, they do not carry them).
    fn stored(&self, run_id: &str) -> RunRecord {
        self.core.store().run(run_id).unwrap().unwrap()
    }

    fn tick(&mut self) -> Outbox {
        let mut out = Outbox::default();
        self.core.tick(self.now, &mut out).unwrap();
        out
    }

    /// Bytes of log the store holds for `run_id`.
    fn stored_log_bytes(&self, run_id: &str) -> usize {
        self.core
            .store()
            .log_chunks(run_id)
            .unwrap()
            .iter()
            .map(|(_, b)| b.len())
            .sum()
    }

    /// The job's runs, oldest first.
    fn runs_of(&self, job: &str) -> Vec<RunRecord> {
        let mut runs = self
            .core
            .store()
            .runs(&jobcast_protocol::RunFilter {
                job: Some(job.into()),
                limit: 100_000,
                ..Default::default()
            })
            .unwrap()
            .runs;
        runs.reverse();
        runs
    }

    fn job_state(&self, job: &str) -> jobcast_protocol::JobState {
        self.core
            .tables
            .jobs
            .views()
            .into_iter()
            .find(|j| j.spec.name == job)
            .unwrap()
            .state
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now += ms * 1_000;
    }
}

/// The reads of a run by id this store has served so far.
fn run_reads(h: &Harness) -> usize {
    h.core
        .store()
        .run_reads
        .load(std::sync::atomic::Ordering::Relaxed)
}

mod apply_jobs;
mod audit;
mod changes;
mod claim;
mod clock_step;
mod decided_ahead;
mod disk;
mod dispatch;
mod drain;
mod enqueue;
mod get_log;
mod kill;
mod list_runs;
mod liveness;
mod log_chunk;
mod orders;
mod ping;
mod register;
mod reports;
mod retention;
mod retry;
mod run_finished;
mod run_started;
mod run_writes;
mod scheduling;
mod scope;
mod set_enabled;
mod status;
mod waiting_claims;
