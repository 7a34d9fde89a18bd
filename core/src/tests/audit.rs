//! The audit log: what operators changed, by whom and when; kept across restarts.

use super::*;
use crate::Scope;
use jobcast_protocol::EnableTarget;

fn audit(h: &mut Harness) -> Vec<jobcast_protocol::AuditEntry> {
    match h.admin(AdminRequest::Audit {
        before: None,
        limit: 100,
    }) {
        Reply::Audit { entries } => entries,
        other => panic!("no audit log: {other:?}"),
    }
}

fn as_token(h: &mut Harness, name: &str, scope: &Scope, request: AdminRequest) -> Reply {
    let mut out = Outbox::default();
    let id = h.next_id;
    h.next_id += 1;
    h.core
        .handle_api(
            &format!("token {name}"),
            id,
            request,
            scope,
            h.now,
            &mut out,
        )
        .unwrap();
    out.replies
        .into_iter()
        .find(|r| r.id == id)
        .map(|r| r.reply)
        .expect("an answer")
}

#[test]
fn changes_are_recorded_with_who_made_them_and_reads_and_refusals_are_not() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let queued = h.enqueue("hello");
    let running = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &queued);
    h.admin(AdminRequest::Kill {
        selectors: vec![queued.clone(), running.clone()],
    });
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Pool("default".into()),
        enabled: false,
    });
    as_token(
        &mut h,
        "alice",
        &Scope::all(),
        AdminRequest::Drain {
            worker: "w1".into(),
        },
    );
    // Reads and refused requests change nothing and are not recorded.
    h.admin(AdminRequest::Status);
    h.admin(AdminRequest::Retry {
        run: "nosuchrun".into(),
    });
    let entries = audit(&mut h);
    let lines: Vec<(u64, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.seq,
                e.actor.as_str(),
                e.action.as_str(),
                e.target.as_str(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (4, "token alice", "drain", "worker w1"),
            (3, "key admin", "disable", "pool default"),
            (
                2,
                "key admin",
                "kill",
                format!("{queued} {running}").as_str()
            ),
            // The harness's jobs.
            (1, "key admin", "apply_jobs", "hello gpu-job"),
        ]
    );
    assert_eq!(
        entries[2].outcome,
        format!("killing {queued} on w1; cancelled {running}")
    );
    assert_eq!(entries[3].outcome, "2 created, 0 updated, 0 unchanged");
    assert_eq!(entries[0].at_ms, h.now / 1_000);
    // Kept across a restart, and numbered on from there.
    let store = h.core.into_store();
    let mut h = Harness::started_at(store, CoreConfig::default(), T0 + 1_000_000);
    h.admin(AdminRequest::SetEnabled {
        target: EnableTarget::Pool("default".into()),
        enabled: true,
    });
    let after = audit(&mut h);
    // (The restarted harness applies its jobs again: unchanged, and recorded.)
    assert_eq!(after.len(), 6);
    assert_eq!((after[0].seq, after[0].action.as_str()), (6, "enable"));
    assert_eq!(after[1].outcome, "0 created, 0 updated, 2 unchanged");
    assert_eq!(after[2..], entries[..]);
}

#[test]
fn a_team_reads_only_what_callers_of_its_teams_changed() {
    let mut h = Harness::new();
    let data = Scope::teams(["data".to_string()]);
    let mut spec = job("ours", "default");
    spec.team = Some("data".into());
    h.admin(AdminRequest::ApplyJobs { jobs: vec![spec] });
    as_token(
        &mut h,
        "d",
        &data,
        AdminRequest::SetEnabled {
            target: EnableTarget::Job("ours".into()),
            enabled: false,
        },
    );
    let Reply::Audit { entries } = as_token(
        &mut h,
        "d",
        &data,
        AdminRequest::Audit {
            before: None,
            limit: 10,
        },
    ) else {
        panic!("no audit log")
    };
    let seen: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        seen,
        vec!["disable"],
        "the admin's apply is not the team's to see"
    );
    assert_eq!(entries[0].teams, vec!["data".to_string()]);
    assert_eq!(
        audit(&mut h).len(),
        3,
        "an unlimited caller sees all (the harness's apply too)"
    );
}
