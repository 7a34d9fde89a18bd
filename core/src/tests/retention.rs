//! Retention: finished runs deleted by age (the job's or the broker's) and by count, in
//! bounded steps; `Prune` dry and not.

use super::*;
use crate::Retention;
use jobcast_protocol::RunFilter;

const HOUR_MS: u64 = 3_600_000;

fn keeping(retention: Retention) -> Harness {
    Harness::with_config(
        MemoryStore::default(),
        CoreConfig {
            retention,
            ..CoreConfig::default()
        },
    )
}

/// A run of `job` that ended (cancelled before it started).
fn ended_run(h: &mut Harness, job: &str) -> String {
    let id = h.enqueue(job);
    h.admin(AdminRequest::Kill {
        selectors: vec![id.clone()],
    });
    assert_eq!(h.state(&id), RunState::Cancelled);
    id
}

fn stored(h: &Harness) -> Vec<String> {
    h.core
        .store()
        .runs(&RunFilter {
            limit: 100_000,
            ..Default::default()
        })
        .unwrap()
        .runs
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn beyond_max_runs_the_oldest_finished_runs_go_with_their_logs() {
    let mut h = keeping(Retention {
        max_age_ms: None,
        max_runs: Some(5),
    });
    h.register("w1", 1, &["default"], &[]);
    let running = h.enqueue("hello");
    h.claim("w1", 1);
    h.worker(
        "w1",
        WorkerRequest::LogChunk {
            run_id: running.clone(),
            offset: 0,
            data: b"still going".to_vec(),
        },
    );
    let ended: Vec<String> = (0..7).map(|_| ended_run(&mut h, "hello")).collect();
    h.core
        .store_mut()
        .put_log_chunk(&ended[0], 0, b"old output")
        .unwrap();
    h.tick();
    let kept = stored(&h);
    assert_eq!(kept.len(), 5, "{kept:?}");
    // The unfinished run stays, however old; the oldest finished ones went.
    assert!(kept.contains(&running));
    for gone in &ended[..3] {
        assert!(!kept.contains(gone), "{gone} kept");
    }
    assert!(h.core.store().log_chunks(&ended[0]).unwrap().is_empty());
    assert_eq!(h.core.store().run_count().unwrap(), 5);
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    assert_eq!((status.total_runs, status.pruned_runs), (5, 3));
}

#[test]
fn a_jobs_own_retention_wins_over_the_brokers_age() {
    let mut h = keeping(Retention {
        max_age_ms: Some(24 * HOUR_MS),
        max_runs: None,
    });
    let mut short = job("short", "default");
    short.policy.retention_ms = Some(HOUR_MS);
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![job("hello", "default"), short],
    });
    let brief = ended_run(&mut h, "short");
    let normal = ended_run(&mut h, "hello");
    let newest = ended_run(&mut h, "hello");
    h.advance_ms(2 * HOUR_MS);
    h.tick();
    assert_eq!(stored(&h), [newest.clone(), normal.clone()], "{brief} went");
    h.advance_ms(23 * HOUR_MS);
    h.tick();
    // Past the broker's day; the newest run always stays (its number is the count's base).
    assert_eq!(stored(&h), [newest]);
}

#[test]
fn a_large_backlog_is_pruned_a_bounded_step_per_batch() {
    let mut h = keeping(Retention {
        max_age_ms: None,
        max_runs: Some(10),
    });
    for _ in 0..1_000 {
        ended_run(&mut h, "hello");
    }
    h.tick();
    let after_one = h.core.store().run_count().unwrap();
    assert!(
        after_one >= 1_000 - 64,
        "one step deleted {}",
        1_000 - after_one
    );
    assert!(after_one < 1_000, "nothing deleted");
    // Each step deleting something is followed by the next at once (no wait).
    assert_eq!(h.core.next_wakeup_us(), h.now);
    for _ in 0..20 {
        h.tick();
    }
    assert_eq!(h.core.store().run_count().unwrap(), 10);
}

#[test]
fn prune_dry_run_counts_and_prune_deletes() {
    let mut h = keeping(Retention {
        max_age_ms: Some(HOUR_MS),
        max_runs: None,
    });
    for _ in 0..4 {
        ended_run(&mut h, "hello");
    }
    h.advance_ms(2 * HOUR_MS);
    let dry = h.admin(AdminRequest::Prune { dry_run: true });
    assert_eq!(
        dry,
        Reply::Pruned {
            runs: 3,
            scanned: 4,
            complete: true
        }
    );
    assert_eq!(
        h.core.store().run_count().unwrap(),
        4,
        "a dry run deletes nothing"
    );
    let real = h.admin(AdminRequest::Prune { dry_run: false });
    assert!(matches!(real, Reply::Pruned { runs: 3, .. }), "{real:?}");
    assert_eq!(h.core.store().run_count().unwrap(), 1);
}

#[test]
fn retention_waits_while_the_store_is_behind_on_its_writes() {
    let mut h = keeping(Retention {
        max_age_ms: None,
        max_runs: Some(2),
    });
    for _ in 0..5 {
        ended_run(&mut h, "hello");
    }
    h.core.store_mut().backlogged = true;
    for _ in 0..10 {
        h.advance_ms(1_000);
        h.tick();
    }
    assert_eq!(stored(&h).len(), 5, "nothing deleted while backlogged");
    h.core.store_mut().backlogged = false;
    h.advance_ms(1_000);
    h.tick();
    assert_eq!(stored(&h).len(), 2);
}

#[test]
fn a_walk_over_runs_too_young_to_be_due_ends_at_the_first_one() {
    let mut h = keeping(Retention {
        max_age_ms: Some(HOUR_MS),
        max_runs: None,
    });
    // More than one step's worth, all younger than the hour.
    for _ in 0..200 {
        ended_run(&mut h, "hello");
    }
    h.tick();
    // The pass ended at once: the next look is the idle wait, not the next step's.
    assert_eq!(h.core.next_prune_ms(), h.now / 1_000 + 10_000);
    assert_eq!(stored(&h).len(), 200);
    // Once they are due, the same walk deletes them, a step at a time.
    h.advance_ms(2 * HOUR_MS);
    for _ in 0..10 {
        h.tick();
    }
    assert_eq!(stored(&h).len(), 1, "only the newest stays");
}

#[test]
fn a_count_already_within_max_runs_and_no_age_rule_looks_at_nothing() {
    let mut h = keeping(Retention {
        max_age_ms: None,
        max_runs: Some(1_000),
    });
    for _ in 0..100 {
        ended_run(&mut h, "hello");
    }
    h.tick();
    assert_eq!(h.core.next_prune_ms(), h.now / 1_000 + 10_000);
    assert_eq!(stored(&h).len(), 100);
}

/// A tick where the store walks away from the loop: an ask for the oldest runs is
/// answered from a copy of the store as the batch left it (a reader's snapshot), which
/// the next step takes. Returns the copy and the ask, if there was one, unanswered when
/// `answer` is false.
fn tick_walking_away(h: &mut Harness, answer: bool) -> Option<(MemoryStore, OldestAsked)> {
    let out = h.tick();
    let asked = out.oldest?;
    let snapshot = h.core.store().clone();
    if answer {
        let found = snapshot.found_oldest(asked.from_seq, asked.limit);
        h.core.oldest_runs_found(asked, Ok(found), h.now);
    }
    Some((snapshot, asked))
}

fn walking_away(retention: Retention) -> Harness {
    let mut h = keeping(retention);
    h.core.store_mut().walks_away = true;
    h
}

#[test]
fn a_walk_that_reads_away_from_the_loop_prunes_what_the_loop_would() {
    let retention = Retention {
        max_age_ms: None,
        max_runs: Some(10),
    };
    let mut on_loop = keeping(retention);
    let mut away = walking_away(retention);
    let mut with_output = Vec::new();
    for h in [&mut on_loop, &mut away] {
        let ended: Vec<String> = (0..300).map(|_| ended_run(h, "hello")).collect();
        for id in &ended[..3] {
            h.core
                .store_mut()
                .put_log_chunk(id, 0, b"old output")
                .unwrap();
            h.core.store_mut().put_log_chunk(id, 10, b"more").unwrap();
        }
        with_output.push(ended[..3].to_vec());
    }
    for _ in 0..50 {
        on_loop.tick();
    }
    let mut asks = 0;
    for _ in 0..50 {
        if let Some((_, asked)) = tick_walking_away(&mut away, true) {
            asks += 1;
            assert_eq!(asked.limit, crate::retention::STEP);
        }
    }
    assert!(asks >= 300 / crate::retention::STEP, "{asks} asks");
    assert_eq!(stored(&away), stored(&on_loop));
    for (h, with_output) in [&mut on_loop, &mut away].into_iter().zip(&with_output) {
        for id in with_output {
            assert!(!h.core.store().has_log_of(id), "{id}'s log was left behind");
        }
        let Reply::Status(status) = h.admin(AdminRequest::Status) else {
            panic!()
        };
        assert_eq!((status.total_runs, status.pruned_runs), (10, 290));
    }
}

#[test]
fn runs_a_walk_read_before_a_prune_deleted_them_are_not_counted_twice() {
    let mut h = walking_away(Retention {
        max_age_ms: None,
        max_runs: Some(10),
    });
    for _ in 0..100 {
        ended_run(&mut h, "hello");
    }
    let (snapshot, asked) = tick_walking_away(&mut h, false).expect("the walk asks");
    let Reply::Pruned { runs, .. } = h.admin(AdminRequest::Prune { dry_run: false }) else {
        panic!()
    };
    assert_eq!(runs, 90);
    // The answer comes after the prune: it is of an ask given up, and dropped.
    let stale = snapshot.found_oldest(asked.from_seq, asked.limit);
    h.core.oldest_runs_found(asked, Ok(stale), h.now);
    for _ in 0..10 {
        tick_walking_away(&mut h, true);
    }
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    assert_eq!((status.total_runs, status.pruned_runs), (10, 90));
}

#[test]
fn a_run_given_up_as_lost_goes_with_output_that_came_after_the_walk_read_it() {
    let mut h = keeping(Retention {
        max_age_ms: None,
        max_runs: Some(1),
    });
    h.register("w1", 4, &["default"], &[]);
    let lost = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &lost);
    h.advance_ms(18_000);
    h.tick();
    assert_eq!(h.state(&lost), RunState::Lost);
    let kept = ended_run(&mut h, "hello");
    h.core.store_mut().walks_away = true;
    // Past the walk's pause (the last pass found nothing).
    h.advance_ms(10_000);
    // The worker comes back still running it: its output is kept on the lost run.
    h.register("w1", 4, &["default"], &[&lost]);
    let (snapshot, asked) = tick_walking_away(&mut h, false).expect("the walk asks");
    assert!(!snapshot.has_log_of(&lost));
    h.worker(
        "w1",
        WorkerRequest::LogChunk {
            run_id: lost.clone(),
            offset: 0,
            data: b"late output\n".to_vec(),
        },
    );
    assert!(h.core.store().has_log_of(&lost));
    let found = snapshot.found_oldest(asked.from_seq, asked.limit);
    h.core.oldest_runs_found(asked, Ok(found), h.now);
    h.tick();
    assert_eq!(stored(&h), [kept]);
    assert!(
        !h.core.store().has_log_of(&lost),
        "the late output was left behind"
    );
}

#[test]
fn a_walk_whose_read_failed_asks_again() {
    let mut h = walking_away(Retention {
        max_age_ms: None,
        max_runs: Some(10),
    });
    for _ in 0..20 {
        ended_run(&mut h, "hello");
    }
    let (_, asked) = tick_walking_away(&mut h, false).expect("the walk asks");
    h.core.oldest_runs_found(
        asked,
        Err(crate::store::StoreError::Engine("unreadable".into())),
        h.now,
    );
    // Not at once: after a walk's pause.
    assert!(h.tick().oldest.is_none());
    assert!(h.core.next_wakeup_us() <= h.now + 1_000_000);
    h.advance_ms(1_000);
    let again = tick_walking_away(&mut h, true).expect("the walk asks again");
    assert!(again.1.number > asked.number);
    h.tick();
    assert_eq!(h.core.store().run_count().unwrap(), 10);
}

#[test]
fn an_answer_read_for_a_core_since_replaced_is_not_taken_by_the_next() {
    let mut first = walking_away(Retention {
        max_age_ms: None,
        max_runs: Some(10),
    });
    for _ in 0..100 {
        ended_run(&mut first, "hello");
    }
    let (snapshot, stale) = tick_walking_away(&mut first, false).expect("the walk asks");
    // The store goes away and comes back (or the broker is elected again): a new core on
    // it, whose walk asks too, while the old core's read is still on its way.
    let store = first.core.into_store();
    let mut next = Harness::started_at(
        store,
        CoreConfig {
            retention: Retention {
                max_age_ms: None,
                max_runs: Some(10),
            },
            ..CoreConfig::default()
        },
        first.now,
    );
    let (_, asked) = tick_walking_away(&mut next, false).expect("the new walk asks");
    assert_ne!(asked.number, stale.number);
    assert_eq!(asked.from_seq, stale.from_seq);
    let found = snapshot.found_oldest(stale.from_seq, stale.limit);
    next.core.oldest_runs_found(stale, Ok(found), next.now);
    next.tick();
    assert_eq!(
        next.core.store().run_count().unwrap(),
        100,
        "nothing deleted on the old read"
    );
}
