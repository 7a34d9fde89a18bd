//! The thread that makes batches durable while the loop goes on with the next one.
//!
//! Commits run one at a time, in the order they were handed over, and each outcome is
//! told to its `done` in that order. After one fails, every later one fails without
//! running: a batch may build on the one before it, so nothing after a failed commit may
//! become durable and be acknowledged.

use super::{FlushDone, StoreError, StoreResult};
use std::sync::mpsc;

/// One commit: the work that makes a batch durable.
pub type Commit = Box<dyn FnOnce() -> StoreResult<()> + Send>;

pub struct Committer {
    commits: Option<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where commits wait for the thread: any number, or a bounded queue whose `submit`
/// waits for room (so that a slow engine holds its producer back rather than memory
/// growing).
enum Queue {
    Unbounded(mpsc::Sender<(Commit, FlushDone)>),
    Bounded(mpsc::SyncSender<(Commit, FlushDone)>),
}

impl Committer {
    pub fn start() -> StoreResult<Committer> {
        let (commits, incoming) = mpsc::channel::<(Commit, FlushDone)>();
        Self::run("jobcast-commit", Queue::Unbounded(commits), incoming)
    }

    /// A thread named `name` that holds at most `capacity` commits waiting.
    pub fn bounded(name: &str, capacity: usize) -> StoreResult<Committer> {
        let (commits, incoming) = mpsc::sync_channel::<(Commit, FlushDone)>(capacity);
        Self::run(name, Queue::Bounded(commits), incoming)
    }

    fn run(
        name: &str,
        commits: Queue,
        incoming: mpsc::Receiver<(Commit, FlushDone)>,
    ) -> StoreResult<Committer> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut failed: Option<String> = None;
                for (commit, done) in incoming {
                    let outcome = match &failed {
                        Some(why) => Err(earlier_failure(why)),
                        None => commit(),
                    };
                    if let Err(e) = &outcome {
                        failed.get_or_insert_with(|| e.to_string());
                    }
                    done(outcome);
                }
            })
            .map_err(|e| StoreError::Engine(Box::new(e)))?;
        Ok(Committer {
            commits: Some(commits),
            thread: Some(thread),
        })
    }

    /// Queues `commit`; `done` hears how it went.
    pub fn submit(&self, commit: Commit, done: FlushDone) {
        let Some(commits) = &self.commits else {
            done(Err(StoreError::Engine("the committer has stopped".into())));
            return;
        };
        let refused = match commits {
            Queue::Unbounded(commits) => commits.send((commit, done)).err().map(|e| e.0),
            Queue::Bounded(commits) => commits.send((commit, done)).err().map(|e| e.0),
        };
        if let Some((_, done)) = refused {
            done(Err(StoreError::Engine(
                "the committer's thread ended".into(),
            )));
        }
    }

    /// Queues `commit` and waits for it (and so for every commit before it).
    pub fn wait(&self, commit: Commit) -> StoreResult<()> {
        let (told, outcome) = mpsc::sync_channel(1);
        self.submit(
            commit,
            Box::new(move |result| {
                let _ = told.send(result);
            }),
        );
        outcome
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Engine("the committer's thread ended".into())))
    }
}

impl Drop for Committer {
    /// Lets the commits handed over finish (each is bounded by the engine's sync).
    fn drop(&mut self) {
        self.commits.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn earlier_failure(why: &str) -> StoreError {
    StoreError::Engine(format!("not committed: an earlier commit failed ({why})").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Outcomes as they were told: (commit number, succeeded).
    type Told = Arc<Mutex<Vec<(u32, bool)>>>;

    /// Records outcomes as they are told, by commit number.
    fn recorder() -> (Told, impl Fn(u32) -> FlushDone) {
        let told = Arc::new(Mutex::new(Vec::new()));
        let log = told.clone();
        let done = move |n: u32| -> FlushDone {
            let log = log.clone();
            Box::new(move |outcome: StoreResult<()>| log.lock().unwrap().push((n, outcome.is_ok())))
        };
        (told, done)
    }

    #[test]
    fn commits_run_and_are_told_in_the_order_they_came() {
        let committer = Committer::start().unwrap();
        let (told, done) = recorder();
        let ran = Arc::new(Mutex::new(Vec::new()));
        for n in 0..50u32 {
            let ran = ran.clone();
            committer.submit(
                Box::new(move || {
                    // Uneven work, so that an out-of-order runner would show.
                    std::thread::sleep(std::time::Duration::from_micros(u64::from(50 - n)));
                    ran.lock().unwrap().push(n);
                    Ok(())
                }),
                done(n),
            );
        }
        committer.wait(Box::new(|| Ok(()))).unwrap();
        let expected: Vec<u32> = (0..50).collect();
        assert_eq!(*ran.lock().unwrap(), expected);
        assert_eq!(
            *told.lock().unwrap(),
            expected.iter().map(|n| (*n, true)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn after_a_failed_commit_nothing_later_runs_and_every_later_one_fails() {
        let committer = Committer::start().unwrap();
        let (told, done) = recorder();
        let ran = Arc::new(Mutex::new(Vec::new()));
        for n in 0..5u32 {
            let ran = ran.clone();
            committer.submit(
                Box::new(move || {
                    ran.lock().unwrap().push(n);
                    if n == 2 {
                        Err(StoreError::Engine("disk full".into()))
                    } else {
                        Ok(())
                    }
                }),
                done(n),
            );
        }
        let error = committer.wait(Box::new(|| Ok(()))).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("earlier commit failed (store: disk full)"),
            "{error}"
        );
        assert_eq!(*ran.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(
            *told.lock().unwrap(),
            vec![(0, true), (1, true), (2, false), (3, false), (4, false)]
        );
    }

    #[test]
    fn dropping_the_committer_lets_what_was_handed_over_finish() {
        let (told, done) = recorder();
        {
            let committer = Committer::start().unwrap();
            for n in 0..3 {
                committer.submit(Box::new(|| Ok(())), done(n));
            }
        }
        assert_eq!(told.lock().unwrap().len(), 3);
    }
}
