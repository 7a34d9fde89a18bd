//! `SetEnabled` and `ListJobs`: jobs and pools switched off and on, as listings show them.

use super::*;
use jobcast_protocol::EnableTarget;

fn active(h: &mut Harness) -> Vec<(String, bool)> {
    match h.admin(AdminRequest::ListJobs) {
        Reply::Jobs { jobs } => jobs.into_iter().map(|j| (j.spec.name, j.active)).collect(),
        other => panic!("jobs: {other:?}"),
    }
}

fn set(h: &mut Harness, target: EnableTarget, enabled: bool) -> Reply {
    h.admin(AdminRequest::SetEnabled { target, enabled })
}

#[test]
fn jobs_and_pools_switch_off_and_on_and_listings_show_it() {
    let mut h = Harness::new();
    assert_eq!(
        active(&mut h),
        vec![("gpu-job".into(), true), ("hello".into(), true)]
    );
    assert_eq!(
        set(&mut h, EnableTarget::Job("hello".into()), false),
        Reply::Ack
    );
    assert_eq!(
        set(&mut h, EnableTarget::Pool("gpu".into()), false),
        Reply::Ack
    );
    assert_eq!(
        active(&mut h),
        vec![("gpu-job".into(), false), ("hello".into(), false)]
    );
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    assert_eq!(status.disabled_pools, vec!["gpu".to_string()]);
    set(&mut h, EnableTarget::Pool("gpu".into()), true);
    assert_eq!(
        active(&mut h),
        vec![("gpu-job".into(), true), ("hello".into(), false)]
    );
}

#[test]
fn a_disabled_pool_stays_so_across_a_restart_and_applying_a_job_sets_its_switch() {
    let mut h = Harness::new();
    set(&mut h, EnableTarget::Job("hello".into()), false);
    set(&mut h, EnableTarget::Pool("gpu".into()), false);
    let store = h.core.into_store();
    // The harness applies its jobs file again on start, which says `hello` is enabled:
    // the file is the truth for a job's switch; a pool's switch is the broker's own.
    let mut h = Harness::with_store(store);
    assert_eq!(
        active(&mut h),
        vec![("gpu-job".into(), false), ("hello".into(), true)]
    );
}

#[test]
fn unknown_jobs_and_invalid_pool_names_are_refused() {
    let mut h = Harness::new();
    let code = |reply: Reply| match reply {
        Reply::Error { code, .. } => code,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        code(set(&mut h, EnableTarget::Job("nope".into()), false)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(set(&mut h, EnableTarget::Pool("a/b".into()), false)),
        ErrorCode::BadRequest
    );
}
