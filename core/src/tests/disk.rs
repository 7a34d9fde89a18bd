//! Free space under the reserve: no new work, work already out finishes.

use super::*;
use crate::{DiskChange, LowDisk};
use jobcast_protocol::{jobfile, AlertKind};

const MIB: u64 = 1 << 20;
const RESERVE: u64 = 64 * MIB;

fn refusal(reply: Reply) -> (ErrorCode, String) {
    match reply {
        Reply::Error { code, message } => (code, message),
        other => panic!("not refused: {other:?}"),
    }
}

fn alerts(h: &mut Harness) -> Vec<jobcast_protocol::Alert> {
    match h.admin(AdminRequest::Status) {
        Reply::Status(status) => status.alerts,
        other => panic!("status: {other:?}"),
    }
}

#[test]
fn under_the_reserve_enqueues_and_retries_are_refused_and_nothing_is_stored() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let first = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &first);
    h.finish("w1", &first, Outcome::Exited { code: 1 });
    let stored = h.core.store().run_count().unwrap();

    let change = h.core.note_free_space(10 * MIB, RESERVE);
    assert_eq!(
        change,
        DiskChange::BecameLow(LowDisk {
            free_bytes: 10 * MIB,
            reserve_bytes: RESERVE
        })
    );
    let (code, message) = refusal(h.admin(AdminRequest::Enqueue {
        job: "hello".into(),
        key: None,
        params: Default::default(),
        priority: None,
    }));
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(
        message,
        "the broker's data directory has 10.0 MiB free, under its reserve of 64.0 MiB \
         (min_free_bytes): it takes no new work until space is freed"
    );
    let (code, _) = refusal(h.admin(AdminRequest::Retry { run: first.clone() }));
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(h.core.store().run_count().unwrap(), stored);
    // Reads are answered as usual.
    assert!(matches!(
        h.admin(AdminRequest::ListRuns(RunFilter::default())),
        Reply::Runs { .. }
    ));
}

#[test]
fn queued_runs_wait_and_runs_already_out_finish_until_space_returns() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let out_already = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![out_already.clone()]);
    let waiting = h.enqueue("hello");

    h.core.note_free_space(MIB, RESERVE);
    assert!(h.claim("w1", 2).is_empty(), "nothing new starts");
    assert_eq!(h.start("w1", &out_already), Reply::Ack);
    h.finish("w1", &out_already, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&out_already), RunState::Succeeded);
    assert_eq!(h.state(&waiting), RunState::Queued);

    assert_eq!(
        h.core.note_free_space(RESERVE * 2, RESERVE),
        DiskChange::Recovered {
            free_bytes: RESERVE * 2
        }
    );
    assert_eq!(h.claim("w1", 2), vec![waiting]);
}

#[test]
fn a_waiting_claim_gets_the_queued_runs_as_soon_as_space_returns() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    h.core.note_free_space(MIB, RESERVE);
    let (id, out) = h.waiting_claim("w1", 1, 30_000);
    assert!(out.replies.is_empty(), "held, not answered");
    h.core.note_free_space(RESERVE * 2, RESERVE);
    let out = h.tick();
    assert_eq!(grants_for(&out, "w1"), vec![(id, vec![run])]);
}

#[test]
fn the_reserve_is_left_only_with_a_margin_so_a_hovering_disk_does_not_flip_it() {
    let mut h = Harness::new();
    assert_eq!(
        h.core.note_free_space(RESERVE, RESERVE),
        DiskChange::Unchanged,
        "at the reserve is enough"
    );
    assert!(matches!(
        h.core.note_free_space(RESERVE - 1, RESERVE),
        DiskChange::BecameLow(_)
    ));
    assert_eq!(
        h.core.note_free_space(RESERVE + MIB, RESERVE),
        DiskChange::Unchanged
    );
    assert!(h.core.low_disk().is_some());
    assert_eq!(
        h.core.note_free_space(RESERVE + RESERVE / 4, RESERVE),
        DiskChange::Recovered {
            free_bytes: RESERVE + RESERVE / 4
        }
    );
    // A reserve of 0 turns the check off.
    assert_eq!(h.core.note_free_space(0, 0), DiskChange::Unchanged);
    assert!(h.core.low_disk().is_none());
}

#[test]
fn scheduled_ticks_are_held_then_judged_by_the_misfire_policy() {
    let mut h = Harness::new();
    let jobs = jobfile::parse(
        "[jobs.often]\ncommand = \"true\"\nevery = \"1m\"\nmisfire = \"skip\"\noverlap = \"allow\"\n",
    )
    .unwrap();
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs { jobs }),
        Reply::Applied { .. }
    ));
    h.core.note_free_space(MIB, RESERVE);
    let runs_before = h.core.store().run_count().unwrap();
    // Ten minutes of ticks come due while space is short.
    for _ in 0..600 {
        h.advance_ms(1_000);
        h.tick();
        // Held ticks do not make the broker spin: its next wake-up is ahead.
        assert!(h.core.next_wakeup_us() > h.now);
    }
    assert_eq!(h.core.store().run_count().unwrap(), runs_before);

    h.advance_ms(500);
    h.core.note_free_space(RESERVE * 2, RESERVE);
    h.tick();
    // The latest tick is on time; the nine before it are past the misfire grace and,
    // with `misfire = "skip"`, skipped.
    let fired = h.core.store().run_count().unwrap() - runs_before;
    assert_eq!(fired, 1);
    let states = h.core.store().job_states().unwrap();
    let often = states.iter().find(|(job, _)| job == "often").unwrap();
    assert_eq!(often.1.skipped_ticks, 9);
}

#[test]
fn a_low_disk_is_a_standing_alert_notified_once() {
    let mut h = Harness::new();
    h.core.note_free_space(MIB, RESERVE);
    let out = h.tick();
    let notified: Vec<_> = out
        .notifications
        .iter()
        .filter(|n| n.kind == AlertKind::DiskLow)
        .collect();
    assert_eq!(notified.len(), 1);
    assert!(notified[0].text.contains("under its reserve"));
    let standing = alerts(&mut h);
    assert_eq!(standing.len(), 1);
    assert_eq!(standing[0].kind, AlertKind::DiskLow);
    let since = standing[0].since_ms;

    // Still low a heartbeat later: the same alert, not notified again.
    h.advance_ms(2_000);
    h.core.note_free_space(2 * MIB, RESERVE);
    let out = h.tick();
    assert!(out.notifications.is_empty());
    assert_eq!(alerts(&mut h)[0].since_ms, since);

    h.core.note_free_space(RESERVE * 2, RESERVE);
    h.advance_ms(2_000);
    h.tick();
    assert!(alerts(&mut h).is_empty());
}
