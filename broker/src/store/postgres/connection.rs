//! One connection to PostgreSQL, on a thread of its own.
//!
//! The store is called synchronously from the broker's loop, which runs on tokio; the
//! client is `tokio-postgres`, driven by a single-threaded runtime on this connection's
//! own thread. Each call is a closure sent to that thread and waited for (a channel each
//! way: tens of microseconds beside a round trip to the database). Inside a call,
//! statements issued together are pipelined by the client: a commit of many statements
//! costs one round trip, not one per statement.

use super::settings::PgSettings;
use crate::store::{StoreError, StoreResult};
use futures_util::future::LocalBoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio_postgres::{Client, Statement};

/// The client, and the statements prepared on it (each is prepared once per connection).
pub struct Session {
    pub client: Client,
    prepared: HashMap<&'static str, Statement>,
    /// Why a commit failed, once one has: no later commit runs (it may build on it).
    pub commit_failed: Option<String>,
}

impl Session {
    /// `sql`, prepared on this connection the first time it is asked for.
    pub async fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Every statement of `sqls`, prepared (those not prepared yet, together).
    pub async fn statements<const N: usize>(
        &mut self,
        sqls: [&'static str; N],
    ) -> Result<[Statement; N], tokio_postgres::Error> {
        let missing: Vec<&'static str> = sqls
            .iter()
            .copied()
            .filter(|sql| !self.prepared.contains_key(sql))
            .collect();
        let prepared =
            futures_util::future::try_join_all(missing.iter().map(|sql| self.client.prepare(sql)))
                .await?;
        for (sql, statement) in missing.into_iter().zip(prepared) {
            self.prepared.insert(sql, statement);
        }
        Ok(sqls.map(|sql| self.prepared[sql].clone()))
    }
}

type Call = Box<dyn for<'a> FnOnce(&'a mut Session) -> LocalBoxFuture<'a, ()> + Send>;

pub struct Connection {
    calls: mpsc::Sender<Call>,
    /// How long a caller waits for an answer, if bounded.
    answer_within: Option<Duration>,
    /// Set once a call went unanswered past `answer_within`: the connection is given
    /// up, and nothing more runs on it (what runs after an abandoned call must not land
    /// later, out of the caller's sight).
    given_up: Arc<AtomicBool>,
}

impl Connection {
    /// Runs `sql` (statements, no rows back) and waits: for tests that hold locks or
    /// transactions open on a connection of their own.
    #[cfg(test)]
    pub fn execute(&self, sql: &'static str) -> StoreResult<()> {
        self.call(move |session| Box::pin(async move { session.client.batch_execute(sql).await }))
    }

    /// Connects (on the connection's thread) and waits until it is up or has failed
    /// (or, with `settings.answer_within`, that long at most).
    pub fn open(settings: &PgSettings) -> StoreResult<Connection> {
        let (calls, incoming) = mpsc::channel::<Call>();
        let (opened, opening) = mpsc::channel();
        let given_up = Arc::new(AtomicBool::new(false));
        let answer_within = settings.answer_within;
        let settings = settings.clone();
        let abandoned = given_up.clone();
        std::thread::Builder::new()
            .name("jobcast-postgres".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = opened.send(Err(StoreError::Engine(Box::new(e))));
                        return;
                    }
                };
                let client = match runtime.block_on(settings.connect()) {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                if let Some(limit) = answer_within {
                    // The server gives up when the caller does: a statement left waiting
                    // on a lock must not run later, unseen (a lease taken by nobody).
                    let set = format!("SET statement_timeout = {}", limit.as_millis().max(1));
                    if let Err(e) = runtime.block_on(client.batch_execute(&set)) {
                        let _ = opened.send(Err(database_error(&e)));
                        return;
                    }
                }
                if opened.send(Ok(())).is_err() {
                    // Given up on while opening.
                    return;
                }
                let mut session = Session {
                    client,
                    prepared: HashMap::new(),
                    commit_failed: None,
                };
                // Ends when the store drops its sender, or once given up on: the calls
                // left are dropped unrun, which tells each so.
                while let Ok(call) = incoming.recv() {
                    if abandoned.load(Ordering::SeqCst) {
                        return;
                    }
                    runtime.block_on(call(&mut session));
                }
            })
            .map_err(|e| StoreError::Engine(Box::new(e)))?;
        let outcome = match answer_within {
            Some(limit) => opening.recv_timeout(limit).map_err(|_| {
                StoreError::Engine(
                    format!("PostgreSQL did not let a connection open within {limit:?}").into(),
                )
            })?,
            None => opening
                .recv()
                .map_err(|_| engine_error("the PostgreSQL connection's thread ended"))?,
        };
        outcome.map(|()| Connection {
            calls,
            answer_within,
            given_up,
        })
    }

    /// From now on, a caller waits at most `limit` for an answer; past it the connection
    /// is given up.
    pub fn limit_answers(&mut self, limit: Duration) {
        self.answer_within = Some(limit);
    }

    /// Runs `work` on the connection and waits for its result.
    pub fn call<R, W>(&self, work: W) -> StoreResult<R>
    where
        R: Send + 'static,
        W: for<'a> FnOnce(&'a mut Session) -> LocalBoxFuture<'a, Result<R, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        self.wait(move |session| {
            Box::pin(async move { work(session).await.map_err(|e| database_error(&e)) })
        })
    }

    /// Like [`Connection::submit`], waiting for the result.
    pub fn wait<R, W>(&self, work: W) -> StoreResult<R>
    where
        R: Send + 'static,
        W: for<'a> FnOnce(&'a mut Session) -> LocalBoxFuture<'a, StoreResult<R>> + Send + 'static,
    {
        let (answer, answered) = mpsc::sync_channel(1);
        self.submit(work, move |result| {
            let _ = answer.send(result);
        });
        let ended = || {
            Err(engine_error(
                "the PostgreSQL connection's thread ended during a call",
            ))
        };
        let Some(limit) = self.answer_within else {
            return answered.recv().unwrap_or_else(|_| ended());
        };
        match answered.recv_timeout(limit) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => ended(),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.given_up.store(true, Ordering::SeqCst);
                Err(StoreError::Engine(
                    format!(
                        "PostgreSQL gave no answer within {limit:?}; the connection is given up"
                    )
                    .into(),
                ))
            }
        }
    }

    /// The rows of one query (prepared once per connection), each read by `read`.
    pub fn rows<R: Send + 'static>(
        &self,
        sql: &'static str,
        params: Vec<super::Param>,
        read: fn(&tokio_postgres::Row) -> R,
    ) -> StoreResult<Vec<R>> {
        self.call(move |session| {
            Box::pin(async move {
                let statement = session.statement(sql).await?;
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p.as_ref() as _).collect();
                Ok(session
                    .client
                    .query(&statement, &refs)
                    .await?
                    .iter()
                    .map(read)
                    .collect())
            })
        })
    }

    /// Queues `work` on the connection without waiting; `done` is told its result, on the
    /// connection's thread. Work runs in the order it was queued.
    pub fn submit<R, W, D>(&self, work: W, done: D)
    where
        R: Send + 'static,
        W: for<'a> FnOnce(&'a mut Session) -> LocalBoxFuture<'a, StoreResult<R>> + Send + 'static,
        D: FnOnce(StoreResult<R>) + Send + 'static,
    {
        let mut done = Told(Some(done), std::marker::PhantomData);
        if self.given_up.load(Ordering::SeqCst) {
            done.tell(Err(engine_error(
                "an earlier call on this PostgreSQL connection went unanswered; it is given up",
            )));
            return;
        }
        let call: Call = Box::new(move |session| {
            Box::pin(async move {
                let outcome = work(session).await;
                done.tell(outcome);
            })
        });
        // Not sent (the thread has ended): dropped here, which tells `done` so.
        let _ = self.calls.send(call);
    }
}

/// A `done` that is told for certain: dropped untold (the connection's thread ended
/// before the work ran), it is told that.
struct Told<R, D: FnOnce(StoreResult<R>)>(Option<D>, std::marker::PhantomData<fn(R)>);

impl<R, D: FnOnce(StoreResult<R>)> Told<R, D> {
    fn tell(&mut self, outcome: StoreResult<R>) {
        if let Some(done) = self.0.take() {
            done(outcome);
        }
    }
}

impl<R, D: FnOnce(StoreResult<R>)> Drop for Told<R, D> {
    fn drop(&mut self) {
        self.tell(Err(engine_error(
            "the PostgreSQL connection's thread ended",
        )));
    }
}

/// The client's error with what the server or the network said: its own text names only
/// the kind ("db error").
pub fn database_error(error: &tokio_postgres::Error) -> StoreError {
    let message = match error.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("PostgreSQL: {error}: {source}"),
            None => format!("PostgreSQL: {error}"),
        },
    };
    StoreError::Engine(message.into())
}

pub fn engine_error(message: &str) -> StoreError {
    StoreError::Engine(message.into())
}
