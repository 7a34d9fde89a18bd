//! Steps of the wall clock: jobs follow cron(8), timeouts and back-offs move with it.

use super::*;
use jobcast_protocol::jobfile;

const SECOND: u64 = 1_000;
const HOUR: u64 = 3_600 * SECOND;

fn apply(h: &mut Harness, toml: &str) {
    let jobs = jobfile::parse(toml).unwrap();
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs { jobs }),
        Reply::Applied { .. }
    ));
}

/// Ticks the core as the server does, every 100 ms of simulated time, for `ms`.
fn run_for(h: &mut Harness, ms: u64) {
    for _ in 0..ms / 100 {
        h.advance_ms(100);
        h.tick();
    }
}

/// The wall clock steps by `step_ms`, as the server tells the core.
fn step(h: &mut Harness, step_ms: i64) {
    if step_ms < 0 {
        h.now -= step_ms.unsigned_abs() * 1_000;
    } else {
        h.now += step_ms as u64 * 1_000;
    }
    h.core.clock_stepped(step_ms, h.now).unwrap();
}

/// A harness at 03:00:00 UTC on some day, with jobs of every kind; overlap allowed so
/// that every tick makes a run.
fn at_three_with_jobs() -> Harness {
    let mut h = Harness::new();
    let day_ms = 86_400_000 * 1_000;
    h.now = (h.now / day_ms + 1) * day_ms + 3 * HOUR * 1_000 - 15 * SECOND * 1_000;
    apply(
        &mut h,
        "[jobs.interval]\ncommand = \"x\"\nevery = \"10s\"\noverlap = \"allow\"\n\
         [jobs.wildcard]\ncommand = \"x\"\ncron = \"*/10 * * * * *\"\noverlap = \"allow\"\n\
         [jobs.nightly]\ncommand = \"x\"\ncron = \"0 0 3 * * *\"\noverlap = \"allow\"\n",
    );
    // Up to 03:00:05: the nightly job has had its 03:00 tick.
    run_for(&mut h, 20 * SECOND);
    assert_eq!(h.runs_of("nightly").len(), 1);
    h
}

#[test]
fn after_a_step_back_frequent_jobs_go_on_at_the_new_time_and_a_fixed_time_job_does_not_run_twice() {
    let mut h = at_three_with_jobs();
    let (interval, wildcard) = (h.runs_of("interval").len(), h.runs_of("wildcard").len());
    step(&mut h, -(HOUR as i64));
    // 02:00:05 → 03:00:35 on the wall clock: the frequent jobs fire every 10 s all along,
    // the nightly job not again at 03:00.
    run_for(&mut h, HOUR + 30 * SECOND);
    let fired = |h: &Harness, job: &str, before: usize| h.runs_of(job).len() - before;
    for (job, before) in [("interval", interval), ("wildcard", wildcard)] {
        let fired = fired(&h, job, before);
        assert!(
            (362..=364).contains(&fired),
            "{job}: every 10 s for an hour and 30 s: {fired}"
        );
    }
    assert_eq!(h.runs_of("nightly").len(), 1, "03:00 had its run already");
    // Ticks at times the jobs had before the step are runs of their own.
    let ids: std::collections::BTreeSet<String> =
        h.runs_of("wildcard").into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), h.runs_of("wildcard").len());
    // The next night runs as usual: from 03:00:35 to 02:59:50 the next day at once (the
    // frequent jobs skip what they missed), then on to 03:00:10.
    h.advance_ms(24 * HOUR - 45 * SECOND);
    h.tick();
    run_for(&mut h, 20 * SECOND);
    assert_eq!(h.runs_of("nightly").len(), 2);
}

#[test]
fn after_a_step_forward_interval_jobs_go_on_and_cron_jobs_follow_their_misfire_policy() {
    let mut h = at_three_with_jobs();
    let interval = h.runs_of("interval").len();
    step(&mut h, HOUR as i64);
    run_for(&mut h, 30 * SECOND);
    // An hour of wall clock passed in a moment: the interval is elapsed time.
    let fired = h.runs_of("interval").len() - interval;
    assert!((2..=4).contains(&fired), "{fired}");
    let wildcard = h.job_state("wildcard");
    assert!(
        wildcard.skipped_ticks >= 359,
        "the hour passed over is missed (misfire = skip): {}",
        wildcard.skipped_ticks
    );
}

#[test]
fn a_step_back_does_not_freeze_timeouts_and_a_step_forward_does_not_make_workers_silent() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let heartbeat = |h: &mut Harness, worker: &str| {
        h.worker(
            worker,
            WorkerRequest::Heartbeat(Heartbeat {
                running: vec![],
                free_slots: 1,
                draining: false,
            }),
        );
    };
    step(&mut h, HOUR as i64);
    heartbeat(&mut h, "w1");
    h.tick();
    assert!(
        h.core.is_online("w1") && h.core.is_online("w2"),
        "nobody went silent"
    );
    step(&mut h, -2 * HOUR as i64);
    // w2 says nothing from now on: offline after the timeout, not an hour later.
    for _ in 0..12 {
        h.advance_ms(1_000);
        heartbeat(&mut h, "w1");
        h.tick();
    }
    assert!(h.core.is_online("w1"));
    assert!(!h.core.is_online("w2"));
}
