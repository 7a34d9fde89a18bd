//! `ApplyJobs`: what changed, and what is refused.

use super::*;

#[test]
fn apply_reports_created_updated_unchanged() {
    let mut h = Harness::new();
    let mut changed = job("hello", "default");
    changed.timeout_ms = Some(1_000);
    let reply = h.admin(AdminRequest::ApplyJobs {
        jobs: vec![changed, job("gpu-job", "gpu"), job("new", "default")],
    });
    assert_eq!(
        reply,
        Reply::Applied {
            created: vec!["new".into()],
            updated: vec!["hello".into()],
            unchanged: vec!["gpu-job".into()]
        }
    );
}
