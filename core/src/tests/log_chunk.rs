//! `LogChunk`: stored logs within the cap.

use super::*;

#[test]
fn logs_are_stored_capped_with_head_and_tail() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]); // cap 4096
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    let data: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (i, chunk) in data.chunks(1000).enumerate() {
        h.worker(
            "w1",
            WorkerRequest::LogChunk {
                run_id: run.clone(),
                offset: (i * 1000) as u64,
                data: chunk.to_vec(),
            },
        );
    }
    // the store holds about the cap, not the whole output
    let stored = h.stored_log_bytes(&run);
    assert!(stored <= 4096 + 1000, "{stored}");
    let Reply::Log {
        data: log,
        next_offset,
        ..
    } = h.admin(AdminRequest::GetLog {
        run: run.clone(),
        offset: None,
        wait_ms: None,
    })
    else {
        panic!()
    };
    assert!(log.len() <= 4096);
    assert!(log.starts_with(&data[..logcap::head_cap(4096)]));
    assert!(log.ends_with(&data[data.len() - 1000..]));
    assert!(String::from_utf8_lossy(&log).contains("bytes cut]"));
    assert_eq!(next_offset, 100_000);
    // following from an offset that was cut says so
    let Reply::Log { data: tail, .. } = h.admin(AdminRequest::GetLog {
        run,
        offset: Some(2_000),
        wait_ms: None,
    }) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&tail).starts_with("\n[jobcast: "));
}

#[test]
fn the_broker_caps_stored_logs_whatever_the_worker_declares() {
    let mut h = Harness::with_config(
        MemoryStore::default(),
        CoreConfig {
            max_log_bytes: 4096,
            ..CoreConfig::default()
        },
    );
    // A worker that declares a terabyte of log per run.
    let reply = h.worker(
        "w1",
        WorkerRequest::Register(registration(&["default"], 1 << 40)),
    );
    assert!(matches!(reply, Reply::Registered { .. }), "{reply:?}");
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    for i in 0..100u64 {
        h.worker(
            "w1",
            WorkerRequest::LogChunk {
                run_id: run.clone(),
                offset: i * 1000,
                data: vec![b'x'; 1000],
            },
        );
    }
    let stored = h.stored_log_bytes(&run);
    assert!(stored <= 4096 + 1000, "stored {stored} bytes");
}

/// The log reads this store has served so far.
fn log_reads(h: &Harness) -> usize {
    h.core
        .store()
        .log_reads
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_started_runs_output_is_stored_without_reading_the_store() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &run);
    let before = log_reads(&h);
    for i in 0..20u64 {
        h.worker(
            "w1",
            WorkerRequest::LogChunk {
                run_id: run.clone(),
                offset: i * 1000,
                data: vec![b'x'; 1000],
            },
        );
    }
    assert_eq!(log_reads(&h), before, "a chunk read the store on the loop");
    assert!(h.stored_log_bytes(&run) <= 4096 + 1000);
}

#[test]
fn a_restarted_broker_keeps_a_running_runs_log_within_its_cap() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]); // cap 4096
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &run);
    let chunk = |i: u64| WorkerRequest::LogChunk {
        run_id: run.clone(),
        offset: i * 1000,
        data: vec![b'a' + i as u8; 1000],
    };
    for i in 0..8 {
        h.worker("w1", chunk(i));
    }
    let store = h.core.into_store();
    let mut h = Harness::started_at(store, CoreConfig::default(), T0 + 1_000_000);
    h.register("w1", 1, &["default"], &[&run]);
    assert_eq!(h.state(&run), RunState::Running);
    let reads_at_start = log_reads(&h);
    for i in 8..16 {
        h.worker("w1", chunk(i));
    }
    assert_eq!(
        log_reads(&h),
        reads_at_start,
        "a chunk read the store on the loop"
    );
    // The tail from before the restart was dropped as the new chunks rolled in.
    let stored = h.stored_log_bytes(&run);
    assert!(stored <= 4096 + 1000, "stored {stored} bytes");
    let chunks = h.core.store().log_chunks(&run).unwrap();
    assert_eq!(chunks.first().map(|c| c.0), Some(0), "the head is kept");
    assert_eq!(chunks.last().map(|c| c.0), Some(15_000));
}
