//! `GetLog`: a run's stored log, whole (capped) or followed from an offset.

use super::*;

fn log(h: &mut Harness, run: &str, offset: Option<u64>) -> (Vec<u8>, u64) {
    match h.admin(AdminRequest::GetLog {
        run: run.into(),
        offset,
        wait_ms: None,
    }) {
        Reply::Log {
            data, next_offset, ..
        } => (data, next_offset),
        other => panic!("log: {other:?}"),
    }
}

#[test]
fn a_log_is_read_whole_or_followed_from_where_the_reader_stopped() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    for (offset, text) in [(0, "one\n"), (4, "two\n")] {
        h.worker(
            "w1",
            WorkerRequest::LogChunk {
                run_id: run.clone(),
                offset,
                data: text.as_bytes().to_vec(),
            },
        );
    }
    assert_eq!(log(&mut h, &run, None), (b"one\ntwo\n".to_vec(), 8));
    assert_eq!(log(&mut h, &run, Some(4)), (b"two\n".to_vec(), 8));
    // Following past the end waits for more: nothing, same offset.
    assert_eq!(log(&mut h, &run, Some(8)), (vec![], 8));
    // A unique prefix names the run.
    assert_eq!(log(&mut h, &run[..6], Some(0)).1, 8);
}

#[test]
fn following_across_a_cut_says_how_much_was_cut() {
    let chunks = vec![(0, b"head".to_vec()), (100, b"tail".to_vec())];
    let (data, next) = crate::admin::slice_from(&chunks, 0);
    assert_eq!(data, b"head\n[jobcast: 96 bytes cut]\ntail".to_vec());
    assert_eq!(next, 104);
}

#[test]
fn the_log_of_an_unknown_run_is_not_found() {
    let mut h = Harness::new();
    let Reply::Error { code, .. } = h.admin(AdminRequest::GetLog {
        run: "nothing-like-it".into(),
        offset: None,
        wait_ms: None,
    }) else {
        panic!("a log for no run")
    };
    assert_eq!(code, ErrorCode::NotFound);
}

/// Sends a read that may be held: its request id and what the request produced.
fn held_read(h: &mut Harness, run: &str, offset: u64, wait_ms: u64) -> (u64, Outbox) {
    let id = h.next_id;
    let request = AdminRequest::GetLog {
        run: run.into(),
        offset: Some(offset),
        wait_ms: Some(wait_ms),
    };
    let (_, out) = h.send(ADMIN, request);
    (id, out)
}

/// The answer to read `id` in `out`, if there is one: the run's state, the output, the
/// offset to ask for next, and whether it was answered as a wait asks.
fn answer(out: &Outbox, id: u64) -> Option<(RunState, Vec<u8>, u64, bool)> {
    out.replies
        .iter()
        .find(|r| r.id == id)
        .map(|r| match &r.reply {
            Reply::Log {
                run,
                data,
                next_offset,
                waited,
            } => (run.state, data.clone(), *next_offset, *waited),
            other => panic!("log: {other:?}"),
        })
}

fn chunk(h: &mut Harness, run: &str, offset: u64, text: &str) -> Outbox {
    let chunk = WorkerRequest::LogChunk {
        run_id: run.into(),
        offset,
        data: text.as_bytes().to_vec(),
    };
    h.send("w1", chunk).1
}

/// A tick, and the reads it asked for answered, as the server does once it is durable.
fn tick(h: &mut Harness) -> Outbox {
    let mut out = h.tick();
    h.core.answer_reads(&mut out).unwrap();
    out
}

fn running(h: &mut Harness) -> String {
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &run);
    run
}

#[test]
fn a_wait_for_the_end_is_answered_by_the_batch_that_ends_the_run_and_not_before() {
    let mut h = Harness::new();
    let run = running(&mut h);
    let (id, out) = held_read(&mut h, &run, u64::MAX, 10_000);
    assert_eq!(answer(&out, id), None);
    // Output does not answer a wait for the end.
    assert_eq!(answer(&chunk(&mut h, &run, 0, "one\n"), id), None);
    let out = h.finish("w1", &run, Outcome::Exited { code: 3 });
    let (state, data, _, waited) = answer(&out, id).expect("answered by the end");
    assert_eq!((state, data, waited), (RunState::Failed, vec![], true));
    // A wait for a run already ended is answered at once.
    let (again, out) = held_read(&mut h, &run, u64::MAX, 10_000);
    assert_eq!(answer(&out, again).map(|a| a.0), Some(RunState::Failed));
}

#[test]
fn a_follower_is_answered_by_the_first_output_past_its_offset() {
    let mut h = Harness::new();
    let run = running(&mut h);
    chunk(&mut h, &run, 0, "one\n");
    let (id, out) = held_read(&mut h, &run, 4, 10_000);
    assert_eq!(answer(&out, id), None);
    let out = chunk(&mut h, &run, 4, "two\n");
    assert_eq!(
        answer(&out, id),
        Some((RunState::Running, b"two\n".to_vec(), 8, true))
    );
    // With output past the offset already, answered at once.
    let (at_once, out) = held_read(&mut h, &run, 0, 10_000);
    assert_eq!(
        answer(&out, at_once),
        Some((RunState::Running, b"one\ntwo\n".to_vec(), 8, true))
    );
}

#[test]
fn a_held_read_is_answered_when_its_wait_runs_out_and_the_core_wakes_for_it() {
    let mut h = Harness::new();
    let run = running(&mut h);
    let (id, _) = held_read(&mut h, &run, u64::MAX, 1_000);
    assert!(h.core.next_wakeup_us() <= h.now + 1_000_000);
    h.advance_ms(999);
    let out = tick(&mut h);
    assert_eq!(answer(&out, id), None);
    h.advance_ms(1);
    let out = tick(&mut h);
    assert_eq!(
        answer(&out, id),
        Some((RunState::Running, vec![], u64::MAX, true))
    );
    // Answered once only.
    h.advance_ms(5_000);
    let out = tick(&mut h);
    assert_eq!(answer(&out, id), None);
}

#[test]
fn a_read_without_a_wait_is_never_held() {
    let mut h = Harness::new();
    let run = running(&mut h);
    let request = AdminRequest::GetLog {
        run: run.clone(),
        offset: Some(u64::MAX),
        wait_ms: None,
    };
    let Reply::Log { waited, data, .. } = h.admin(request) else {
        panic!("answered at once")
    };
    assert!(!waited);
    assert!(data.is_empty());
}

#[test]
fn held_reads_are_given_up_when_the_core_goes_and_are_answered_once() {
    let mut h = Harness::new();
    let run = running(&mut h);
    let (id, _) = held_read(&mut h, &run, u64::MAX, 10_000);
    let given_up = h.core.let_go_of_held_reads();
    assert_eq!(given_up.len(), 1);
    assert_eq!((sealed_for(&given_up[0].0), given_up[0].1), (ADMIN, id));
    // Given up: neither the run's end nor the wait's end answers it again.
    let out = h.finish("w1", &run, Outcome::Exited { code: 0 });
    assert_eq!(answer(&out, id), None);
    h.advance_ms(20_000);
    let out = tick(&mut h);
    assert_eq!(answer(&out, id), None);
    assert!(h.core.let_go_of_held_reads().is_empty());
}
