//! `ListRuns`: limits and filters.

use super::*;

#[test]
fn a_listing_names_its_limit_within_the_maximum_or_gets_the_default() {
    let mut h = Harness::new();
    for _ in 0..60 {
        h.enqueue("hello");
    }
    let listed = |h: &mut Harness, limit| match h.admin(AdminRequest::ListRuns(RunFilter {
        limit,
        ..Default::default()
    })) {
        Reply::Runs { runs, .. } => Ok(runs.len()),
        Reply::Error { code, message } => Err((code, message)),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed(&mut h, 0), Ok(50));
    assert_eq!(listed(&mut h, 7), Ok(7));
    assert_eq!(listed(&mut h, MAX_LIST), Ok(60));
    let Err((code, message)) = listed(&mut h, MAX_LIST + 1) else {
        panic!("a limit over the maximum was not refused")
    };
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("10000"), "{message}");
}

/// The ids a listing names, and where it says to go on.
fn listed(h: &mut Harness, filter: RunFilter) -> (Vec<String>, Option<u64>) {
    match h.admin(AdminRequest::ListRuns(filter)) {
        Reply::Runs {
            runs,
            resume_before,
            ..
        } => (runs.into_iter().map(|r| r.id).collect(), resume_before),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_whole_run_id_is_found_at_once_however_many_runs_came_after_it() {
    let mut h = Harness::new();
    let old = h.enqueue("hello");
    // More runs after it than a listing looks at.
    let spec = job("hello", "default");
    for seq in 0..crate::store::LISTING_SCAN as u64 + 10 {
        let run = RunRecord::queued(
            format!("{:016x}", seq + 1),
            1_000 + seq,
            spec.clone(),
            0,
            "filler",
        );
        h.core.store_mut().create_run(&run).unwrap();
    }
    let search = |h: &mut Harness, text: &str, state: Option<RunState>| {
        listed(
            h,
            RunFilter {
                text: Some(text.to_string()),
                state,
                limit: 10,
                ..Default::default()
            },
        )
    };
    assert_eq!(search(&mut h, &old, None), (vec![old.clone()], None));
    assert_eq!(
        search(&mut h, &old.to_uppercase(), Some(RunState::Queued)),
        (vec![old.clone()], None),
        "in any case, and with filters it passes"
    );
    assert_eq!(
        search(&mut h, &old, Some(RunState::Failed)),
        (vec![], None),
        "a filter it does not pass: nothing, and nowhere to go on"
    );
    // Part of an id is a text like any other: the walk stops where listings stop.
    let (found, resume) = search(&mut h, &old[..12], None);
    assert!(found.is_empty() && resume.is_some(), "{found:?} {resume:?}");
}

#[test]
fn a_search_in_output_reads_logs_within_a_budget_and_says_where_to_go_on() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let mut runs = Vec::new();
    for i in 0..5 {
        let run = h.enqueue("hello");
        h.claim("w1", 1);
        h.start("w1", &run);
        // The word split across two chunks in one run, whole in another.
        let (first, second): (&[u8], &[u8]) = match i {
            1 => (b"all is fi", b"ne, then ERR"),
            2 => (b"an err", b"or: disk full"),
            4 => (b"Error: disk", b" full"),
            _ => (b"quiet", b""),
        };
        for (offset, data) in [(0u64, first), (first.len() as u64, second)] {
            if !data.is_empty() {
                h.worker(
                    "w1",
                    WorkerRequest::LogChunk {
                        run_id: run.clone(),
                        offset,
                        data: data.to_vec(),
                    },
                );
            }
        }
        h.finish("w1", &run, Outcome::Exited { code: 0 });
        runs.push(run);
    }
    let search = |h: &mut Harness, output: &str, limit: u32| {
        listed(
            h,
            RunFilter {
                output: Some(output.to_string()),
                limit,
                ..Default::default()
            },
        )
    };
    assert_eq!(
        search(&mut h, "error: disk full", 10),
        (vec![runs[4].clone(), runs[2].clone()], None),
        "in any case, and across chunks"
    );
    assert_eq!(search(&mut h, "nowhere", 10), (vec![], None));
    assert_eq!(search(&mut h, "DISK", 1), (vec![runs[4].clone()], None));
    let Reply::Error { code, .. } = h.admin(AdminRequest::ListRuns(RunFilter {
        output: Some("x".repeat(201)),
        ..Default::default()
    })) else {
        panic!("a long search was not refused")
    };
    assert_eq!(code, ErrorCode::BadRequest);
}

#[test]
fn a_search_in_output_stops_after_its_budget_of_runs() {
    let mut h = Harness::new();
    let spec = job("hello", "default");
    let n = crate::store::OUTPUT_SCAN_RUNS as u64 + 5;
    for seq in 1..=n {
        let run = RunRecord::queued(format!("{seq:016x}"), seq, spec.clone(), 0, "filler");
        h.core.store_mut().create_run(&run).unwrap();
    }
    let Reply::Runs {
        runs,
        resume_before,
        ..
    } = h.admin(AdminRequest::ListRuns(RunFilter {
        output: Some("anything".into()),
        limit: 10,
        ..Default::default()
    }))
    else {
        panic!("no listing")
    };
    assert!(runs.is_empty());
    assert_eq!(
        resume_before,
        Some(n - crate::store::OUTPUT_SCAN_RUNS as u64 + 1)
    );
}

#[test]
fn a_listing_filtered_by_state_at_most_says_how_many_match_in_all() {
    let mut h = Harness::new();
    for _ in 0..7 {
        h.enqueue("hello");
    }
    let total = |h: &mut Harness, filter: RunFilter| match h.admin(AdminRequest::ListRuns(filter)) {
        Reply::Runs { runs, total, .. } => (runs.len(), total),
        other => panic!("{other:?}"),
    };
    let page = |limit| RunFilter {
        limit,
        ..Default::default()
    };
    assert_eq!(total(&mut h, page(3)), (3, Some(7)));
    assert_eq!(
        total(
            &mut h,
            RunFilter {
                state: Some(RunState::Queued),
                ..page(3)
            }
        ),
        (3, Some(7))
    );
    assert_eq!(
        total(
            &mut h,
            RunFilter {
                state: Some(RunState::Failed),
                ..page(3)
            }
        ),
        (0, Some(0))
    );
    assert_eq!(
        total(
            &mut h,
            RunFilter {
                job: Some("hello".into()),
                ..page(3)
            }
        ),
        (3, None),
        "not known without looking"
    );
}
