//! What a batch changed, for live views: noted only while one listens.

use super::*;

#[test]
fn changes_are_noted_only_while_a_live_view_listens() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    h.core.track_changes(false);
    let unseen = h.enqueue("hello");
    h.worker(
        "w1",
        WorkerRequest::LogChunk {
            run_id: unseen.clone(),
            offset: 0,
            data: b"out".to_vec(),
        },
    );
    let untracked = h.core.take_changes(h.now).unwrap();
    assert!(untracked.runs.is_empty() && untracked.logs.is_empty());
    assert!(untracked.changed_jobs.is_empty());
    // Taking them keeps the choice.
    let still = h.enqueue("hello");
    assert!(
        h.core.take_changes(h.now).unwrap().runs.is_empty(),
        "{still}"
    );
    h.core.track_changes(true);
    let seen = h.enqueue("hello");
    let tracked = h.core.take_changes(h.now).unwrap();
    let ids: Vec<&str> = tracked.runs.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&seen.as_str()), "{ids:?}");
    assert!(!ids.contains(&unseen.as_str()), "{ids:?}");
    // And clearing them too.
    h.core.clear_changes();
    h.enqueue("hello");
    assert_eq!(h.core.take_changes(h.now).unwrap().runs.len(), 1);
}
