//! Routing: who may send what, refusals, restarts, the random source, API calls.

use super::*;

#[test]
fn state_survives_a_restart_of_the_core() {
    let mut store = MemoryStore::default();
    let (queued, running);
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.register("w1", 1, &["default"], &[]);
        running = h.enqueue("hello");
        queued = h.enqueue("hello");
        h.claim("w1", 1);
        h.start("w1", &running);
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    let mut h = Harness::with_store(std::mem::take(&mut store));
    assert_eq!(h.state(&queued), RunState::Queued);
    assert_eq!(h.state(&running), RunState::Running);
    // the worker comes back still running its run: it keeps it
    h.register("w1", 1, &["default"], &[&running]);
    assert_eq!(h.state(&running), RunState::Running);
    h.finish("w1", &running, Outcome::Exited { code: 0 });
    assert_eq!(h.claim("w1", 1), vec![queued]);
    // new runs get new sequence numbers
    let later = h.enqueue("hello");
    assert!(h.core.store().run(&later).unwrap().unwrap().seq > 2);
}

#[test]
fn workers_and_admin_cannot_use_each_others_requests() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    assert!(matches!(
        h.send(
            "w1",
            AdminRequest::Enqueue {
                job: "hello".into(),
                key: None,
                params: Default::default(),
                priority: None,
            }
        )
        .0,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    assert!(matches!(
        h.send(ADMIN, WorkerRequest::Claim { max: 1, wait_ms: 0 }).0,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
}

#[test]
fn bad_admin_input_gets_clear_errors() {
    let mut h = Harness::new();
    let Reply::Error { code, message } = h.admin(AdminRequest::Enqueue {
        job: "nope".into(),
        key: None,
        params: Default::default(),
        priority: None,
    }) else {
        panic!()
    };
    assert_eq!(code, ErrorCode::NotFound);
    assert!(
        message.contains("gpu-job") && message.contains("hello"),
        "{message}"
    );
    let mut bad = job("x", "default");
    bad.exec = Exec::Script("no shebang".into());
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs { jobs: vec![bad] }),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs {
            jobs: vec![job("d", "default"), job("d", "default")]
        }),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(matches!(
        h.admin(AdminRequest::Drain {
            worker: "ghost".into()
        }),
        Reply::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));
    // nothing stored was lost
    let Reply::Jobs { jobs } = h.admin(AdminRequest::ListJobs) else {
        panic!()
    };
    assert_eq!(jobs.len(), 2);
}

#[test]
fn run_ids_come_from_the_seeded_source_and_never_repeat() {
    let ids = |seed: u64| -> Vec<String> {
        let config = CoreConfig {
            seed: Some(seed),
            ..CoreConfig::default()
        };
        let mut h = Harness::with_config(MemoryStore::default(), config);
        (0..20).map(|_| h.enqueue("hello")).collect()
    };
    let first = ids(7);
    assert_eq!(first, ids(7), "the same seed names the same runs");
    assert_ne!(first, ids(8));
    let unique: BTreeSet<&String> = first.iter().collect();
    assert_eq!(unique.len(), first.len());
    assert!(first.iter().all(|id| id.len() == 16));
}

#[test]
fn an_api_call_is_answered_in_process_and_recorded_under_its_token() {
    let mut h = Harness::new();
    let mut out = Outbox::default();
    h.core
        .handle_api(
            "token alice",
            41,
            AdminRequest::Enqueue {
                job: "hello".into(),
                key: None,
                params: Default::default(),
                priority: None,
            },
            &crate::Scope::all(),
            h.now,
            &mut out,
        )
        .unwrap();
    let [reply] = &out.replies[..] else {
        panic!("{:?}", out.replies)
    };
    assert_eq!((reply.to.clone(), reply.id), (ReplyTo::Api, 41));
    let Reply::Enqueued { run } = &reply.reply else {
        panic!("{:?}", reply.reply)
    };
    assert_eq!(
        h.stored(&run.id).history[0].cause,
        "enqueued by token alice"
    );
    // The same request over a socket is sealed for the key that sent it.
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Enqueue {
            job: "hello".into(),
            key: None,
            params: Default::default(),
            priority: None,
        },
    );
    assert_eq!(
        out.replies[0].to,
        ReplyTo::peer(&ADMIN.as_bytes().to_vec(), ADMIN)
    );
}
