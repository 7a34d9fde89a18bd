//! `Ping` and `Pong`: answers collected until a deadline.

use super::*;

#[test]
fn ping_collects_answers_and_reports_the_silent() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Ping {
            worker: None,
            timeout_ms: 500,
        },
    );
    assert!(out.replies.is_empty(), "the reply waits for answers");
    let ping_id = out
        .events
        .iter()
        .find_map(|(_, e)| match e {
            Event::Ping { ping_id } => Some(*ping_id),
            _ => None,
        })
        .unwrap();
    assert!(out.events.iter().any(|(t, _)| t == &topic::worker("w2")));
    let info = WorkerInfo {
        version: "9.9".into(),
        hostname: "h".into(),
        pid: 1,
        concurrency: 1,
        pools: vec![],
        running: vec![],
        uptime_ms: 1,
        rss_bytes: 1,
        draining: false,
        containment: String::new(),
    };
    h.advance_ms(2);
    let (_, out) = h.send("w1", WorkerRequest::Pong { ping_id, info });
    assert!(
        out.replies.iter().all(|r| sealed_for(&r.to) == "w1"),
        "still waiting for w2"
    );
    h.advance_ms(600);
    let out = h.tick();
    let reply = out
        .replies
        .iter()
        .find(|r| sealed_for(&r.to) == ADMIN)
        .unwrap();
    let Reply::PingResult { workers } = &reply.reply else {
        panic!()
    };
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].worker, "w1");
    assert!(workers[0].rtt_us.unwrap() >= 2_000);
    assert_eq!(workers[0].info.as_ref().unwrap().version, "9.9");
    assert_eq!(workers[1].rtt_us, None);
}
