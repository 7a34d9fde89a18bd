//! `GetLog`: a run's stored log, whole (capped) or followed from an offset.

use super::*;

fn log(h: &mut Harness, run: &str, offset: Option<u64>) -> (Vec<u8>, u64) {
    match h.admin(AdminRequest::GetLog {
        run: run.into(),
        offset,
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
    }) else {
        panic!("a log for no run")
    };
    assert_eq!(code, ErrorCode::NotFound);
}
