//! The contract every backend keeps, run on each of them.

use super::*;
use jobcast_protocol::{Exec, JobSpec, JobState, RunFilter, RunRecord, RunState};

/// Runs each contract test on a fresh store of every backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn sled() {
                    super::$name(SledStore::temporary().unwrap());
                }

                #[test]
                fn memory() {
                    super::$name(MemoryStore::default());
                }

                #[test]
                fn fjall() {
                    let dir = tempfile::tempdir().unwrap();
                    let engine = FjallEngine::open(dir.path(), 8 << 20).unwrap();
                    super::$name(KvStore::with_engine(engine).unwrap());
                }
            }
        )*
    };
}

on_every_backend!(
    runs_are_listed_newest_first_and_filtered,
    the_active_index_follows_the_state,
    run_ids_are_found_by_prefix,
    log_chunks_come_back_in_stream_order,
    listings_page_by_sequence_and_filter_by_time_job_and_worker,
    settings_workers_and_job_states_read_back,
    deleted_runs_take_their_id_and_log_with_them,
    a_listing_looks_at_a_bounded_number_of_runs_and_says_where_to_go_on,
    runs_linked_to_a_run_are_its_retries_and_the_runs_it_started,
    writes_are_read_back_before_and_after_they_are_flushed,
    the_oldest_runs_include_writes_not_yet_committed,
    runs_a_reader_found_are_deleted_with_their_logs,
);

/// PostgreSQL keeps the same contract: every test above on a fresh database of one
/// throwaway cluster (started by the test, stopped at its end).
#[test]
fn postgres() {
    use super::postgres::{PgSettings, PgStore};
    let Some(pg) = jobcast_test_postgres::TestPostgres::start() else {
        return;
    };
    let password = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(password.path(), jobcast_test_postgres::PASSWORD).unwrap();
    let mut databases = 0;
    let mut fresh = || {
        databases += 1;
        let url = pg.create_database(&format!("contract{databases}"));
        PgSettings::new(&url, Some(password.path()), None).unwrap()
    };
    type Contract = fn(PgStore);
    let tests: [(&str, Contract); 12] = [
        ("listed", runs_are_listed_newest_first_and_filtered),
        ("active", the_active_index_follows_the_state),
        ("prefix", run_ids_are_found_by_prefix),
        ("logs", log_chunks_come_back_in_stream_order),
        (
            "paging",
            listings_page_by_sequence_and_filter_by_time_job_and_worker,
        ),
        ("small", settings_workers_and_job_states_read_back),
        ("deleted", deleted_runs_take_their_id_and_log_with_them),
        (
            "bounded",
            a_listing_looks_at_a_bounded_number_of_runs_and_says_where_to_go_on,
        ),
        (
            "linked",
            runs_linked_to_a_run_are_its_retries_and_the_runs_it_started,
        ),
        (
            "pending",
            writes_are_read_back_before_and_after_they_are_flushed,
        ),
        ("oldest", the_oldest_runs_include_writes_not_yet_committed),
        ("walked", |store| {
            // Its reader's connection is opened in the background.
            store.reader_within(std::time::Duration::from_secs(10));
            runs_a_reader_found_are_deleted_with_their_logs(store)
        }),
    ];
    for (name, test) in tests {
        eprintln!("postgres: {name}");
        test(PgStore::open(&fresh()).unwrap());
    }
    let settings = fresh();
    everything_survives_reopening(|| PgStore::open(&settings).unwrap());
    let settings = fresh();
    each_run_keeps_the_job_version_it_was_created_with_across_reopening(|| {
        PgStore::open(&settings).unwrap()
    });
    // A reader (listings away from the loop) sees what is committed.
    {
        let mut store = PgStore::open(&fresh()).unwrap();
        store
            .create_run(&run(1, "first", RunState::Queued))
            .unwrap();
        store.flush().unwrap();
        let mut reader = store
            .reader_within(std::time::Duration::from_secs(10))
            .expect("a second connection");
        store
            .create_run(&run(2, "second", RunState::Queued))
            .unwrap();
        let all = RunFilter {
            limit: 10,
            ..Default::default()
        };
        store.put_log_chunk("first", 0, b"output").unwrap();
        // Retention's read of the oldest runs and a selector's ids see the pending run
        // without committing it.
        assert_eq!(store.oldest_runs(0, 10).unwrap().len(), 2);
        assert_eq!(store.run_ids_with_prefix("sec", 10).unwrap(), ["second"]);
        assert_eq!(
            reader.runs(&all).unwrap().runs.len(),
            1,
            "not before its commit"
        );
        assert!(reader.log_chunks("first").unwrap().is_empty());
        assert!(reader.run("second").unwrap().is_none());
        store.flush().unwrap();
        assert_eq!(reader.runs(&all).unwrap().runs.len(), 2, "once committed");
        assert_eq!(reader.run("second").unwrap().unwrap().seq, 2);
        assert!(reader.run("third").unwrap().is_none());
        assert_eq!(
            reader.log_chunks("first").unwrap(),
            vec![(0, b"output".to_vec())]
        );
    }
    // A commit is all or nothing, although its statements are sent together: a run
    // that takes a stored id fails it, and the job written beside it is not kept.
    let settings = fresh();
    {
        let mut store = PgStore::open(&settings).unwrap();
        store
            .create_run(&run(1, "taken", RunState::Queued))
            .unwrap();
        store.flush().unwrap();
        store.put_job(&job("beside")).unwrap();
        store
            .create_run(&run(2, "taken", RunState::Queued))
            .unwrap();
        let error = store.flush().expect_err("a duplicate id is refused");
        assert!(error.to_string().contains("duplicate key"), "{error}");
        // And nothing after it commits: a later batch may build on the failed one.
        store.put_job(&job("after")).unwrap();
        let (told, outcome) = std::sync::mpsc::channel();
        store.start_flush(Box::new(move |result| told.send(result).unwrap()));
        let error = outcome.recv().unwrap().expect_err("refused");
        assert!(
            error.to_string().contains("an earlier commit failed"),
            "{error}"
        );
    }
    let store = PgStore::open(&settings).unwrap();
    assert!(
        store.jobs().unwrap().is_empty(),
        "nothing of the failed commit"
    );
    assert_eq!(store.last_run_seq().unwrap(), 1);
    drop(store);
    // Opened again, nothing is migrated twice; migrated by a newer broker, refused.
    let schema = |sql: &str| pg.psql(&format!("contract{databases}"), sql);
    let latest = super::postgres::schema::latest();
    assert_eq!(
        schema("SELECT count(*) FROM jobcast_schema"),
        latest.to_string()
    );
    schema("INSERT INTO jobcast_schema (version, name) VALUES (99, 'from_the_future')");
    let error = PgStore::open(&settings).err().expect("refused").to_string();
    assert!(
        error.contains(&format!(
            "schema is at version 99, newer than this broker knows (version {latest})"
        )),
        "{error}"
    );
}

/// A reader (listings away from the loop) sees the store as it was when it was taken,
/// not what later batches write.
#[test]
fn a_fjall_reader_sees_the_store_as_it_was_when_taken() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_in(dir.path(), 8 << 20).unwrap();
    store
        .create_run(&run(1, "first", RunState::Queued))
        .unwrap();
    store.put_log_chunk("first", 0, b"before").unwrap();
    let mut reader = store
        .reader()
        .expect("fjall can be read from another thread");
    store
        .create_run(&run(2, "second", RunState::Queued))
        .unwrap();
    store.put_run(&run(1, "first", RunState::Running)).unwrap();
    store.put_log_chunk("first", 6, b"after").unwrap();
    let all = RunFilter {
        limit: 10,
        ..Default::default()
    };
    let asked = all.clone();
    let (seen, log, by_id, oldest_first) = std::thread::spawn(move || {
        (
            reader.runs(&asked).unwrap(),
            reader.log_chunks("first").unwrap(),
            (reader.run("first").unwrap(), reader.run("second").unwrap()),
            reader
                .runs(&RunFilter {
                    after_seq: Some(0),
                    limit: 10,
                    ..Default::default()
                })
                .unwrap(),
        )
    })
    .join()
    .unwrap();
    assert_eq!(
        by_id.0.map(|r| r.state),
        Some(RunState::Queued),
        "as it was"
    );
    assert!(by_id.1.is_none(), "written after the reader was taken");
    let oldest: Vec<u64> = oldest_first.runs.iter().map(|r| r.seq).collect();
    assert_eq!(oldest, [1], "oldest first, as it was");
    assert_eq!(log, vec![(0, b"before".to_vec())]);
    let seen: Vec<(String, RunState)> = seen.runs.into_iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(seen, vec![("first".to_string(), RunState::Queued)]);
    assert_eq!(store.runs(&all).unwrap().runs.len(), 2);
}

/// TLS as the URL's sslmode asks, the server's certificate checked against the CA file:
/// the connection is encrypted (the server says so), and a certificate signed by another
/// CA is refused.
#[test]
fn postgres_over_tls() {
    use super::postgres::{PgSettings, PgStore};
    let Some(pg) = jobcast_test_postgres::TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ca = |name: &str| {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
    };
    ca("test-ca");
    ca("other-ca");
    std::fs::write(
        dir.path().join("san.ext"),
        "subjectAltName=IP:127.0.0.1
",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "test-ca.pem",
        "-CAkey",
        "test-ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    pg.enable_tls(
        &dir.path().join("server.crt"),
        &dir.path().join("server.key"),
    );
    let password = dir.path().join("password");
    std::fs::write(&password, jobcast_test_postgres::PASSWORD).unwrap();
    let url = format!("{}?sslmode=require", pg.create_database("tls"));

    let settings =
        PgSettings::new(&url, Some(&password), Some(&dir.path().join("test-ca.pem"))).unwrap();
    let mut store = PgStore::open(&settings).unwrap();
    store.put_job(&job("over-tls")).unwrap();
    store.flush().unwrap();
    let encrypted = pg.psql(
        "tls",
        "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'jobcast-broker'",
    );
    assert_eq!(encrypted, "t", "the broker's connections are encrypted");

    let wrong = PgSettings::new(
        &url,
        Some(&password),
        Some(&dir.path().join("other-ca.pem")),
    )
    .unwrap();
    let error = PgStore::open(&wrong).err().expect("refused").to_string();
    assert!(error.contains("invalid peer certificate"), "{error}");
}

/// What a batch wrote is read back before its flush, and the same after it.
fn writes_are_read_back_before_and_after_they_are_flushed(mut store: impl Store) {
    let check = |store: &mut dyn Store, flushed: bool| {
        let what = if flushed {
            "after the flush"
        } else {
            "before it"
        };
        assert_eq!(
            store.run("w1").unwrap().unwrap().state,
            RunState::Running,
            "{what}"
        );
        assert!(store.run("gone").unwrap().is_none(), "{what}");
        let chunks: Vec<u64> = store
            .log_chunks("w1")
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(chunks, vec![0, 10], "{what}");
        assert!(store.log_chunks("gone").unwrap().is_empty(), "{what}");
        assert_eq!(
            store.setting("k").unwrap().as_deref(),
            Some(&b"v2"[..]),
            "{what}"
        );
        assert_eq!(store.jobs().unwrap(), vec![job("a"), job("b")], "{what}");
    };
    store.put_job(&job("a")).unwrap();
    store.create_run(&run(1, "gone", RunState::Failed)).unwrap();
    store.put_log_chunk("gone", 0, b"old").unwrap();
    store.flush().unwrap();
    store.put_job(&job("b")).unwrap();
    store.create_run(&run(2, "w1", RunState::Queued)).unwrap();
    store.put_run(&run(2, "w1", RunState::Running)).unwrap();
    store.put_log_chunk("w1", 0, b"first").unwrap();
    store.put_log_chunk("w1", 5, b"dropped").unwrap();
    store.put_log_chunk("w1", 10, b"second").unwrap();
    store.delete_log_chunk("w1", 5).unwrap();
    store.delete_run(&run(1, "gone", RunState::Failed)).unwrap();
    store.put_setting("k", b"v1").unwrap();
    store.put_setting("k", b"v2").unwrap();
    check(&mut store, false);
    store.flush().unwrap();
    check(&mut store, true);
    assert_eq!(store.run_count().unwrap(), 1);
}

fn job(name: &str) -> JobSpec {
    JobSpec::new(name, "default", Exec::Command(vec!["true".into()]))
}

fn run(seq: u64, id: &str, state: RunState) -> RunRecord {
    RunRecord {
        state,
        history: vec![],
        ..RunRecord::queued(id.into(), seq, job("a"), seq, "")
    }
}

fn runs_are_listed_newest_first_and_filtered(mut store: impl Store) {
    store
        .create_run(&run(1, "aaa1", RunState::Succeeded))
        .unwrap();
    store.create_run(&run(2, "bbb2", RunState::Queued)).unwrap();
    store
        .create_run(&run(3, "ccc3", RunState::Succeeded))
        .unwrap();
    let all = store
        .runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .runs;
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2, 1]);
    let done = store
        .runs(&RunFilter {
            state: Some(RunState::Succeeded),
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .runs;
    assert_eq!(done.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(store.last_run_seq().unwrap(), 3);
    assert_eq!(store.run_count().unwrap(), 3);
}

fn the_active_index_follows_the_state(mut store: impl Store) {
    let mut r = run(1, "aaa1", RunState::Queued);
    store.create_run(&r).unwrap();
    assert_eq!(store.active_runs().unwrap().len(), 1);
    r.state = RunState::Failed;
    store.put_run(&r).unwrap();
    assert!(store.active_runs().unwrap().is_empty());
    assert_eq!(store.run("aaa1").unwrap().unwrap().state, RunState::Failed);
}

fn run_ids_are_found_by_prefix(mut store: impl Store) {
    store
        .create_run(&run(1, "abc123", RunState::Queued))
        .unwrap();
    store
        .create_run(&run(2, "abd456", RunState::Queued))
        .unwrap();
    store
        .create_run(&run(3, "xyz123", RunState::Queued))
        .unwrap();
    assert_eq!(
        store.run_ids_with_prefix("ab", 10).unwrap(),
        ["abc123", "abd456"]
    );
    assert_eq!(store.run_ids_with_prefix("ab", 1).unwrap(), ["abc123"]);
    assert_eq!(store.run_ids_with_prefix("abd", 10).unwrap(), ["abd456"]);
    // A substring is not a prefix: the store does not walk every id for it.
    assert!(store.run_ids_with_prefix("123", 10).unwrap().is_empty());
    assert!(store.run_ids_with_prefix("nope", 10).unwrap().is_empty());
    // Committed or not, created and deleted runs count.
    store.flush().unwrap();
    store
        .delete_run(&run(1, "abc123", RunState::Queued))
        .unwrap();
    store
        .create_run(&run(4, "abb789", RunState::Queued))
        .unwrap();
    assert_eq!(
        store.run_ids_with_prefix("ab", 10).unwrap(),
        ["abb789", "abd456"]
    );
    assert_eq!(store.run_ids_with_prefix("ab", 1).unwrap(), ["abb789"]);
    assert!(store.run_ids_with_prefix("abc", 10).unwrap().is_empty());
    store.flush().unwrap();
    assert_eq!(
        store.run_ids_with_prefix("ab", 10).unwrap(),
        ["abb789", "abd456"]
    );
}

fn log_chunks_come_back_in_stream_order(mut store: impl Store) {
    store.put_log_chunk("r1", 300, b"c").unwrap();
    store.put_log_chunk("r1", 0, b"a").unwrap();
    store.put_log_chunk("r1", 256, b"b").unwrap();
    store.put_log_chunk("r10", 0, b"other run").unwrap();
    let chunks = store.log_chunks("r1").unwrap();
    assert_eq!(
        chunks,
        vec![
            (0, b"a".to_vec()),
            (256, b"b".to_vec()),
            (300, b"c".to_vec())
        ]
    );
    store.delete_log_chunk("r1", 256).unwrap();
    assert_eq!(store.log_chunks("r1").unwrap().len(), 2);
}

#[test]
fn everything_survives_reopening_fjall() {
    let dir = tempfile::tempdir().unwrap();
    everything_survives_reopening(|| open_in(dir.path(), 8 << 20).unwrap());
}

fn everything_survives_reopening<S: Store>(open: impl Fn() -> S) {
    {
        let mut store = open();
        store.put_job(&job("nightly")).unwrap();
        store
            .create_run(&run(1, "aaa1", RunState::Running))
            .unwrap();
        store.put_log_chunk("aaa1", 0, b"hello").unwrap();
        for seq in 2..=4 {
            store
                .create_run(&run(seq, &format!("old{seq}"), RunState::Failed))
                .unwrap();
        }
        store.delete_run(&run(2, "old2", RunState::Failed)).unwrap();
        store.flush().unwrap();
    }
    let store = open();
    assert_eq!(store.jobs().unwrap(), vec![job("nightly")]);
    assert_eq!(store.active_runs().unwrap()[0].id, "aaa1");
    assert_eq!(store.log_chunks("aaa1").unwrap()[0].1, b"hello");
    // The count of stored runs keeps what retention deleted.
    assert_eq!(store.run_count().unwrap(), 3);
}

fn listings_page_by_sequence_and_filter_by_time_job_and_worker(mut store: impl Store) {
    for seq in 1..=6 {
        let mut r = run(seq, &format!("run{seq}"), RunState::Succeeded);
        r.job = if seq % 2 == 0 { "even" } else { "odd" }.into();
        r.worker = (seq > 3).then(|| "w1".to_string());
        store.create_run(&r).unwrap();
    }
    let seqs = |filter: RunFilter| -> Vec<u64> {
        store
            .runs(&filter)
            .unwrap()
            .runs
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    let all = || RunFilter {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        seqs(RunFilter {
            before_seq: Some(4),
            ..all()
        }),
        [3, 2, 1]
    );
    // created_at_ms is the sequence number in these records.
    assert_eq!(
        seqs(RunFilter {
            since_ms: Some(2),
            until_ms: Some(5),
            ..all()
        }),
        [4, 3, 2]
    );
    assert_eq!(
        seqs(RunFilter {
            job: Some("even".into()),
            ..all()
        }),
        [6, 4, 2]
    );
    assert_eq!(
        seqs(RunFilter {
            worker: Some("w1".into()),
            limit: 2,
            ..all()
        }),
        [6, 5]
    );
    // From the oldest: oldest first, after a sequence number, within the other bounds.
    let from_oldest = |after| RunFilter {
        after_seq: Some(after),
        ..all()
    };
    assert_eq!(
        seqs(RunFilter {
            limit: 2,
            ..from_oldest(0)
        }),
        [1, 2]
    );
    assert_eq!(seqs(from_oldest(4)), [5, 6]);
    assert_eq!(
        seqs(RunFilter {
            before_seq: Some(4),
            ..from_oldest(1)
        }),
        [2, 3]
    );
    assert_eq!(
        seqs(RunFilter {
            since_ms: Some(2),
            until_ms: Some(5),
            ..from_oldest(0)
        }),
        [2, 3, 4]
    );
    assert_eq!(
        seqs(RunFilter {
            before_seq: Some(2),
            ..from_oldest(3)
        }),
        [] as [u64; 0]
    );
}

fn settings_workers_and_job_states_read_back(mut store: impl Store) {
    assert_eq!(store.setting("disabled_pools").unwrap(), None);
    store.put_setting("disabled_pools", b"[]").unwrap();
    assert_eq!(
        store.setting("disabled_pools").unwrap().as_deref(),
        Some(&b"[]"[..])
    );
    let state = JobState {
        last_tick_ms: 42,
        ..Default::default()
    };
    store.put_job_state("b", &state).unwrap();
    store.put_job_state("a", &JobState::default()).unwrap();
    let states = store.job_states().unwrap();
    assert_eq!(
        states.iter().map(|(j, _)| j.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(states[1].1, state);
    store.flush().unwrap();
}

/// Retention walks the oldest runs in the middle of a batch: what the batch changed,
/// created or deleted counts, before it is committed.
fn the_oldest_runs_include_writes_not_yet_committed(mut store: impl Store) {
    for seq in 1..=5 {
        store
            .create_run(&run(seq, &format!("r{seq}"), RunState::Queued))
            .unwrap();
    }
    store.flush().unwrap();
    let seqs = |runs: Vec<RunRecord>| runs.iter().map(|r| r.seq).collect::<Vec<_>>();
    let oldest = store.oldest_runs(0, 5).unwrap();
    store.delete_run(&oldest[0]).unwrap();
    store.delete_run(&oldest[2]).unwrap();
    store.put_run(&run(2, "r2", RunState::Succeeded)).unwrap();
    store.create_run(&run(6, "r6", RunState::Queued)).unwrap();
    let first_two = store.oldest_runs(0, 2).unwrap();
    assert_eq!(
        first_two
            .iter()
            .map(|r| (r.seq, r.state))
            .collect::<Vec<_>>(),
        [(2, RunState::Succeeded), (4, RunState::Queued)],
        "deleted ones skipped, a changed one as changed, still two"
    );
    assert_eq!(seqs(store.oldest_runs(0, 10).unwrap()), [2, 4, 5, 6]);
    assert_eq!(seqs(store.oldest_runs(5, 10).unwrap()), [5, 6]);
    assert_eq!(seqs(store.oldest_runs(3, 1).unwrap()), [4]);
    store.flush().unwrap();
    assert_eq!(seqs(store.oldest_runs(0, 10).unwrap()), [2, 4, 5, 6]);
}

fn deleted_runs_take_their_id_and_log_with_them(mut store: impl Store) {
    for seq in 1..=5 {
        store
            .create_run(&run(seq, &format!("r{seq}"), RunState::Succeeded))
            .unwrap();
        store.put_log_chunk(&format!("r{seq}"), 0, b"out").unwrap();
    }
    let oldest = store.oldest_runs(0, 2).unwrap();
    assert_eq!(
        oldest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2],
        "oldest first"
    );
    assert_eq!(store.oldest_runs(4, 10).unwrap().len(), 2);
    for old in &oldest {
        store.delete_run(old).unwrap();
    }
    // Deleting twice changes nothing.
    store.delete_run(&oldest[0]).unwrap();
    assert_eq!(store.run_count().unwrap(), 3);
    assert_eq!(store.last_run_seq().unwrap(), 5);
    assert!(store.run("r1").unwrap().is_none());
    assert!(store.log_chunks("r1").unwrap().is_empty());
    assert!(store.run_ids_with_prefix("r1", 5).unwrap().is_empty());
    assert_eq!(
        store.log_chunks("r3").unwrap().len(),
        1,
        "others keep theirs"
    );
    assert_eq!(store.oldest_runs(0, 10).unwrap()[0].seq, 3);
}

/// Retention's walk away from the loop: the oldest runs as a reader finds them, deleted
/// without the store reading them again, their logs with them.
fn runs_a_reader_found_are_deleted_with_their_logs(mut store: impl Store) {
    for seq in 1..=5 {
        let id = format!("r{seq}");
        store
            .create_run(&run(seq, &id, RunState::Succeeded))
            .unwrap();
        store.put_log_chunk(&id, 0, b"out").unwrap();
        store.put_log_chunk(&id, 3, b"more").unwrap();
    }
    store.flush().unwrap();
    let Some(mut reader) = store.reader() else {
        assert!(
            !store.walks_away(),
            "a store that walks away gives a reader"
        );
        return;
    };
    assert!(store.walks_away());
    let found = std::thread::spawn(move || reader.oldest_runs(2, 2).unwrap())
        .join()
        .unwrap();
    assert_eq!(found.iter().map(|f| f.run.seq).collect::<Vec<_>>(), [2, 3]);
    for f in &found {
        assert!(
            f.log_offsets.is_empty() || f.log_offsets == [0, 3],
            "every chunk or none named: {:?}",
            f.log_offsets
        );
        store.delete_found_run(f).unwrap();
    }
    store.flush().unwrap();
    assert_eq!(store.run_count().unwrap(), 3);
    for gone in ["r2", "r3"] {
        assert!(store.run(gone).unwrap().is_none());
        assert!(store.log_chunks(gone).unwrap().is_empty(), "{gone}'s log");
        assert!(store.run_ids_with_prefix(gone, 5).unwrap().is_empty());
    }
    assert_eq!(
        store.log_chunks("r4").unwrap().len(),
        2,
        "others keep theirs"
    );
    let left: Vec<u64> = store
        .oldest_runs(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(left, [1, 4, 5]);
}

#[test]
fn each_run_keeps_the_job_version_it_was_created_with_across_reopening_fjall() {
    let dir = tempfile::tempdir().unwrap();
    each_run_keeps_the_job_version_it_was_created_with_across_reopening(|| {
        open_in(dir.path(), 8 << 20).unwrap()
    });
}

fn each_run_keeps_the_job_version_it_was_created_with_across_reopening<S: Store>(
    open: impl Fn() -> S,
) {
    let first = job("nightly");
    let edited = JobSpec {
        timeout_ms: Some(60_000),
        ..job("nightly")
    };
    let run_of = |seq: u64, id: &str, spec: &JobSpec| RunRecord {
        history: vec![],
        ..RunRecord::queued(id.into(), seq, spec.clone(), seq, "")
    };
    {
        let mut store = open();
        store.create_run(&run_of(1, "before", &first)).unwrap();
        store.create_run(&run_of(2, "after", &edited)).unwrap();
        // A rewrite of the first run after the edit still names its own version.
        let mut rewritten = run_of(1, "before", &first);
        rewritten.state = RunState::Assigned;
        store.put_run(&rewritten).unwrap();
        store.flush().unwrap();
    }
    let store = open();
    let before = store.run("before").unwrap().unwrap();
    assert_eq!(*before.spec, first);
    assert_eq!(before.state, RunState::Assigned);
    assert_eq!(*store.run("after").unwrap().unwrap().spec, edited);
    let listed: Vec<JobSpec> = store
        .runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .runs
        .into_iter()
        .map(|r| (*r.spec).clone())
        .collect();
    assert_eq!(listed, vec![edited, first]);
}

fn a_listing_looks_at_a_bounded_number_of_runs_and_says_where_to_go_on(mut store: impl Store) {
    // One failed run, far below more succeeded ones than a listing looks at.
    let total = LISTING_SCAN as u64 + 100;
    let mut failed = run(1, "the-one-that-failed", RunState::Failed);
    failed.outcome = Some(jobcast_protocol::Outcome::Exited { code: 3 });
    store.create_run(&failed).unwrap();
    for seq in 2..=total {
        store
            .create_run(&run(seq, &format!("run{seq}"), RunState::Succeeded))
            .unwrap();
    }
    let failed_only = RunFilter {
        state: Some(RunState::Failed),
        limit: 10,
        ..Default::default()
    };
    let first = store.runs(&failed_only).unwrap();
    assert!(first.runs.is_empty());
    // It stopped after looking at LISTING_SCAN runs, newest first.
    let resume = first.resume_before.expect("a place to go on from");
    assert_eq!(resume, total - LISTING_SCAN as u64 + 1);
    let rest = store
        .runs(&RunFilter {
            before_seq: Some(resume),
            ..failed_only
        })
        .unwrap();
    assert_eq!(rest.resume_before, None, "the rest was looked at whole");
    assert_eq!(rest.runs.len(), 1);
    assert_eq!(rest.runs[0].id, "the-one-that-failed");

    // Text matches the id, job, worker, state or result, in any case.
    for text in ["ONE-THAT", "code 3", "failed"] {
        let found = store
            .runs(&RunFilter {
                text: Some(text.into()),
                limit: 5,
                before_seq: Some(resume),
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<&str> = found.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["the-one-that-failed"], "{text}");
    }
}

fn runs_linked_to_a_run_are_its_retries_and_the_runs_it_started(mut store: impl Store) {
    store
        .create_run(&run(1, "first", RunState::Failed))
        .unwrap();
    let mut retry = run(2, "retry", RunState::Succeeded);
    retry.first_attempt = Some("first".into());
    let mut next = run(3, "next", RunState::Queued);
    next.parent = Some("first".into());
    store.create_run(&retry).unwrap();
    store.create_run(&next).unwrap();
    store
        .create_run(&run(4, "other", RunState::Queued))
        .unwrap();
    let linked = store
        .runs(&RunFilter {
            linked_to: Some("first".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = linked.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["next", "retry"]);
}
