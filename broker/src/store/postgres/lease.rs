//! The leader's lease in the database (`jobcast_leader`, migration 0002): taken by a
//! standby once it has expired, renewed by its holder, handed over at a clean stop. Its
//! expiry is judged by the database's clock alone. The epoch it returns is what the
//! holder's commits are fenced with (`PgStore::open_fenced`).

use super::connection::{engine_error, Connection};
use super::settings::PgSettings;
use super::Param;
use crate::store::StoreResult;
use std::time::Duration;

/// The broker process that takes the lease, and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Unique per process: host, pid and a random word.
    pub holder: String,
    pub router: String,
    pub publish: String,
    /// The HTTP address ('' when the broker serves none).
    pub http: String,
}

impl Candidate {
    /// A holder name for this process: `host:pid:random`.
    pub fn holder_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            jobcast_protocol::envelope::random_nonce() as u32
        )
    }
}

/// The lease row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub epoch: u64,
    /// '' while nobody holds it (never taken, or handed over).
    pub holder: String,
    pub router: String,
    pub publish: String,
    pub http: String,
    /// Milliseconds until it expires (zero or less: expired or handed over), by the
    /// database's clock.
    pub expires_in_ms: i64,
}

impl LeaseRow {
    /// Whether someone holds it now.
    pub fn is_held(&self) -> bool {
        !self.holder.is_empty() && self.expires_in_ms > 0
    }
}

/// Takes, renews, hands over and reads the lease, on a connection of its own (a renewal
/// must not wait behind a commit).
pub struct Lease {
    connection: Connection,
    length: Duration,
}

const TAKE: &str = "UPDATE jobcast_leader
     SET epoch = epoch + 1, holder = $1, router = $2, publish = $3, http = $4,
         taken_at = clock_timestamp(), renewed_at = clock_timestamp(),
         expires_at = clock_timestamp() + make_interval(secs => $5::bigint / 1000.0)
     WHERE id = 1 AND expires_at <= clock_timestamp()
     RETURNING epoch";
const RENEW: &str = "UPDATE jobcast_leader
     SET renewed_at = clock_timestamp(),
         expires_at = clock_timestamp() + make_interval(secs => $2::bigint / 1000.0)
     WHERE id = 1 AND epoch = $1 AND expires_at > clock_timestamp()
     RETURNING epoch";
const HAND_OVER: &str = "UPDATE jobcast_leader
     SET holder = '', expires_at = '-infinity'
     WHERE id = 1 AND epoch = $1
     RETURNING epoch";
const READ: &str = "SELECT epoch, holder, router, publish, http,
         CASE WHEN isfinite(expires_at)
              THEN (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
              ELSE -1 END
     FROM jobcast_leader WHERE id = 1";

const SEEN: &str = "INSERT INTO jobcast_brokers (holder, router, publish, http, seen_at)
     VALUES ($1, $2, $3, $4, clock_timestamp())
     ON CONFLICT (holder) DO UPDATE SET router = excluded.router, publish = excluded.publish,
         http = excluded.http, seen_at = excluded.seen_at";
const BROKERS: &str =
    "SELECT b.holder, b.router, b.http, b.holder = l.holder AND l.expires_at > clock_timestamp(),
         (extract(epoch FROM clock_timestamp() - b.seen_at) * 1000)::bigint
     FROM jobcast_brokers b, jobcast_leader l
     WHERE l.id = 1 AND b.seen_at > clock_timestamp() - make_interval(secs => $1::bigint / 1000.0)
     ORDER BY b.holder";
const FORGET: &str =
    "DELETE FROM jobcast_brokers WHERE seen_at < clock_timestamp() - interval '1 hour'";

impl Lease {
    /// Connects (the schema must be in place: a store opened on the database first).
    /// A call gets one lease (a second at least) to be answered: a renewal answered later
    /// is of no use (the lease could have run out), and a try at it must not hold a
    /// standby up for good.
    pub fn open(settings: &PgSettings, length: Duration) -> StoreResult<Lease> {
        Ok(Lease {
            connection: Connection::open(
                &settings.answering_within(length.max(Duration::from_secs(1))),
            )?,
            length,
        })
    }

    fn length_ms(&self) -> i64 {
        self.length.as_millis() as i64
    }

    /// Takes the lease if it has expired (or was handed over); the new epoch if taken.
    pub fn take(&self, candidate: &Candidate) -> StoreResult<Option<u64>> {
        let mut params = candidate.params();
        params.push(Box::new(self.length_ms()));
        self.epoch_of(TAKE, params)
    }

    /// Extends the lease of `epoch` by its length from now; false if `epoch` no longer
    /// holds it (taken over, or expired): its holder must stop acting at once.
    pub fn renew(&self, epoch: u64) -> StoreResult<bool> {
        let params: Vec<Param> = vec![Box::new(epoch as i64), Box::new(self.length_ms())];
        Ok(self.epoch_of(RENEW, params)?.is_some())
    }

    /// Gives the lease of `epoch` up now (a clean stop, after the last commit): a standby
    /// takes it at its next try instead of waiting for it to expire. False if `epoch`
    /// no longer held it.
    pub fn hand_over(&self, epoch: u64) -> StoreResult<bool> {
        Ok(self
            .epoch_of(HAND_OVER, vec![Box::new(epoch as i64)])?
            .is_some())
    }

    /// The lease as it stands.
    pub fn read(&self) -> StoreResult<LeaseRow> {
        self.connection
            .rows(READ, Vec::new(), |row| LeaseRow {
                epoch: row.get::<_, i64>(0) as u64,
                holder: row.get(1),
                router: row.get(2),
                publish: row.get(3),
                http: row.get(4),
                expires_in_ms: row.get(5),
            })?
            .pop()
            .ok_or_else(|| engine_error("the lease row is missing (schema version 2)"))
    }

    /// Says `candidate` is alive (listed by `brokers` for three leases).
    pub fn seen(&self, candidate: &Candidate) -> StoreResult<()> {
        self.connection
            .rows(SEEN, candidate.params(), |_| ())
            .map(drop)
    }

    /// The brokers seen within the last three leases, and which holds the lease.
    pub fn brokers(&self) -> StoreResult<Vec<jobcast_protocol::BrokerSeen>> {
        let within_ms: Param = Box::new(3 * self.length_ms());
        self.connection.rows(BROKERS, vec![within_ms], |row| {
            jobcast_protocol::BrokerSeen {
                holder: row.get(0),
                router: row.get(1),
                http: row.get(2),
                leader: row.get(3),
                seen_ms_ago: row.get::<_, i64>(4).max(0) as u64,
            }
        })
    }

    /// Removes brokers not seen for an hour (a taking does it now and then).
    pub fn forget_old_brokers(&self) -> StoreResult<()> {
        self.connection.rows(FORGET, Vec::new(), |_| ()).map(drop)
    }

    /// Runs a statement that returns the epoch in one row, or no row.
    fn epoch_of(&self, sql: &'static str, params: Vec<Param>) -> StoreResult<Option<u64>> {
        Ok(self
            .connection
            .rows(sql, params, |row| row.get::<_, i64>(0) as u64)?
            .pop())
    }
}

impl Candidate {
    /// Holder and addresses, as the statements that write them take them.
    fn params(&self) -> Vec<Param> {
        vec![
            Box::new(self.holder.clone()),
            Box::new(self.router.clone()),
            Box::new(self.publish.clone()),
            Box::new(self.http.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::PgStore;
    use crate::store::{Store, StoreError};
    use jobcast_protocol::{RunRecord, RunState};
    use std::time::Instant;

    fn candidate(name: &str) -> Candidate {
        Candidate {
            holder: format!("{name}:1:0"),
            router: format!("tcp://{name}:7700"),
            publish: format!("tcp://{name}:7701"),
            http: format!("{name}:8080"),
        }
    }

    fn run(seq: u64, id: &str) -> RunRecord {
        let job = jobcast_protocol::JobSpec::new(
            "job",
            "default",
            jobcast_protocol::Exec::Command(vec!["true".into()]),
        );
        RunRecord {
            state: RunState::Queued,
            ..RunRecord::queued(id.into(), seq, job, seq, "")
        }
    }

    /// Waits for `ready`, up to 10 s.
    fn until(what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            assert!(Instant::now() < deadline, "not within 10 s: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One throwaway server for the lease tests, a fresh database for each part.
    struct Databases {
        pg: jobcast_test_postgres::TestPostgres,
        password: tempfile::NamedTempFile,
        made: usize,
    }

    impl Databases {
        fn fresh(&mut self) -> PgSettings {
            self.made += 1;
            let url = self.pg.create_database(&format!("lease{}", self.made));
            let settings = PgSettings::new(&url, Some(self.password.path()), None).unwrap();
            // The schema (and the lease row) is put in place by opening a store.
            drop(PgStore::open(&settings).unwrap());
            settings
        }
    }

    #[test]
    fn the_lease_and_the_fence() {
        let Some(pg) = jobcast_test_postgres::TestPostgres::start() else {
            return;
        };
        let password = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(password.path(), jobcast_test_postgres::PASSWORD).unwrap();
        let mut databases = Databases {
            pg,
            password,
            made: 0,
        };
        eprintln!("lease: one holder at a time, handed over at once");
        one_holder_at_a_time_and_a_hand_over_frees_it_at_once(&databases.fresh());
        eprintln!("lease: expiry by the database's clock");
        an_expired_lease_is_taken_with_a_higher_epoch(&databases.fresh());
        eprintln!("lease: a commit of a lost epoch");
        a_commit_under_a_lost_or_expired_lease_fails_and_writes_nothing(&databases.fresh());
        eprintln!("lease: a takeover waits for a fenced commit in flight");
        a_takeover_waits_for_a_fenced_transaction_in_flight(&databases.fresh());
        eprintln!("lease: a connection that does not answer in time is given up");
        a_call_unanswered_in_time_gives_the_connection_up(&databases.fresh());
    }

    fn a_call_unanswered_in_time_gives_the_connection_up(settings: &PgSettings) {
        let sleep = |connection: &Connection, seconds: f64| {
            connection.call(move |session| {
                Box::pin(async move {
                    session
                        .client
                        .batch_execute(&format!("SELECT pg_sleep({seconds})"))
                        .await
                })
            })
        };
        // Unbounded: waits as long as it takes.
        let patient = Connection::open(settings).unwrap();
        sleep(&patient, 0.3).unwrap();

        // Bounded: the caller gets an error once the limit has passed, the server
        // cancels the statement too, and nothing more runs on the connection.
        let limited = Connection::open(&settings.answering_within(Duration::from_secs(1))).unwrap();
        sleep(&limited, 0.0).unwrap();
        let asked = Instant::now();
        // (Longer than `until` waits: only the server's cancel ends it in time.)
        let error = sleep(&limited, 30.0).unwrap_err().to_string();
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "{:?}",
            asked.elapsed()
        );
        // The server's timeout is the same limit: on a busy machine its cancel can come
        // back before the caller's own wait ends, and then the connection is still good.
        if error.contains("no answer within") {
            let error = sleep(&limited, 0.0).unwrap_err().to_string();
            assert!(error.contains("given up"), "{error}");
        } else {
            assert!(error.contains("statement timeout"), "{error}");
        }
        until("the server cancels the statement", || {
            patient
                .rows(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(30%'",
                    Vec::new(),
                    |row| row.get::<_, i64>(0),
                )
                .unwrap()
                == vec![0]
        });

        // A store limited once acting: the same.
        let mut store = PgStore::open(settings).unwrap();
        // (Its lookup connection open before the limit is set.)
        assert!(store.lookups_within(Duration::from_secs(10)));
        store.limit_answers(Duration::from_secs(1));
        store.setting("none").unwrap();
        let error = sleep(&store.connection, 5.0).unwrap_err().to_string();
        assert!(error.contains("no answer within"), "{error}");
        assert!(
            store.setting("none").is_err(),
            "the store's connection is given up"
        );
        // The loop's reads of runs, on a connection of their own, have the limit too: a
        // read held by a lock on the table fails in time.
        assert!(store.lookups_within(Duration::from_secs(10)));
        let locker = Connection::open(settings).unwrap();
        locker
            .execute("BEGIN; LOCK TABLE jobcast_runs IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        // On a thread: a read without the limit would wait for the lock for good.
        let (told, answer) = std::sync::mpsc::channel();
        let reading = std::thread::spawn(move || {
            let _ = told.send(store.run("none").map(|_| ()));
        });
        let answered = answer.recv_timeout(Duration::from_secs(10));
        locker.execute("ROLLBACK").unwrap();
        reading.join().unwrap();
        let error = answered
            .expect("the read fails in time")
            .unwrap_err()
            .to_string();
        // Whichever ends it first: the connection's wait, or the server's own limit.
        assert!(
            error.contains("no answer within") || error.contains("statement timeout"),
            "{error}"
        );
    }

    fn one_holder_at_a_time_and_a_hand_over_frees_it_at_once(settings: &PgSettings) {
        let lease = Duration::from_secs(30);
        let (a, b) = (
            Lease::open(settings, lease).unwrap(),
            Lease::open(settings, lease).unwrap(),
        );
        let unheld = a.read().unwrap();
        assert!(!unheld.is_held(), "{unheld:?}");
        assert_eq!(unheld.epoch, 0);

        assert_eq!(a.take(&candidate("a")).unwrap(), Some(1));
        assert_eq!(b.take(&candidate("b")).unwrap(), None, "a holds it");
        let row = b.read().unwrap();
        assert!(row.is_held());
        assert_eq!(
            (row.epoch, row.holder.as_str(), row.router.as_str()),
            (1, "a:1:0", "tcp://a:7700")
        );
        assert!(
            row.expires_in_ms > 25_000 && row.expires_in_ms <= 30_000,
            "{row:?}"
        );
        assert!(a.renew(1).unwrap());
        assert!(
            !b.renew(2).unwrap(),
            "an epoch that never held it renews nothing"
        );

        assert!(a.hand_over(1).unwrap());
        assert!(!b.read().unwrap().is_held());
        assert_eq!(b.take(&candidate("b")).unwrap(), Some(2), "at once");
        assert!(!a.renew(1).unwrap(), "a's epoch is over");
        assert!(!a.hand_over(1).unwrap(), "and hands over nothing");
        assert_eq!(b.read().unwrap().holder, "b:1:0");
    }

    fn an_expired_lease_is_taken_with_a_higher_epoch(settings: &PgSettings) {
        let lease = Duration::from_millis(300);
        let (a, b) = (
            Lease::open(settings, lease).unwrap(),
            Lease::open(settings, lease).unwrap(),
        );
        assert_eq!(a.take(&candidate("a")).unwrap(), Some(1));
        let mut taken = None;
        until("b takes the expired lease", || {
            taken = b.take(&candidate("b")).unwrap();
            taken.is_some()
        });
        assert_eq!(taken, Some(2));
        assert!(!a.renew(1).unwrap(), "a cannot renew what b took");
    }

    fn a_commit_under_a_lost_or_expired_lease_fails_and_writes_nothing(settings: &PgSettings) {
        let (a, b) = (
            Lease::open(settings, Duration::from_secs(30)).unwrap(),
            Lease::open(settings, Duration::from_secs(30)).unwrap(),
        );
        assert_eq!(a.take(&candidate("a")).unwrap(), Some(1));
        let mut store_a = PgStore::open_fenced(settings, 1).unwrap();
        store_a.create_run(&run(1, "r1")).unwrap();
        store_a.flush().unwrap();

        assert!(a.hand_over(1).unwrap());
        assert_eq!(b.take(&candidate("b")).unwrap(), Some(2));
        store_a.create_run(&run(2, "r2")).unwrap();
        store_a.put_log_chunk("r2", 0, b"output").unwrap();
        match store_a.flush() {
            Err(StoreError::Fenced(why)) => assert!(why.contains("epoch 1"), "{why}"),
            other => panic!("a commit of epoch 1 after epoch 2 took over: {other:?}"),
        }
        let mut store_b = PgStore::open_fenced(settings, 2).unwrap();
        assert!(
            store_b.run("r1").unwrap().is_some(),
            "what passed its fence stays"
        );
        assert!(
            store_b.run("r2").unwrap().is_none(),
            "what failed it was never written"
        );
        assert!(store_b.log_chunks("r2").unwrap().is_empty());
        store_b.create_run(&run(2, "r2-from-b")).unwrap();
        store_b.flush().unwrap();

        // The lease of epoch 3 runs out with nobody taking it over: its holder's
        // commits fail too (its own clock should have stopped it before).
        assert!(b.hand_over(2).unwrap());
        let short = Lease::open(settings, Duration::from_millis(50)).unwrap();
        assert_eq!(short.take(&candidate("c")).unwrap(), Some(3));
        let mut store_c = PgStore::open_fenced(settings, 3).unwrap();
        until("epoch 3's lease expires", || {
            short.read().unwrap().expires_in_ms <= 0
        });
        store_c.create_run(&run(3, "r3")).unwrap();
        match store_c.flush() {
            Err(StoreError::Fenced(why)) => assert!(why.contains("expired"), "{why}"),
            other => panic!("a commit under an expired lease: {other:?}"),
        }
        let unfenced = PgStore::open(settings).unwrap();
        assert_eq!(unfenced.run_count().unwrap(), 2, "r1 and r2-from-b");
        assert!(unfenced.run("r3").unwrap().is_none());
    }

    fn a_takeover_waits_for_a_fenced_transaction_in_flight(settings: &PgSettings) {
        let a = Lease::open(settings, Duration::from_millis(500)).unwrap();
        assert_eq!(a.take(&candidate("a")).unwrap(), Some(1));
        // A commit of epoch 1 that passed its fence and has not ended yet.
        let in_flight = Connection::open(settings).unwrap();
        in_flight
            .execute(
                "BEGIN; SELECT jobcast_fence(1);
                 INSERT INTO jobcast_settings (key, value) VALUES ('written', '\\x01')",
            )
            .unwrap();
        until("epoch 1's lease expires", || {
            a.read().unwrap().expires_in_ms <= 0
        });
        let taking = std::thread::spawn({
            let settings = settings.clone();
            move || {
                Lease::open(&settings, Duration::from_secs(30))
                    .unwrap()
                    .take(&candidate("b"))
                    .unwrap()
            }
        });
        until("the takeover waits for the commit's lock", || {
            a.connection
                .call(|session| {
                    Box::pin(async move {
                        session
                            .client
                            .query_one(
                                "SELECT count(*) FROM pg_stat_activity
                                 WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE jobcast_leader%'",
                                &[],
                            )
                            .await
                    })
                })
                .unwrap()
                .get::<_, i64>(0)
                == 1
        });
        assert!(!taking.is_finished());
        in_flight.execute("COMMIT").unwrap();
        assert_eq!(
            taking.join().unwrap(),
            Some(2),
            "taken once the commit ended"
        );
        let store = PgStore::open(settings).unwrap();
        assert_eq!(
            store.setting("written").unwrap(),
            Some(vec![1]),
            "the commit that passed its fence before the takeover stands"
        );
    }
}
