//! Ticks decided ahead of their time: made into runs a lead early, held, judged again and
//! granted at the time.

use super::*;
use crate::scheduling::DECIDE_AHEAD_MS;
use jobcast_protocol::{jobfile, AdminRequest, EnableTarget, Exec, Outcome};

const EVERY_MS: u64 = 10_000;

/// Workers here send no heartbeats while the simulated clock runs.
fn patient() -> CoreConfig {
    CoreConfig {
        worker_timeout_ms: 365 * 86_400_000,
        ..CoreConfig::default()
    }
}

/// A worker registered, and job `t` every 10 s with `policy` lines; returns the harness
/// and the job's next tick (ms).
fn setup(policy: &str) -> (Harness, u64) {
    let mut h = Harness::with_config(MemoryStore::default(), patient());
    h.now = (h.now / 60_000_000 + 1) * 60_000_000;
    apply(
        &mut h,
        &format!("[jobs.t]\ncommand = \"true\"\nevery = \"10s\"\n{policy}"),
    );
    h.register("w1", 4, &["default"], &[]);
    let tick = h.now / 1_000 + EVERY_MS;
    (h, tick)
}

fn apply(h: &mut Harness, toml: &str) {
    let jobs = jobfile::parse(toml).unwrap();
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs { jobs }),
        Reply::Applied { .. }
    ));
}

/// The broker stopped, and the next one started at `ms` on what it stored, w1 registered
/// again.
fn restarted(h: Harness, ms: u64) -> Harness {
    let mut h = Harness::started_at(h.core.into_store(), patient(), ms * 1_000);
    h.register("w1", 4, &["default"], &[]);
    h
}

/// A run of `t` enqueued by hand, granted to w1 and started there.
fn running_by_hand(h: &mut Harness) -> String {
    let run = h.enqueue("t");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    h.start("w1", &run);
    run
}

/// Ticks the core at `ms`, with a claim of w1 waiting; returns the runs granted to w1.
fn tick_at(h: &mut Harness, ms: u64) -> Vec<String> {
    h.now = ms * 1_000;
    let (_, waiting) = h.waiting_claim("w1", 4, 10_000);
    let mut granted: Vec<String> = grants_for(&waiting, "w1")
        .into_iter()
        .flat_map(|(_, runs)| runs)
        .collect();
    granted.extend(
        grants_for(&h.tick(), "w1")
            .into_iter()
            .flat_map(|(_, runs)| runs),
    );
    granted
}

#[test]
fn a_tick_is_decided_a_lead_ahead_held_durably_and_granted_at_its_time() {
    let (mut h, tick) = setup("");
    let next_look = |h: &Harness| h.core.tables.jobs.next_look(DECIDE_AHEAD_MS);
    assert_eq!(next_look(&h), Some(tick - DECIDE_AHEAD_MS));
    assert!(tick_at(&mut h, tick - DECIDE_AHEAD_MS - 1).is_empty());
    assert!(h.runs_of("t").is_empty(), "not decided before the lead");

    assert!(tick_at(&mut h, tick - DECIDE_AHEAD_MS).is_empty(), "held");
    let runs = h.runs_of("t");
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!((run.state, run.scheduled_at_ms), (RunState::Queued, tick));
    assert_eq!(run.not_before_ms, tick, "stored held until its time");
    assert_eq!(h.job_state("t").last_tick_ms, tick, "in the same commit");
    assert_eq!(h.core.next_wakeup_us(), tick * 1_000, "wakes at its time");
    assert_eq!(next_look(&h), Some(tick + EVERY_MS - DECIDE_AHEAD_MS));

    assert!(tick_at(&mut h, tick - 1).is_empty(), "still held");
    assert_eq!(
        tick_at(&mut h, tick),
        vec![run.id.clone()],
        "granted at its time"
    );
    assert_eq!(h.state(&run.id), RunState::Assigned);
    assert_eq!(h.runs_of("t").len(), 1, "the tick made one run");
}

#[test]
fn a_job_disabled_after_its_tick_was_decided_skips_the_tick_at_its_time() {
    let (mut h, tick) = setup("");
    tick_at(&mut h, tick - DECIDE_AHEAD_MS);
    let held = h.runs_of("t")[0].id.clone();
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Job("t".into()),
        enabled: false,
    });
    assert!(tick_at(&mut h, tick).is_empty());
    assert_eq!(h.state(&held), RunState::Cancelled);
    let state = h.job_state("t");
    assert_eq!(state.skipped_ticks, 1);
    assert_eq!(
        state.recent_skips,
        vec![(tick, "job or pool disabled".into())]
    );

    // Disabled and enabled again before the time: the tick runs.
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Job("t".into()),
        enabled: true,
    });
    let next = tick + EVERY_MS;
    tick_at(&mut h, next - DECIDE_AHEAD_MS);
    for enabled in [false, true] {
        h.admin(AdminRequest::SetEnabled {
            target: EnableTarget::Pool("default".into()),
            enabled,
        });
    }
    let granted = tick_at(&mut h, next);
    assert_eq!(granted.len(), 1);
    h.start("w1", &granted[0]);
    h.finish("w1", &granted[0], Outcome::Exited { code: 0 });

    // Its pool disabled in between: skipped too.
    let last = next + EVERY_MS;
    tick_at(&mut h, last - DECIDE_AHEAD_MS);
    let held = h.runs_of("t").last().unwrap().id.clone();
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Pool("default".into()),
        enabled: false,
    });
    assert!(tick_at(&mut h, last).is_empty());
    assert_eq!(h.state(&held), RunState::Cancelled);
    assert_eq!(
        h.job_state("t").recent_skips.last(),
        Some(&(last, "job or pool disabled".into()))
    );
}

#[test]
fn a_run_of_the_job_started_in_between_is_judged_by_the_overlap_policy_at_the_tick() {
    // The tick decided ahead, then a run of the job enqueued by hand (and, `started`,
    // granted and started) before the tick's time.
    let held_then_by_hand = |policy: &str, started: bool| {
        let (mut h, tick) = setup(policy);
        tick_at(&mut h, tick - DECIDE_AHEAD_MS);
        let held = h.runs_of("t")[0].id.clone();
        h.now += 10_000;
        let by_hand = match started {
            true => running_by_hand(&mut h),
            false => h.enqueue("t"),
        };
        (h, tick, held, by_hand)
    };
    // skip: the tick at its time sees the run enqueued in between.
    let (mut h, tick, held, by_hand) = held_then_by_hand("", false);
    assert_eq!(tick_at(&mut h, tick), vec![by_hand.clone()]);
    assert_eq!(h.state(&held), RunState::Cancelled);
    assert_eq!(
        h.job_state("t").recent_skips,
        vec![(tick, "the previous run is still active".into())]
    );

    // replace: the run enqueued in between is killed, the tick's run goes out.
    let (mut h, tick, held, by_hand) = held_then_by_hand("overlap = \"replace\"", true);
    assert_eq!(tick_at(&mut h, tick), vec![held]);
    assert!(h.core.tables.runs.get(&by_hand).unwrap().kill_requested);

    // queue: both run, one after the other, as when decided at the time.
    let (mut h, tick, held, by_hand) = held_then_by_hand("overlap = \"queue\"", true);
    assert!(
        tick_at(&mut h, tick).is_empty(),
        "queued behind the run out"
    );
    h.finish("w1", &by_hand, Outcome::Exited { code: 0 });
    assert_eq!(
        tick_at(&mut h, tick + 1),
        vec![held],
        "once the other ended"
    );
}

#[test]
fn a_job_whose_run_is_still_active_a_lead_ahead_is_decided_at_its_time() {
    let (mut h, tick) = setup("");
    let earlier = running_by_hand(&mut h);
    assert!(tick_at(&mut h, tick - DECIDE_AHEAD_MS).is_empty());
    assert_eq!(h.runs_of("t").len(), 1, "not decided ahead");
    assert_eq!(
        h.core.tables.jobs.next_look(DECIDE_AHEAD_MS),
        Some(tick),
        "waits for the tick's time, not looking again at every wake-up"
    );
    // The earlier run ends just before the tick: the tick runs, as cron would.
    h.now = (tick - 10) * 1_000;
    h.finish("w1", &earlier, Outcome::Exited { code: 0 });
    let granted = tick_at(&mut h, tick);
    assert_eq!(granted.len(), 1);
    let run = h.stored(&granted[0]);
    assert_eq!((run.scheduled_at_ms, run.created_at_ms), (tick, tick));
}

#[test]
fn a_definition_changed_in_between_runs_as_changed_or_if_its_schedule_changed_not_at_all() {
    let (mut h, tick) = setup("");
    tick_at(&mut h, tick - DECIDE_AHEAD_MS);
    let held = h.runs_of("t")[0].id.clone();
    apply(
        &mut h,
        "[jobs.t]\ncommand = \"false\"\nevery = \"10s\"\npriority = 7",
    );
    assert_eq!(tick_at(&mut h, tick), vec![held.clone()]);
    let run = h.stored(&held);
    let current = h.core.tables.jobs.spec("t").unwrap().exec.clone();
    assert_eq!(run.spec.exec, current);
    assert!(matches!(&current, Exec::Command(argv) if argv.contains(&"false".to_string())));
    assert_eq!(run.priority, 7);

    let (mut h, tick) = setup("");
    tick_at(&mut h, tick - DECIDE_AHEAD_MS);
    let held = h.runs_of("t")[0].id.clone();
    apply(&mut h, "[jobs.t]\ncommand = \"true\"\nevery = \"7s\"");
    assert!(tick_at(&mut h, tick).is_empty());
    assert_eq!(h.state(&held), RunState::Cancelled);
    assert_eq!(
        h.job_state("t").recent_skips,
        vec![(tick, "the job's schedule changed before its time".into())]
    );
}

#[test]
fn a_tick_decided_before_a_restart_is_granted_once_by_the_next_broker() {
    let (mut h, tick) = setup("");
    tick_at(&mut h, tick - DECIDE_AHEAD_MS);
    let held = h.runs_of("t")[0].id.clone();
    let mut h = restarted(h, tick - 50);
    assert!(
        tick_at(&mut h, tick - 50).is_empty(),
        "held across the restart"
    );
    assert_eq!(tick_at(&mut h, tick), vec![held.clone()]);
    h.start("w1", &held);
    h.finish("w1", &held, Outcome::Exited { code: 0 });
    tick_at(&mut h, tick + EVERY_MS);
    let ticks: Vec<u64> = h.runs_of("t").iter().map(|r| r.scheduled_at_ms).collect();
    assert_eq!(ticks, vec![tick, tick + EVERY_MS], "each tick once");
}

#[test]
fn a_job_that_disables_itself_in_between_skips_the_tick_decided_before() {
    let (mut h, tick) = setup("overlap = \"allow\"\ndisable_after_failures = 1");
    let earlier = running_by_hand(&mut h);
    tick_at(&mut h, tick - DECIDE_AHEAD_MS);
    let held = h.runs_of("t")[1].id.clone();
    h.now += 10_000;
    h.finish("w1", &earlier, Outcome::Exited { code: 1 });
    assert!(h.job_state("t").auto_disabled.is_some());
    assert!(tick_at(&mut h, tick).is_empty());
    assert_eq!(h.state(&held), RunState::Cancelled);
}

#[test]
fn a_tick_held_across_a_broker_outage_past_it_follows_the_misfire_policy_and_a_released_one_stays_owed(
) {
    // Decided, then the broker stops before the tick and is back 10 s after it.
    let (mut h, tick) = setup("");
    tick_at(&mut h, tick - DECIDE_AHEAD_MS);
    let held = h.runs_of("t")[0].id.clone();
    let back = tick + 10_000;
    let mut h = restarted(h, back);
    let granted = tick_at(&mut h, back);
    assert_eq!(h.state(&held), RunState::Cancelled);
    assert_eq!(
        h.job_state("t").recent_skips,
        vec![(tick, "missed while the broker was not running".into())]
    );
    assert_eq!(granted.len(), 1, "the tick due on its return runs");
    assert_eq!(h.stored(&granted[0]).scheduled_at_ms, back);

    // Released at its time with no worker to take it, then the broker stops: the run is
    // owed, as any run queued before an outage.
    let (mut h, tick) = setup("");
    for at in [tick - DECIDE_AHEAD_MS, tick] {
        // No claim waits.
        h.now = at * 1_000;
        h.tick();
    }
    let held = h.runs_of("t")[0].id.clone();
    assert_eq!(h.state(&held), RunState::Queued);
    assert_eq!(h.stored(&held).not_before_ms, 0, "stored as released");
    let back = tick + 10_000;
    let mut h = restarted(h, back);
    assert_eq!(tick_at(&mut h, back), vec![held]);
}
