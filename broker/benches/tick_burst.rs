//! The broker loop's own share of a burst of ticks: `together` jobs due in the same
//! second, each tick made into a run a lead before its time (`DECIDE_AHEAD_MS`, timed on
//! its own) and, at the time, granted to a claim that waits, then the batch's writes
//! handed to the store (encoded and staged), as the loop does. The committer's
//! thread then gives them to fjall (in a temporary directory) and syncs: not timed here,
//! nor the network (`jobcast-bench firetime` measures the whole).
//!
//! ```sh
//! cargo bench -p jobcast-broker --bench tick_burst            # 1,000 jobs, 20 bursts
//! cargo bench -p jobcast-broker --bench tick_burst -- 10000 5 # jobs, bursts
//! cargo bench -p jobcast-broker --bench tick_burst -- 1000 20 live # a live view listens
//! cargo bench -p jobcast-broker --bench tick_burst -- 1000 8 idle=2s # idle between bursts
//! ```
//!
//! Back to back, each burst finds the loop's data and memory as the last one left them;
//! a broker meets its bursts after seconds of idleness (`idle=`), when they take longer.
//!
//! In the broker's package for its store and its allocator (mimalloc).

use jobcast_broker::store::{FjallEngine, KvStore, Store, DEFAULT_CACHE_BYTES};
use jobcast_core::{Core, CoreConfig, Outbox, DECIDE_AHEAD_MS};
use jobcast_protocol::{
    AdminRequest, Exec, JobSpec, Outcome, Register, Reply, RunFinished, ScheduleSpec, StartedAs,
    WorkerRequest,
};
use std::time::{Duration, Instant};

type FjallStore = KvStore<FjallEngine>;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECOND_US: u64 = 1_000_000;
const EVERY_MS: u64 = 5_000;
const ADMIN: &str = "admin";
const WORKER: &str = "w1";

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let together: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let bursts: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let rest: Vec<String> = args.collect();
    let live = rest.iter().any(|a| a == "live");
    let idle = rest
        .iter()
        .find_map(|a| a.strip_prefix("idle="))
        .map(|t| humantime::parse_duration(t).expect("idle=<duration>, e.g. idle=2s"))
        .unwrap_or_default();

    // A whole multiple of the interval: every job's tick falls on it.
    let start_us = 1_800_000_000 * SECOND_US;
    let config = CoreConfig {
        seed: Some(1),
        ..CoreConfig::default()
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = FjallEngine::open(dir.path(), DEFAULT_CACHE_BYTES).expect("a store");
    let store = KvStore::with_engine(engine).expect("a store");
    let mut core = Core::new(store, config, start_us).expect("a core");
    // As the server does when no live view listens (`live` among the arguments: as when
    // one does).
    core.track_changes(live);
    // Each batch handed to the store to be made durable, as the server does; its fsync
    // (on the committer's thread) is waited for outside what is timed.
    let (told, commits) = std::sync::mpsc::channel();
    let start_commit = move |core: &mut Core<FjallStore>| {
        let told = told.clone();
        core.store_mut().start_flush(Box::new(move |outcome| {
            let _ = told.send(outcome);
        }));
    };
    // And told, as the server tells the store, which then lets the batch's writes go.
    let committed = move |core: &mut Core<FjallStore>| {
        commits
            .recv()
            .expect("the committer answers")
            .expect("a commit");
        core.store_mut().commit_told();
    };
    let mut id = 0u64;
    let mut send =
        |core: &mut Core<FjallStore>, from: &str, request: jobcast_protocol::Request, now_us| {
            id += 1;
            let mut out = Outbox::default();
            core.handle(
                &from.as_bytes().to_vec(),
                from,
                id,
                request,
                now_us,
                &mut out,
            )
            .expect("handled");
            // As the server does after each batch when no live view listens.
            core.clear_changes();
            out
        };
    let jobs = (0..together)
        .map(|i| JobSpec {
            schedule: ScheduleSpec {
                every_ms: Some(EVERY_MS),
                ..Default::default()
            },
            ..JobSpec::new(
                format!("job-{i:05}"),
                "default",
                Exec::Command(vec!["true".into()]),
            )
        })
        .collect();
    send(
        &mut core,
        ADMIN,
        AdminRequest::ApplyJobs { jobs }.into(),
        start_us,
    );
    let register = Register {
        hostname: "bench".into(),
        pid: 1,
        version: jobcast_protocol::JOBCAST_VERSION.into(),
        concurrency: 1_000_000,
        pools: vec!["default".into()],
        running: vec![],
        max_log_bytes: 1 << 20,
        instance: 1,
        prefetch: 0,
        kill_grace_ms: jobcast_protocol::DEFAULT_KILL_GRACE_MS,
        earlier_started: None,
        definition_ids: true,
    };
    send(
        &mut core,
        WORKER,
        WorkerRequest::Register(register).into(),
        start_us,
    );
    start_commit(&mut core);
    committed(&mut core);

    let mut took = Vec::new();
    let mut ahead = Vec::new();
    for burst in 1..=bursts as u64 {
        let due_us = start_us + burst * EVERY_MS * 1_000;
        let before_us = due_us - SECOND_US / 2;
        // A claim waits, as a worker's with free slots does.
        let claim = WorkerRequest::Claim {
            max: 1_000_000,
            wait_ms: 10_000,
        };
        send(&mut core, WORKER, claim.into(), before_us);
        let mut out = Outbox::default();
        core.tick(before_us, &mut out).expect("a tick");
        core.clear_changes();
        start_commit(&mut core);
        committed(&mut core);

        // The ticks decided ahead of their time, as the broker wakes to do.
        std::thread::sleep(idle);
        let started = Instant::now();
        core.tick(due_us - DECIDE_AHEAD_MS * 1_000, &mut Outbox::default())
            .expect("a tick");
        core.clear_changes();
        start_commit(&mut core);
        ahead.push(started.elapsed());
        committed(&mut core);

        std::thread::sleep(idle.min(Duration::from_millis(DECIDE_AHEAD_MS)));
        let mut out = Outbox::default();
        let started = Instant::now();
        core.tick(due_us, &mut out).expect("a tick");
        core.clear_changes();
        let ticked = started.elapsed();
        start_commit(&mut core);
        took.push((started.elapsed(), ticked));
        committed(&mut core);

        let granted: Vec<String> = out
            .replies
            .into_iter()
            .filter_map(|r| match r.reply {
                Reply::Granted { runs, .. } => Some(runs),
                _ => None,
            })
            .flatten()
            .map(|run| run.run_id)
            .collect();
        assert_eq!(granted.len(), together, "burst {burst}: every tick granted");
        // Ended before the next burst, so none of its ticks overlaps a run still out.
        let ended_us = due_us + 10_000;
        for run_id in granted {
            let end = WorkerRequest::RunFinished(RunFinished {
                run_id,
                outcome: Outcome::Exited { code: 0 },
                duration_ms: 1,
                log_bytes: 0,
                claim: 0,
                usage: None,
                started: Some(StartedAs {
                    pid: 1,
                    spawned_at_us: ended_us - 5_000,
                }),
            });
            send(&mut core, WORKER, end.into(), ended_us);
        }
        core.tick(ended_us, &mut Outbox::default()).expect("a tick");
        core.clear_changes();
        start_commit(&mut core);
        committed(&mut core);
    }
    let median = |mut times: Vec<Duration>| {
        times.sort();
        (times[times.len() / 2], times[0], times[times.len() - 1])
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (whole, fastest, slowest) = median(took.iter().map(|t| t.0).collect());
    let (ticked, _, _) = median(took.iter().map(|t| t.1).collect());
    let (decided, _, _) = median(ahead);
    let handed_over = median(took.iter().map(|t| t.0 - t.1).collect()).0;
    let idle = match idle.is_zero() {
        true => String::new(),
        false => format!(", {} idle before each", humantime::format_duration(idle)),
    };
    println!(
        "{together} ticks due at once, {bursts} bursts{idle}: deciding them {DECIDE_AHEAD_MS} ms ahead took median {:.2} ms; at their time the loop took median {:.2} ms ({:.2} µs a tick; fastest {:.2} ms, slowest {:.2} ms): the tick {:.2} ms, handing its writes to the store {:.2} ms (medians)",
        ms(decided),
        ms(whole),
        ms(whole) * 1e3 / together as f64,
        ms(fastest),
        ms(slowest),
        ms(ticked),
        ms(handed_over),
    );
}
