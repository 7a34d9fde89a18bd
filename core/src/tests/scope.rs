//! Ownership: a caller limited to teams sees and acts on its teams' jobs and runs only.

use super::*;
use crate::Scope;
use jobcast_protocol::{Resolution, SeriesOf};

fn as_team(h: &mut Harness, scope: &Scope, request: AdminRequest) -> Reply {
    let mut out = Outbox::default();
    let id = h.next_id;
    h.next_id += 1;
    h.core
        .handle_api("token team", id, request, scope, h.now, &mut out)
        .unwrap();
    h.core.answer_reads(&mut out).unwrap();
    out.replies
        .into_iter()
        .find(|r| r.id == id)
        .map(|r| r.reply)
        .expect("an answer")
}

fn owned(name: &str, team: Option<&str>) -> jobcast_protocol::JobSpec {
    let mut spec = job(name, "default");
    spec.team = team.map(str::to_string);
    spec
}

fn refused(reply: Reply) -> (ErrorCode, String) {
    match reply {
        Reply::Error { code, message } => (code, message),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_team_sees_and_acts_on_its_own_jobs_and_runs_only() {
    let mut h = Harness::new();
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![
            owned("ours", Some("data")),
            owned("theirs", Some("web")),
            owned("nobodys", None),
        ],
    });
    h.register("w1", 4, &["default"], &[]);
    let our_run = h.enqueue("ours");
    let their_run = h.enqueue("theirs");
    h.claim("w1", 4);
    let data = Scope::teams(["data".to_string()]);

    // Listings: its jobs, its runs.
    let Reply::Jobs { jobs } = as_team(&mut h, &data, AdminRequest::ListJobs) else {
        panic!()
    };
    let names: Vec<&str> = jobs.iter().map(|j| j.spec.name.as_str()).collect();
    assert_eq!(names, ["ours"]);
    let Reply::Runs { runs, .. } = as_team(
        &mut h,
        &data,
        AdminRequest::ListRuns(jobcast_protocol::RunFilter {
            limit: 100,
            ..Default::default()
        }),
    ) else {
        panic!()
    };
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [our_run.as_str()]);

    // Another team's run and job answer as if they did not exist; no names leak.
    for request in [
        AdminRequest::Kill {
            selectors: vec![their_run.clone()],
        },
        AdminRequest::GetLog {
            run: their_run.clone(),
            offset: None,
            wait_ms: None,
        },
        AdminRequest::Kill {
            selectors: vec![their_run[..4].to_string()],
        },
    ] {
        let (code, message) = refused(as_team(&mut h, &data, request));
        assert_eq!(code, ErrorCode::NotFound);
        assert!(!message.contains("theirs"), "{message}");
    }
    let (code, message) = refused(as_team(
        &mut h,
        &data,
        AdminRequest::Enqueue {
            job: "theirs".into(),
            key: None,
            params: Default::default(),
            priority: None,
        },
    ));
    assert_eq!(code, ErrorCode::NotFound);
    assert_eq!(message, "no job named \"theirs\" (jobs: ours)");
    assert_eq!(h.state(&their_run), RunState::Assigned, "untouched");

    // What every team shares is not one team's to act on.
    for request in [
        AdminRequest::Drain {
            worker: "w1".into(),
        },
        AdminRequest::SetEnabled {
            target: jobcast_protocol::EnableTarget::Pool("default".into()),
            enabled: false,
        },
        AdminRequest::Backup {
            to: "/tmp/their-backup".into(),
        },
    ] {
        assert_eq!(
            refused(as_team(&mut h, &data, request)).0,
            ErrorCode::Forbidden
        );
    }

    // Its own run: it may act.
    assert!(matches!(
        as_team(
            &mut h,
            &data,
            AdminRequest::Kill {
                selectors: vec![our_run.clone()]
            }
        ),
        Reply::KillResult { .. }
    ));

    // The status counts its runs only, and shows no other team's run on a worker.
    let Reply::Status(status) = as_team(&mut h, &data, AdminRequest::Status) else {
        panic!()
    };
    assert_eq!(status.total_runs, 1);
    assert_eq!(status.jobs, 1);
    assert!(!status.active_by_job.contains_key("theirs"));
    assert!(status.workers[0].running.iter().all(|id| *id != their_run));
    // Unlimited callers see everything.
    let Reply::Status(all) = as_team(&mut h, &Scope::all(), AdminRequest::Status) else {
        panic!()
    };
    assert_eq!(all.total_runs, 2);
}

#[test]
fn a_team_sees_and_acknowledges_only_the_alerts_of_its_jobs_and_their_pools() {
    let mut h = Harness::new();
    let mut theirs = owned("theirs", Some("web"));
    theirs.pool = "gpu".into();
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![owned("ours", Some("data")), theirs],
    });
    h.enqueue("ours");
    h.enqueue("theirs");
    // Past the workers' grace after the start: both pools lack a worker.
    h.advance_ms(11_000);
    h.tick();
    let data = Scope::teams(["data".to_string()]);
    let ids = |reply: Reply| match reply {
        Reply::Alerts { current, history } => (
            current.into_iter().map(|a| a.id).collect::<Vec<_>>(),
            history.into_iter().map(|r| r.id).collect::<Vec<_>>(),
        ),
        Reply::Status(status) => (
            status.alerts.into_iter().map(|a| a.id).collect(),
            Vec::new(),
        ),
        other => panic!("{other:?}"),
    };
    let all = ids(h.admin(AdminRequest::Alerts {
        before: None,
        limit: 10,
    }));
    assert!(all.0.contains(&"no_worker:gpu".to_string()), "{all:?}");
    let asked = AdminRequest::Alerts {
        before: None,
        limit: 10,
    };
    assert_eq!(
        ids(as_team(&mut h, &data, asked)),
        (
            vec!["no_worker:default".to_string()],
            vec!["no_worker:default".to_string()]
        )
    );
    assert_eq!(
        ids(as_team(&mut h, &data, AdminRequest::Status)).0,
        vec!["no_worker:default".to_string()]
    );
    let (code, _) = refused(as_team(
        &mut h,
        &data,
        AdminRequest::AckAlert {
            id: "no_worker:gpu".into(),
        },
    ));
    assert_eq!(
        code,
        ErrorCode::NotFound,
        "another team's alert is not its to see"
    );
    let acked = as_team(
        &mut h,
        &data,
        AdminRequest::AckAlert {
            id: "no_worker:default".into(),
        },
    );
    assert_eq!(acked, Reply::Ack);
    // Of the workers, it sees those serving its jobs' pools.
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["gpu"], &[]);
    let Reply::Status(status) = as_team(&mut h, &data, AdminRequest::Status) else {
        panic!("no status")
    };
    let workers: Vec<&str> = status.workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(workers, vec!["w1"]);
}

#[test]
fn counts_over_time_are_answered_for_what_the_caller_may_see() {
    let mut h = Harness::new();
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![owned("ours", Some("data")), owned("theirs", Some("web"))],
    });
    h.register("w1", 2, &["default"], &[]);
    let ours = h.enqueue("ours");
    let theirs = h.enqueue("theirs");
    h.claim("w1", 2);
    h.start("w1", &ours);
    h.start("w1", &theirs);
    h.finish("w1", &ours, Outcome::Exited { code: 0 });
    h.finish("w1", &theirs, Outcome::Exited { code: 2 });
    let series = |reply: Reply| match reply {
        Reply::Series {
            step_ms, points, ..
        } => {
            assert_eq!(step_ms, 60_000);
            let last = points.last().cloned().unwrap_or_default();
            (points.len(), last.started, last.succeeded, last.failed)
        }
        other => panic!("{other:?}"),
    };
    let ask = |of: SeriesOf| AdminRequest::Series {
        of,
        resolution: Resolution::Minute,
        points: 60,
    };
    assert_eq!(series(h.admin(ask(SeriesOf::All))), (60, 2, 1, 1));
    assert_eq!(
        series(h.admin(ask(SeriesOf::Pool("default".into())))),
        (60, 2, 1, 1)
    );
    let data = Scope::teams(["data".to_string()]);
    assert_eq!(
        series(as_team(&mut h, &data, ask(SeriesOf::Job("ours".into())))),
        (60, 1, 1, 0)
    );
    for refused_ask in [
        SeriesOf::All,
        SeriesOf::Job("theirs".into()),
        SeriesOf::Pool("gpu".into()),
    ] {
        let (code, _) = refused(as_team(&mut h, &data, ask(refused_ask.clone())));
        assert!(
            matches!(code, ErrorCode::Forbidden | ErrorCode::NotFound),
            "{refused_ask:?}: {code:?}"
        );
    }
}
