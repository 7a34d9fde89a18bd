//! One connection to PostgreSQL, on a thread of its own.
//!
//! The store is called synchronously from the broker's loop, which runs on tokio; the
//! `postgres` client blocks on a runtime of its own and must not be driven from inside
//! another. So the client lives on a plain thread, and each call is a closure sent to it
//! and waited for (a channel each way: tens of microseconds beside a round trip to the
//! database).

use super::settings::PgSettings;
use crate::store::{StoreError, StoreResult};
use postgres::{Client, Statement};
use std::collections::HashMap;
use std::sync::mpsc;

/// The client, and the statements prepared on it (each is prepared once per connection).
pub struct Session {
    pub client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl Session {
    /// `sql`, prepared on this connection the first time it is asked for.
    pub fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }
}

type Call = Box<dyn FnOnce(&mut Session) + Send>;

pub struct Connection {
    calls: mpsc::Sender<Call>,
}

impl Connection {
    /// Connects (on the connection's thread) and waits until it is up or has failed.
    pub fn open(settings: &PgSettings) -> StoreResult<Connection> {
        let (calls, incoming) = mpsc::channel::<Call>();
        let (opened, opening) = mpsc::channel();
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("jobcast-postgres".into())
            .spawn(move || {
                let client = match settings.connect() {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                let _ = opened.send(Ok(()));
                let mut session = Session {
                    client,
                    prepared: HashMap::new(),
                };
                // Ends when the store drops its sender.
                while let Ok(call) = incoming.recv() {
                    call(&mut session);
                }
            })
            .map_err(|e| StoreError::Engine(Box::new(e)))?;
        match opening.recv() {
            Ok(Ok(())) => Ok(Connection { calls }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(engine_error("the PostgreSQL connection's thread ended")),
        }
    }

    /// Runs `work` on the connection and waits for its result.
    pub fn call<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Session) -> Result<R, postgres::Error> + Send + 'static,
    ) -> StoreResult<R> {
        let (answer, answered) = mpsc::sync_channel(1);
        let call: Call = Box::new(move |session| {
            let _ = answer.send(work(session));
        });
        self.calls
            .send(call)
            .map_err(|_| engine_error("the PostgreSQL connection's thread ended"))?;
        match answered.recv() {
            Ok(result) => result.map_err(|e| StoreError::Engine(Box::new(e))),
            Err(_) => Err(engine_error(
                "the PostgreSQL connection's thread ended during a call",
            )),
        }
    }
}

pub fn engine_error(message: &str) -> StoreError {
    StoreError::Engine(message.into())
}
