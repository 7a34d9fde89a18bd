//! `Status`: counts, workers, refusals and connections as the broker sees them.

use super::*;

#[test]
fn status_counts_runs_by_state_workers_refusals_and_connections() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let running = h.enqueue("hello");
    h.claim("w1", 1);
    h.enqueue("hello");
    h.core.note_rejection("bad_mac");
    h.core.note_rejection("bad_mac");
    h.core.note_connection(true);
    h.core.note_connection(true);
    h.core.note_connection(false);
    h.advance_ms(1_500);
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!("no status")
    };
    assert_eq!(
        status.active,
        BTreeMap::from([("assigned".to_string(), 1), ("queued".to_string(), 1)])
    );
    assert_eq!(status.total_runs, 2);
    assert_eq!(status.jobs, 2);
    assert_eq!(status.uptime_ms, 1_500);
    assert_eq!(status.boot_id, h.core.boot_id());
    assert_eq!(status.workers.len(), 1);
    assert!(status.workers[0].online);
    assert_eq!(status.workers[0].running, vec![running]);
    assert_eq!(
        status.rejected,
        BTreeMap::from([("bad_mac".to_string(), 2)])
    );
    assert_eq!(
        status.connections,
        BTreeMap::from([
            ("open".to_string(), 1),
            ("opened".to_string(), 2),
            ("closed".to_string(), 1)
        ])
    );
}
