//! Scheduling in the core, on a simulated clock.

use super::*;
use crate::scheduling::DECIDE_AHEAD_MS;
use crate::store::StoreError;
use jobcast_protocol::{
    jobfile, AdminRequest, AlertKind, EnableTarget, Outcome, RunFilter, RunFinished, WorkerRequest,
};

const SECOND: u64 = 1_000;

impl Harness {
    pub(super) fn apply_toml(&mut self, toml: &str) {
        let jobs = jobfile::parse(toml).unwrap();
        match self.admin(AdminRequest::ApplyJobs { jobs }) {
            Reply::Applied { .. } => {}
            other => panic!("apply: {other:?}"),
        }
    }

    fn apply_error(&mut self, toml: &str) -> String {
        let jobs = jobfile::parse(toml).unwrap();
        match self.admin(AdminRequest::ApplyJobs { jobs }) {
            Reply::Error { message, .. } => message,
            other => panic!("expected an error: {other:?}"),
        }
    }

    fn now_ms(&self) -> u64 {
        self.now / 1_000
    }

    /// Advances the clock to each wake-up the core asks for, up to `ms` from now.
    fn run_clock_for(&mut self, ms: u64) -> Vec<Notification> {
        let end = self.now + ms * 1_000;
        let mut notes = Vec::new();
        loop {
            let next = self.core.next_wakeup_us().max(self.now);
            if next > end {
                self.now = end;
                break;
            }
            self.now = next;
            notes.extend(self.tick().notifications);
        }
        notes.extend(self.tick().notifications);
        notes
    }

    fn start_and_finish(&mut self, worker: &str, run_id: &str, code: i32) {
        self.start(worker, run_id);
        self.finish(worker, run_id, Outcome::Exited { code });
    }
}

/// Workers here do not send heartbeats while the simulated clock runs.
fn patient() -> CoreConfig {
    CoreConfig {
        worker_timeout_ms: 365 * 86_400_000,
        ..CoreConfig::default()
    }
}

/// Aligns the harness clock to a whole minute so tick arithmetic is easy to read.
fn aligned() -> Harness {
    let mut h = Harness::with_config(MemoryStore::default(), patient());
    h.now = (h.now / 60_000_000 + 1) * 60_000_000;
    h
}

#[test]
fn an_every_job_fires_each_tick_once_on_the_grid() {
    let mut h = aligned();
    h.apply_toml("[jobs.tick]\ncommand = \"true\"\nevery = \"1s\"\noverlap = \"allow\"");
    let start = h.now_ms();
    h.tick();
    assert_eq!(
        h.core.next_wakeup_us(),
        (start + SECOND - DECIDE_AHEAD_MS) * 1_000,
        "sleeps until a lead before the next tick, when it is decided"
    );
    h.run_clock_for(20 * SECOND);
    let runs = h.runs_of("tick");
    assert_eq!(runs.len(), 20);
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.scheduled_at_ms, start + (i as u64 + 1) * SECOND);
        assert_eq!(
            run.created_at_ms,
            run.scheduled_at_ms - DECIDE_AHEAD_MS,
            "decided a lead ahead"
        );
        assert_eq!(run.not_before_ms, 0, "held until its time, then released");
    }
}

#[test]
fn the_same_tick_never_makes_two_runs_even_if_decided_twice() {
    let mut store = MemoryStore::default();
    let tick;
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.now = (h.now / 60_000_000 + 1) * 60_000_000;
        h.apply_toml("[jobs.tick]\ncommand = \"true\"\nevery = \"1m\"\noverlap = \"allow\"");
        h.run_clock_for(60 * SECOND);
        assert_eq!(h.runs_of("tick").len(), 1);
        tick = h.runs_of("tick")[0].scheduled_at_ms;
        // As if the crash came after the run was written but before the job's state was:
        let mut state = h.job_state("tick");
        state.last_tick_ms = tick - 1;
        h.core.store_mut().put_job_state("tick", &state).unwrap();
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    let mut h = Harness::with_store(std::mem::take(&mut store));
    h.now = tick * 1_000 + 500_000;
    h.tick();
    let runs = h.runs_of("tick");
    assert_eq!(
        runs.len(),
        1,
        "the tick was decided again but named the same run"
    );
}

#[test]
fn misfire_policies_after_a_three_hour_outage() {
    for (policy, expected_runs, expected_skips) in [("skip", 0, 3), ("once", 1, 2), ("all", 3, 0)] {
        let mut store = MemoryStore::default();
        let start;
        {
            let mut h = Harness::with_store(std::mem::take(&mut store));
            h.now = (h.now / 3_600_000_000 + 1) * 3_600_000_000 + 1_000_000;
            start = h.now;
            h.apply_toml(&format!(
                "[jobs.hourly]\ncommand = \"true\"\ncron = \"0 * * * *\"\nmisfire = \"{policy}\"\noverlap = \"allow\""
            ));
            // The broker stops; the next one opens what it stored.
            store = h.core.into_store();
        }
        // Down from just after the top of an hour until 3.5 hours later.
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.now = start + 3 * 3_600_000_000 + 1_800_000_000;
        h.tick();
        let runs = h.runs_of("hourly");
        assert_eq!(runs.len(), expected_runs, "{policy}");
        let state = h.job_state("hourly");
        assert_eq!(state.skipped_ticks, expected_skips, "{policy}");
        if policy == "once" {
            // the catch-up is for the latest missed tick
            assert_eq!(
                runs[0].scheduled_at_ms,
                (start / 1_000 / 3_600_000 + 3) * 3_600_000
            );
        }
        // and the schedule carries on normally afterwards
        let next = h
            .core
            .tables
            .jobs
            .views()
            .into_iter()
            .find(|j| j.spec.name == "hourly")
            .and_then(|j| j.next_fire_ms)
            .unwrap();
        assert_eq!(next % 3_600_000, 0);
        assert!(next > h.now_ms() && next - h.now_ms() <= 3_600_000);
    }
}

#[test]
fn misfire_all_is_bounded_by_max_catchup() {
    let mut store = MemoryStore::default();
    let start;
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        start = h.now;
        h.apply_toml("[jobs.minutely]\ncommand = \"true\"\nevery = \"1m\"\nmisfire = \"all\"\nmax_catchup = 5\noverlap = \"allow\"");
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    let mut h = Harness::with_store(std::mem::take(&mut store));
    h.now = start + 3 * 3_600_000_000 + 30_000_000;
    h.tick();
    assert_eq!(h.runs_of("minutely").len(), 5);
    assert!(h.job_state("minutely").skipped_ticks >= 170);
}

#[test]
fn overlap_holds_across_the_ticks_one_pass_catches_up() {
    // An every-second job, 16 ticks behind when the broker comes back (11 of them missed,
    // caught up by misfire = "all"): overlap judges each tick against the runs the earlier
    // ones of the same pass made.
    for (overlap, runs_out, skipped) in [("skip", 1, 15), ("queue", 16, 0), ("allow", 16, 0)] {
        let mut store = MemoryStore::default();
        let start;
        {
            let mut h = Harness::with_store(std::mem::take(&mut store));
            h.now = (h.now / 60_000_000 + 1) * 60_000_000 + 500_000;
            start = h.now;
            h.apply_toml(&format!(
                "[jobs.sec]\ncommand = \"true\"\nevery = \"1s\"\nmisfire = \"all\"\nmax_catchup = 100\noverlap = \"{overlap}\""
            ));
            store = h.core.into_store();
        }
        let mut h = Harness::with_store(std::mem::take(&mut store));
        // Ten ticks were missed (more than the misfire grace ago), none is on time.
        h.now = start + 10 * 1_000_000 + MISFIRE_GRACE_MS * 1_000 + 600_000;
        h.tick();
        let active = h
            .runs_of("sec")
            .iter()
            .filter(|r| !r.state.is_terminal())
            .count();
        assert!(active <= runs_out, "{overlap}: {active} runs out");
        assert_eq!(h.runs_of("sec").len(), runs_out, "{overlap}");
        assert_eq!(h.job_state("sec").skipped_ticks, skipped, "{overlap}");
    }
}

#[test]
fn a_cron_job_applied_in_the_second_pass_of_a_repeated_hour_keeps_firing() {
    // Amsterdam, 2026-10-25: 02:00-03:00 local happens twice; 01:05 UTC is 02:05 in the
    // second pass.
    let mut h = Harness::with_config(MemoryStore::default(), patient());
    h.now = 1_792_890_300_000_000; // 2026-10-25T01:05:00Z
    h.apply_toml(
        "[jobs.half]\ncommand = \"x\"\ncron = \"*/30 * * * *\"\ntimezone = \"Europe/Amsterdam\"\noverlap = \"allow\"\n\
         [jobs.fixed]\ncommand = \"x\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Amsterdam\"",
    );
    let next = |h: &Harness, job: &str| {
        h.core
            .tables
            .jobs
            .views()
            .into_iter()
            .find(|j| j.spec.name == job)
            .and_then(|j| j.next_fire_ms)
    };
    // */30: 02:30 of the second pass (01:30 UTC); 30 2: the next day's 02:30 (01:30 UTC).
    assert_eq!(next(&h, "half"), Some(1_792_891_800_000));
    assert_eq!(next(&h, "fixed"), Some(1_792_891_800_000 + 86_400_000));
    h.run_clock_for(3_600 * SECOND);
    let fired: Vec<u64> = h
        .runs_of("half")
        .iter()
        .map(|r| r.scheduled_at_ms)
        .collect();
    assert_eq!(fired, [1_792_891_800_000, 1_792_893_600_000]);
    assert!(h.runs_of("fixed").is_empty());
}

#[test]
fn overlap_skip_queue_allow_and_replace() {
    for (policy, runs_after_two_ticks) in [("skip", 1), ("queue", 2), ("allow", 2), ("replace", 2)]
    {
        let mut h = aligned();
        h.register("w1", 4, &["default"], &[]);
        h.apply_toml(&format!(
            "[jobs.slow]\ncommand = \"sleep 100\"\nevery = \"1m\"\noverlap = \"{policy}\""
        ));
        h.run_clock_for(60 * SECOND);
        let first = h.claim("w1", 4);
        assert_eq!(first.len(), 1, "{policy}");
        h.start("w1", &first[0]);
        h.run_clock_for(60 * SECOND);
        let runs = h.runs_of("slow");
        assert_eq!(runs.len(), runs_after_two_ticks, "{policy}");
        let second = h.claim("w1", 4);
        match policy {
            "skip" => {
                assert!(second.is_empty());
                assert_eq!(
                    h.job_state("slow").recent_skips[0].1,
                    "the previous run is still active"
                );
            }
            "queue" => {
                assert!(second.is_empty(), "queued until the first ends");
                h.finish("w1", &first[0], Outcome::Exited { code: 0 });
                assert_eq!(h.claim("w1", 4).len(), 1);
            }
            "allow" => assert_eq!(second.len(), 1),
            "replace" => {
                assert!(
                    h.core
                        .store()
                        .run(&first[0])
                        .unwrap()
                        .unwrap()
                        .kill_requested
                );
                assert_eq!(second.len(), 1);
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn chains_run_children_on_success_and_on_error_children_after_failure() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml(
        "[jobs.parent]\ncommand = \"x\"\nchildren = [\"report\", { job = \"cleanup\", on_error = true }]\n\
         [jobs.report]\ncommand = \"x\"\n[jobs.cleanup]\ncommand = \"x\"\n",
    );
    let ok = h.enqueue("parent");
    h.claim("w1", 1);
    h.start_and_finish("w1", &ok, 0);
    assert_eq!(h.runs_of("report").len(), 1);
    assert_eq!(h.runs_of("cleanup").len(), 1);
    assert_eq!(h.runs_of("report")[0].parent.as_deref(), Some(ok.as_str()));

    let bad = h.enqueue("parent");
    let granted = h.claim("w1", 4);
    assert!(granted.contains(&bad));
    h.start_and_finish("w1", &bad, 1);
    assert_eq!(h.runs_of("report").len(), 1, "no report after a failure");
    assert_eq!(
        h.runs_of("cleanup").len(),
        2,
        "cleanup runs after a failure too"
    );
}

#[test]
fn chains_that_loop_or_name_unknown_jobs_are_refused() {
    let mut h = Harness::new();
    let err = h.apply_error("[jobs.a]\ncommand = \"x\"\nchildren = [\"b\"]\n[jobs.b]\ncommand = \"x\"\nchildren = [\"a\"]\n");
    assert!(
        err.contains("loops") && err.contains("a -> b -> a") || err.contains("b -> a -> b"),
        "{err}"
    );
    let err = h.apply_error("[jobs.a]\ncommand = \"x\"\nchildren = [\"ghost\"]\n");
    assert!(
        err.contains("ghost") && err.contains("not defined"),
        "{err}"
    );
    let err = h.apply_error("[jobs.a]\ncommand = \"x\"\ncron = \"61 * * * *\"\n");
    assert!(err.contains("not valid"), "{err}");
    // nothing of a refused apply was stored
    let Reply::Jobs { jobs } = h.admin(AdminRequest::ListJobs) else {
        panic!()
    };
    assert_eq!(jobs.len(), 2);
}

#[test]
fn failed_runs_are_retried_with_backoff_as_new_linked_runs() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml("[jobs.flaky]\ncommand = \"x\"\nretries = 2\nretry_backoff = \"10s\"\nretry_backoff_kind = \"exponential\"\nchildren = [{ job = \"cleanup\", on_error = true }]\n[jobs.cleanup]\ncommand = \"x\"");
    let first = h.enqueue("flaky");
    h.claim("w1", 1);
    h.start_and_finish("w1", &first, 1);
    assert!(h.claim("w1", 1).is_empty(), "not before the back-off");
    h.run_clock_for(10 * SECOND);
    let second = h.claim("w1", 1);
    assert_eq!(second.len(), 1);
    let retry = h.core.store().run(&second[0]).unwrap().unwrap();
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.first_attempt.as_deref(), Some(first.as_str()));
    assert_eq!(
        h.runs_of("cleanup").len(),
        0,
        "no chain until the last attempt"
    );
    h.start_and_finish("w1", &second[0], 1);
    h.run_clock_for(19 * SECOND);
    assert!(
        h.claim("w1", 1).is_empty(),
        "exponential: 20s the second time"
    );
    h.run_clock_for(SECOND);
    let third = h.claim("w1", 1);
    assert_eq!(h.core.store().run(&third[0]).unwrap().unwrap().attempt, 3);
    h.start_and_finish("w1", &third[0], 1);
    assert_eq!(h.runs_of("flaky").len(), 3, "two retries, no more");
    assert_eq!(h.runs_of("cleanup").len(), 1);
}

#[test]
fn a_job_disables_itself_after_repeated_failures_and_can_be_enabled() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml("[jobs.broken]\ncommand = \"x\"\nevery = \"1m\"\ndisable_after_failures = 2");
    let mut notes = Vec::new();
    for _ in 0..2 {
        notes.extend(h.run_clock_for(60 * SECOND));
        let run = h.claim("w1", 1);
        h.start("w1", &run[0]);
        let mut out = Outbox::default();
        h.core
            .handle(
                &b"w1".to_vec(),
                "w1",
                99,
                WorkerRequest::RunFinished(RunFinished {
                    run_id: run[0].clone(),
                    outcome: Outcome::Exited { code: 2 },
                    duration_ms: 1,
                    log_bytes: 0,
                    claim: 0,
                    usage: None,
                    started: None,
                }),
                h.now,
                &mut out,
            )
            .unwrap();
        notes.extend(out.notifications);
    }
    assert!(notes.iter().any(|n| n.kind == AlertKind::AutoDisabled));
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.kind == AlertKind::RunFailed)
            .count(),
        2
    );
    assert!(h.job_state("broken").auto_disabled.is_some());
    notes.extend(h.run_clock_for(60 * SECOND));
    assert_eq!(h.runs_of("broken").len(), 2, "no more runs while disabled");
    // It stands as an alert while disabled, notified once (when it disabled itself).
    let standing = |h: &mut Harness| {
        let Reply::Status(status) = h.admin(AdminRequest::Status) else {
            panic!()
        };
        status
            .alerts
            .into_iter()
            .filter(|a| a.kind == AlertKind::AutoDisabled)
            .map(|a| (a.job, a.since_ms))
            .collect::<Vec<_>>()
    };
    let alert = standing(&mut h);
    assert_eq!(alert.len(), 1, "{alert:?}");
    assert_eq!(alert[0].0.as_deref(), Some("broken"));
    notes.extend(h.run_clock_for(5 * SECOND));
    assert_eq!(
        standing(&mut h),
        alert,
        "the same alert, since the same time"
    );
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.kind == AlertKind::AutoDisabled)
            .count(),
        1
    );
    assert_eq!(
        h.job_state("broken").recent_skips.last().unwrap().1,
        "job or pool disabled"
    );
    // manual enqueue still works
    let manual = h.enqueue("broken");
    assert_eq!(h.claim("w1", 1), vec![manual.clone()]);
    h.start_and_finish("w1", &manual, 0);
    assert_eq!(
        h.admin(AdminRequest::SetEnabled {
            target: EnableTarget::Job("broken".into()),
            enabled: true
        }),
        Reply::Ack
    );
    assert!(h.job_state("broken").auto_disabled.is_none());
    h.run_clock_for(60 * SECOND);
    assert_eq!(h.runs_of("broken").len(), 4);
    assert!(
        standing(&mut h).is_empty(),
        "the alert ends with the job enabled"
    );
}

#[test]
fn disabled_pools_skip_their_jobs_ticks() {
    let mut h = aligned();
    h.apply_toml(
        "[jobs.a]\ncommand = \"x\"\nevery = \"1m\"\npool = \"batch\"\noverlap = \"allow\"",
    );
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Pool("batch".into()),
        enabled: false,
    });
    h.run_clock_for(60 * SECOND);
    assert!(h.runs_of("a").is_empty());
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Pool("batch".into()),
        enabled: true,
    });
    h.run_clock_for(60 * SECOND);
    assert_eq!(h.runs_of("a").len(), 1);
}

#[test]
fn run_on_all_workers_makes_one_pinned_run_per_live_worker() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    h.register("g1", 4, &["gpu"], &[]);
    h.apply_toml("[jobs.everywhere]\ncommand = \"x\"\nevery = \"1m\"\nrun_on_all_workers = true");
    h.run_clock_for(60 * SECOND);
    let runs = h.runs_of("everywhere");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].schedule_id, runs[1].schedule_id);
    let w1 = h.claim("w1", 4);
    let w2 = h.claim("w2", 4);
    assert_eq!(w1.len(), 1);
    assert_eq!(w2.len(), 1);
    assert_ne!(w1, w2);
    assert!(h.claim("g1", 4).is_empty());
}

#[test]
fn after_a_restart_jobs_for_every_worker_wait_for_the_workers_to_register_again() {
    let mut store = MemoryStore::default();
    let start;
    {
        let mut h = Harness::with_config(std::mem::take(&mut store), patient());
        h.now = (h.now / 60_000_000 + 1) * 60_000_000 - 2_000_000; // 2 s before a minute
        start = h.now;
        h.register("w1", 4, &["default"], &[]);
        h.register("w2", 4, &["default"], &[]);
        h.apply_toml(
            "[jobs.everywhere]\ncommand = \"x\"\nevery = \"1m\"\nrun_on_all_workers = true",
        );
        store = h.core.into_store();
    }
    // The broker restarts a second before the tick; the workers are back 4 s after it.
    let mut h = Harness::started_at(std::mem::take(&mut store), patient(), start + 1_000_000);
    let mut notes = h.run_clock_for(5 * SECOND);
    assert!(
        h.runs_of("everywhere").is_empty(),
        "decided before the workers came back"
    );
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    notes.extend(h.run_clock_for(2 * SECOND));
    let runs = h.runs_of("everywhere");
    assert_eq!(
        runs.len(),
        2,
        "one run per worker for the tick they were away for"
    );
    assert_eq!(runs[0].scheduled_at_ms, (start + 2_000_000) / 1_000);
    assert!(
        notes.iter().all(|n| n.kind != AlertKind::NoWorker),
        "no alarm for workers that were only registering again: {notes:?}"
    );
    assert_eq!(h.job_state("everywhere").skipped_ticks, 0);
}

#[test]
fn after_a_restart_a_job_for_every_worker_waits_for_each_worker_that_was_online() {
    let mut store = MemoryStore::default();
    let start;
    {
        let mut h = Harness::with_config(std::mem::take(&mut store), patient());
        h.now = (h.now / 60_000_000 + 1) * 60_000_000 - 2_000_000; // 2 s before a minute
        start = h.now;
        h.register("w1", 4, &["default"], &[]);
        h.register("w2", 4, &["default"], &[]);
        h.apply_toml(
            "[jobs.everywhere]\ncommand = \"x\"\nevery = \"1m\"\nrun_on_all_workers = true",
        );
        store = h.core.into_store();
    }
    // The broker restarts a second before the tick; w1 is back at once, w2 6 s later.
    let mut h = Harness::started_at(std::mem::take(&mut store), patient(), start + 1_000_000);
    h.register("w1", 4, &["default"], &[]);
    h.run_clock_for(6 * SECOND);
    assert!(
        h.runs_of("everywhere").is_empty(),
        "decided before w2, online before the restart, came back"
    );
    h.register("w2", 4, &["default"], &[]);
    h.run_clock_for(SECOND);
    let mut pinned: Vec<_> = h
        .runs_of("everywhere")
        .into_iter()
        .map(|r| r.pinned_worker.unwrap())
        .collect();
    pinned.sort();
    assert_eq!(pinned, ["w1", "w2"], "the tick runs once on each worker");
    assert_eq!(h.job_state("everywhere").skipped_ticks, 0);
}

#[test]
fn a_job_for_every_worker_judges_overlap_on_each_worker_alone() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    h.apply_toml("[jobs.everywhere]\ncommand = \"x\"\nevery = \"1m\"\nrun_on_all_workers = true");
    h.run_clock_for(60 * SECOND);
    assert_eq!(h.runs_of("everywhere").len(), 2);
    // w1 runs its copy to the end; w2's is still going at the next tick.
    let [r1] = h.claim("w1", 4).try_into().unwrap();
    let [r2] = h.claim("w2", 4).try_into().unwrap();
    h.start("w1", &r1);
    h.start("w2", &r2);
    h.finish("w1", &r1, Outcome::Exited { code: 0 });
    h.run_clock_for(60 * SECOND);
    let second: Vec<_> = h
        .runs_of("everywhere")
        .into_iter()
        .filter(|r| r.id != r1 && r.id != r2)
        .collect();
    assert_eq!(second.len(), 1, "w1 is free: its copy of the tick runs");
    assert_eq!(second[0].pinned_worker.as_deref(), Some("w1"));
    let state = h.job_state("everywhere");
    assert_eq!(state.skipped_ticks, 1);
    assert!(
        state.recent_skips[0].1.contains("on w2 is still active"),
        "{:?}",
        state.recent_skips
    );
}

#[test]
fn with_no_worker_back_within_the_grace_the_tick_is_skipped_and_reported() {
    let mut store = MemoryStore::default();
    let start;
    {
        let mut h = Harness::with_config(std::mem::take(&mut store), patient());
        h.now = (h.now / 60_000_000 + 1) * 60_000_000 - 2_000_000;
        start = h.now;
        h.apply_toml(
            "[jobs.everywhere]\ncommand = \"x\"\nevery = \"1m\"\nrun_on_all_workers = true",
        );
        store = h.core.into_store();
    }
    let mut h = Harness::started_at(std::mem::take(&mut store), patient(), start + 1_000_000);
    let notes = h.run_clock_for(12 * SECOND);
    assert!(h.runs_of("everywhere").is_empty());
    assert_eq!(h.job_state("everywhere").skipped_ticks, 1);
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.kind == AlertKind::NoWorker)
            .count(),
        1,
        "{notes:?}"
    );
}

#[test]
fn a_run_not_started_within_its_deadline_is_missed() {
    let mut h = aligned();
    h.apply_toml("[jobs.tight]\ncommand = \"x\"\nevery = \"1m\"\nstarting_deadline = \"10s\"");
    h.run_clock_for(60 * SECOND);
    let run = h.runs_of("tight")[0].id.clone();
    h.run_clock_for(12 * SECOND);
    assert_eq!(h.state(&run), RunState::Missed);
    h.register("w1", 4, &["default"], &[]);
    assert!(
        h.claim("w1", 4).is_empty(),
        "a missed run does not start late"
    );
}

#[test]
fn late_never_run_and_no_worker_are_reported_once() {
    let mut h = aligned();
    h.apply_toml("[jobs.nightly]\ncommand = \"x\"\nevery = \"1m\"\nlate_after = \"30s\"");
    let mut notes = h.run_clock_for(60 * SECOND);
    notes.extend(h.run_clock_for(31 * SECOND));
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    let kinds: BTreeSet<AlertKind> = status.alerts.iter().map(|a| a.kind).collect();
    assert!(kinds.contains(&AlertKind::Late), "{status:?}");
    assert!(kinds.contains(&AlertKind::NeverRun), "{status:?}");
    assert!(kinds.contains(&AlertKind::NoWorker), "{status:?}");
    notes.extend(h.run_clock_for(5 * SECOND));
    for kind in [AlertKind::Late, AlertKind::NeverRun, AlertKind::NoWorker] {
        assert_eq!(
            notes.iter().filter(|n| n.kind == kind).count(),
            1,
            "{kind:?} notified once"
        );
    }
    // a worker comes, runs it: the conditions clear
    h.register("w1", 4, &["default"], &[]);
    let runs = h.claim("w1", 4);
    for run in &runs {
        h.start_and_finish("w1", run, 0);
    }
    h.run_clock_for(2 * SECOND);
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    assert!(status.alerts.is_empty(), "{:?}", status.alerts);
}

#[test]
fn exclusion_windows_skip_ticks() {
    let mut h = aligned();
    let hour = (h.now_ms() / 3_600_000) % 24;
    let window = format!("{:02}:00-{:02}:00", hour, (hour + 1) % 24);
    h.apply_toml(&format!("[jobs.quiet]\ncommand = \"x\"\nevery = \"1m\"\nexclude = [\"{window}\"]\noverlap = \"allow\""));
    h.run_clock_for(60 * SECOND);
    assert!(h.runs_of("quiet").is_empty());
    assert_eq!(
        h.job_state("quiet").recent_skips[0].1,
        "inside an exclusion window"
    );
}

#[test]
fn a_corrupt_disabled_pools_setting_stops_the_core_instead_of_enabling_every_pool() {
    let mut store = MemoryStore::default();
    store
        .put_setting(
            super::super::scheduling::DISABLED_POOLS,
            b"\xc1 not msgpack",
        )
        .unwrap();
    match Core::new(store, CoreConfig::default(), T0) {
        Err(StoreError::Corrupt { what, .. }) => assert_eq!(what, "disabled pools setting"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a corrupt setting was read as a default"),
    }
}

fn next_fires(h: &mut Harness, job: &str, count: u32) -> Reply {
    h.admin(AdminRequest::NextFires {
        job: job.into(),
        count,
    })
}

#[test]
fn next_fires_list_the_ticks_that_start_runs_in_the_jobs_zone() {
    let mut h = aligned();
    let hour_ms = 3_600_000;
    let this_hour = h.now_ms() / hour_ms * hour_ms;
    let hour = (this_hour / hour_ms) % 24;
    // Every 30 minutes, in a zone, except during the next hour.
    let window = format!("{:02}:00-{:02}:00", (hour + 1) % 24, (hour + 2) % 24);
    h.apply_toml(&format!(
        "[jobs.half]\ncommand = \"x\"\nevery = \"30m\"\nexclude = [\"{window}\"]\n\
         [jobs.by-hand]\ncommand = \"x\"\n"
    ));
    let Reply::NextFires { times_ms, job } = next_fires(&mut h, "half", 4) else {
        panic!("no fire times")
    };
    assert_eq!(job.spec.name, "half");
    assert_eq!(job.spec.schedule.timezone, None);
    let half = hour_ms / 2;
    let first = (h.now_ms() / half + 1) * half;
    let expected: Vec<u64> = (0..8)
        .map(|i| first + i * half)
        .filter(|t| !(this_hour + hour_ms..this_hour + 2 * hour_ms).contains(t))
        .take(4)
        .collect();
    assert_eq!(times_ms, expected);

    // A manual job, and a disabled one, fire never.
    let Reply::NextFires { times_ms, .. } = next_fires(&mut h, "by-hand", 4) else {
        panic!()
    };
    assert!(times_ms.is_empty());
    h.admin(AdminRequest::SetEnabled {
        target: jobcast_protocol::EnableTarget::Job("half".into()),
        enabled: false,
    });
    let Reply::NextFires { times_ms, .. } = next_fires(&mut h, "half", 4) else {
        panic!()
    };
    assert!(times_ms.is_empty());
    // Asking for more than 100 gets 100; an unknown job is an error.
    h.admin(AdminRequest::SetEnabled {
        target: jobcast_protocol::EnableTarget::Job("half".into()),
        enabled: true,
    });
    let Reply::NextFires { times_ms, .. } = next_fires(&mut h, "half", 1_000) else {
        panic!()
    };
    assert_eq!(times_ms.len(), 100);
    assert!(matches!(
        next_fires(&mut h, "nope", 1),
        Reply::Error {
            code: jobcast_protocol::ErrorCode::NotFound,
            ..
        }
    ));
}

fn enqueue_with(h: &mut Harness, job: &str, params: &[(&str, &str)]) -> Reply {
    h.admin(AdminRequest::Enqueue {
        job: job.into(),
        key: None,
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        priority: None,
    })
}

fn values(pairs: &[(&str, &str)]) -> jobcast_protocol::params::Params {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn enqueued_parameters_are_checked_and_stored_with_the_defaults_and_ticks_use_the_defaults() {
    let mut h = aligned();
    h.apply_toml(
        "[jobs.backup]\ncommand = \"x\"\n\
         params.target = { type = \"choice\", choices = [\"db\", \"files\"], default = \"db\" }\n\
         params.token = { type = \"string\", required = true, secret = true }\n\
         [jobs.tick]\ncommand = \"x\"\nevery = \"1m\"\noverlap = \"allow\"\n\
         params.depth = { type = \"integer\", default = \"2\" }\n",
    );
    let before = h.core.store().run_count().unwrap();
    for (given, message) in [
        (
            vec![("target", "tape"), ("token", "x")],
            "job backup: parameter \"target\": \"tape\" is not one of db, files",
        ),
        (vec![], "job backup: parameter \"token\" is required"),
        (
            vec![("token", "x"), ("colour", "red")],
            "job backup: no parameter named \"colour\" (the job declares: target, token)",
        ),
    ] {
        match enqueue_with(&mut h, "backup", &given) {
            Reply::Error { code, message: m } => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert_eq!(m, message);
            }
            other => panic!("{given:?} was taken: {other:?}"),
        }
    }
    assert_eq!(
        h.core.store().run_count().unwrap(),
        before,
        "nothing stored"
    );
    let Reply::Enqueued { run } = enqueue_with(&mut h, "backup", &[("token", "s3cr3t")]) else {
        panic!()
    };
    let stored = h.stored(&run.id);
    assert_eq!(
        stored.params,
        values(&[("target", "db"), ("token", "s3cr3t")])
    );
    // Shown to no one: the secret is masked wherever a run is listed.
    assert_eq!(
        stored.clone().with_secrets_masked().params,
        values(&[("target", "db"), ("token", "(secret)")])
    );
    // Every reply that lists or shows the run masks it; the stored run keeps it.
    let Reply::Runs { runs, .. } = h.admin(AdminRequest::ListRuns(RunFilter {
        job: Some("backup".into()),
        limit: 10,
        ..Default::default()
    })) else {
        panic!()
    };
    assert_eq!(runs[0].params["token"], "(secret)");
    let Reply::Log { run: shown, .. } = h.admin(AdminRequest::GetLog {
        run: run.id.clone(),
        offset: None,
        wait_ms: None,
    }) else {
        panic!()
    };
    assert_eq!(shown.params["token"], "(secret)");
    // A scheduled tick has no one to give values: the defaults.
    h.run_clock_for(60 * SECOND);
    let ticks = h.runs_of("tick");
    assert!(!ticks.is_empty());
    assert!(ticks.iter().all(|r| r.params == values(&[("depth", "2")])));
    // A job that is scheduled cannot have a required parameter, from a file or not.
    let file = "[jobs.bad]\ncommand = \"x\"\nevery = \"1m\"\nparams.who = { type = \"string\", required = true }\n";
    let err = jobfile::parse(file).unwrap_err().to_string();
    assert!(
        err.contains("a scheduled run has no one to give it"),
        "{err}"
    );
    let mut bad = jobfile::parse("[jobs.bad]\ncommand = \"x\"\nevery = \"1m\"\n").unwrap();
    bad[0].params.insert(
        "who".into(),
        jobcast_protocol::params::ParamSpec {
            kind: jobcast_protocol::params::ParamType::String,
            choices: vec![],
            default: None,
            required: true,
            description: None,
            secret: false,
        },
    );
    let Reply::Error { message, .. } = h.admin(AdminRequest::ApplyJobs { jobs: bad }) else {
        panic!("applied")
    };
    assert!(
        message.contains("a scheduled run has no one to give it"),
        "{message}"
    );
}

#[test]
fn retries_keep_their_values_and_chains_pass_those_their_next_job_declares() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml(
        "[jobs.load]\ncommand = \"x\"\nretries = 1\nretry_backoff = \"1s\"\nchildren = [\"report\"]\n\
         params.day = { type = \"string\", default = \"today\" }\n\
         params.size = { type = \"integer\", default = \"1\" }\n\
         [jobs.report]\ncommand = \"x\"\n\
         params.day = { type = \"string\", default = \"never\" }\n\
         params.format = { type = \"choice\", choices = [\"csv\", \"pdf\"], default = \"pdf\" }\n",
    );
    let Reply::Enqueued { run } =
        enqueue_with(&mut h, "load", &[("day", "2026-11-25"), ("size", "9")])
    else {
        panic!()
    };
    h.claim("w1", 1);
    h.start_and_finish("w1", &run.id, 1);
    // The automatic retry, once its back-off is over, runs with the same values.
    h.run_clock_for(2 * SECOND);
    let attempts = h.runs_of("load");
    assert_eq!(attempts.len(), 2);
    let retry = &attempts[1];
    assert_eq!(
        retry.params,
        values(&[("day", "2026-11-25"), ("size", "9")])
    );
    let granted = h.claim("w1", 1);
    assert_eq!(granted, std::slice::from_ref(&retry.id));
    h.start_and_finish("w1", &retry.id, 0);
    // The chain's next run gets `day` (declared by both), its own default for the rest.
    let reports = h.runs_of("report");
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].params,
        values(&[("day", "2026-11-25"), ("format", "pdf")])
    );
    // A retry by hand keeps them too.
    let Reply::Enqueued { run: again } = h.admin(AdminRequest::Retry {
        run: retry.id.clone(),
    }) else {
        panic!()
    };
    assert_eq!(
        h.stored(&again.id).params,
        values(&[("day", "2026-11-25"), ("size", "9")])
    );
}

#[test]
fn retries_and_chained_runs_are_made_without_reading_the_store() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml("[jobs.flaky]\ncommand = \"x\"\nretries = 1\nretry_backoff = \"1s\"\nchildren = [{ job = \"cleanup\", on_error = true }]\n[jobs.cleanup]\ncommand = \"x\"");
    let first = h.enqueue("flaky");
    h.claim("w1", 1);
    let reads = run_reads(&h);
    h.start_and_finish("w1", &first, 1);
    h.run_clock_for(SECOND);
    let retry = h.claim("w1", 1);
    assert_eq!(retry.len(), 1, "the retry is queued");
    h.start_and_finish("w1", &retry[0], 1);
    assert_eq!(h.runs_of("cleanup").len(), 1, "the chain followed");
    assert_eq!(
        run_reads(&h),
        reads,
        "making a retry or a chained run read the store on the loop"
    );
}

#[test]
fn an_operators_retry_that_fails_gets_its_own_automatic_retry() {
    let mut h = aligned();
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml("[jobs.flaky]\ncommand = \"x\"\nretries = 2\nretry_backoff = \"1s\"");
    let first = h.enqueue("flaky");
    h.claim("w1", 1);
    h.start_and_finish("w1", &first, 1);
    h.run_clock_for(SECOND);
    let automatic = h.claim("w1", 1);
    let Reply::Enqueued { .. } = h.admin(AdminRequest::Retry { run: first.clone() }) else {
        panic!("retry refused")
    };
    // Both are attempt 2 of the first run; each failing is retried once more.
    let by_hand = h.claim("w1", 1);
    assert_eq!(by_hand.len(), 1);
    h.start_and_finish("w1", &automatic[0], 1);
    h.start_and_finish("w1", &by_hand[0], 1);
    h.run_clock_for(SECOND);
    let thirds = h.claim("w1", 4);
    assert_eq!(thirds.len(), 2, "one third attempt after each second one");
    for id in thirds {
        assert_eq!(h.stored(&id).attempt, 3);
    }
}

#[test]
fn alerts_are_named_acknowledged_and_kept_in_a_history_across_a_restart() {
    let mut h = aligned();
    h.apply_toml("[jobs.nightly]\ncommand = \"x\"\nevery = \"1m\"\nlate_after = \"30s\"");
    h.run_clock_for(91 * SECOND);
    let alerts = |h: &mut Harness| match h.admin(AdminRequest::Alerts {
        before: None,
        limit: 100,
    }) {
        Reply::Alerts { current, history } => (current, history),
        other => panic!("{other:?}"),
    };
    let (current, history) = alerts(&mut h);
    let ids = |ids: Vec<&str>| ids.into_iter().map(String::from).collect::<BTreeSet<_>>();
    let expected = ids(vec![
        "late:nightly",
        "never_run:nightly",
        "no_worker:default",
    ]);
    assert_eq!(
        current
            .iter()
            .map(|a| a.id.clone())
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(
        history
            .iter()
            .map(|r| r.id.clone())
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert!(history.iter().all(|r| r.cleared_ms.is_none()));

    // Seen by an operator: still standing, marked.
    let ack = |h: &mut Harness, id: &str| h.admin(AdminRequest::AckAlert { id: id.into() });
    assert_eq!(ack(&mut h, "no_worker:default"), Reply::Ack);
    let Reply::Error { code, .. } = ack(&mut h, "no_worker:elsewhere") else {
        panic!("an unknown alert was acknowledged")
    };
    assert_eq!(code, ErrorCode::NotFound);
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    let acked = |alerts: &[jobcast_protocol::Alert]| {
        alerts
            .iter()
            .find(|a| a.id == "no_worker:default")
            .and_then(|a| a.acknowledged.clone())
            .map(|a| a.by)
    };
    assert_eq!(acked(&status.alerts).as_deref(), Some("key admin"));

    // A restart: the same alerts stand, not notified again, the acknowledgement kept,
    // "no worker" held open through the workers' grace.
    let at = h.now;
    let store = h.core.into_store();
    let mut h = Harness::started_at(store, patient(), at);
    let notes = h.run_clock_for(15 * SECOND);
    assert!(
        notes.iter().all(
            |n| ![AlertKind::Late, AlertKind::NeverRun, AlertKind::NoWorker].contains(&n.kind)
        ),
        "{notes:?}"
    );
    let (current, history) = alerts(&mut h);
    assert_eq!(acked(&current).as_deref(), Some("key admin"));
    assert_eq!(history.len(), 3, "no new records: {history:?}");

    // A worker runs the job: every alert clears, and its record says when.
    h.register("w1", 4, &["default"], &[]);
    for run in h.claim("w1", 4) {
        h.start_and_finish("w1", &run, 0);
    }
    h.run_clock_for(2 * SECOND);
    let (current, history) = alerts(&mut h);
    assert!(current.is_empty(), "{current:?}");
    assert!(
        history.iter().all(|r| r.cleared_ms.is_some()),
        "{history:?}"
    );
    assert_eq!(
        history
            .iter()
            .find(|r| r.id == "no_worker:default")
            .and_then(|r| r.acknowledged.as_ref())
            .map(|a| a.by.as_str()),
        Some("key admin")
    );
}

#[test]
fn upcoming_fires_merge_every_active_jobs_schedule_soonest_first() {
    let mut h = aligned();
    h.apply_toml(
        "[jobs.minute]\ncommand = \"x\"\nevery = \"1m\"\n\
         [jobs.ninety]\ncommand = \"x\"\nevery = \"90s\"\nteam = \"data\"\n\
         [jobs.off]\ncommand = \"x\"\nevery = \"10s\"\nenabled = false\n",
    );
    let upcoming = |h: &mut Harness, scope: &crate::Scope| {
        let mut out = Outbox::default();
        let id = h.next_id;
        h.next_id += 1;
        h.core
            .handle_api(
                "token t",
                id,
                AdminRequest::Upcoming { limit: 5 },
                scope,
                h.now,
                &mut out,
            )
            .unwrap();
        match out
            .replies
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.reply)
        {
            Some(Reply::Upcoming { fires }) => fires
                .into_iter()
                .map(|f| (f.job, (f.at_ms - h.now_ms()) / 1_000))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    // What each job's own next fires say, merged.
    let fires_of = |h: &mut Harness, job: &str| match h.admin(AdminRequest::NextFires {
        job: job.into(),
        count: 5,
    }) {
        Reply::NextFires { times_ms, .. } => times_ms
            .into_iter()
            .map(|t| (job.to_string(), (t - h.now_ms()) / 1_000))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let mut merged = fires_of(&mut h, "minute");
    merged.extend(fires_of(&mut h, "ninety"));
    merged.sort_by_key(|(job, s)| (*s, job.clone()));
    merged.truncate(5);
    let all = upcoming(&mut h, &crate::Scope::all());
    assert_eq!(all, merged);
    assert_eq!(
        all.iter()
            .filter(|(job, _)| job == "minute")
            .map(|(_, s)| *s)
            .take(2)
            .collect::<Vec<_>>(),
        vec![60, 120]
    );
    // A team sees its own jobs' fires only.
    let data = crate::Scope::teams(["data".to_string()]);
    assert_eq!(upcoming(&mut h, &data), fires_of(&mut h, "ninety"));
}
