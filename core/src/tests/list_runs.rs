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
