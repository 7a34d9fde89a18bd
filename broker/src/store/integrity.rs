//! Telling a crash's torn tail from a damaged store.
//!
//! The engine (fjall) recovers its journal by cutting it at the first record it cannot
//! read. After a crash that is right: only the last, unacknowledged writes can be torn.
//! But the same cut silently drops every acknowledged write after a damaged record in
//! the middle, and a deleted journal loses whatever only it held; the broker would then
//! start on an older state and run finished runs again. So the store counts its commits
//! (a setting written in each flushed batch), and a marker file beside it records a
//! commit known to be durable:
//!
//! - while the broker runs, at most once a second after a flush: `clean = false` and the
//!   commit just made durable;
//! - at a clean stop, after every write is in the engine's tables (nothing only the journal
//!   holds): `clean = true` and the last commit.
//!
//! At open the store's commit must be at least the marker's (exactly it after a clean
//! stop). Anything else is damage: the broker refuses to start and names the files;
//! `jobcast-broker --repair` is the explicit way on.

use super::{io_error, StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The marker, in the data directory beside the store.
pub const MARKER_FILE: &str = "store.marker";
/// The settings key of the commit count.
pub const COMMIT_KEY: &[u8] = b"commit_seq";
/// How often, at most, a running broker writes the marker.
const MARKER_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// A commit known to be durable.
    pub commit: u64,
    /// Written by a clean stop: `commit` is the last one, and the tables hold it all.
    pub clean: bool,
    /// When it was written (ms since the epoch).
    pub at_ms: u64,
}

pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// The marker in `data_dir`, if there is one.
pub fn read_marker(data_dir: &Path) -> StoreResult<Option<Marker>> {
    let path = marker_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        StoreError::Damaged(format!(
            "the store marker {} is unreadable ({e}); the store cannot be checked",
            path.display()
        ))
    })
}

/// Writes the marker durably: a whole new file renamed over the old, then the directory
/// synced.
pub fn write_marker(data_dir: &Path, marker: &Marker) -> StoreResult<()> {
    let path = marker_path(data_dir);
    let tmp = path.with_extension("marker.tmp");
    let text = toml::to_string(marker).unwrap_or_default();
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| io_error("write the store marker", &path, e))
}

/// Whether a store whose commit count is `stored` agrees with `marker`: `Err` says what is
/// wrong, naming `store` and the marker's file.
pub fn check(
    marker: Option<&Marker>,
    stored: u64,
    store: &Path,
    data_dir: &Path,
) -> Result<(), String> {
    let marker_file = marker_path(data_dir);
    let Some(marker) = marker else {
        // A store from before commits were counted has no count and no marker.
        return match stored {
            0 => Ok(()),
            _ => Err(format!(
                "the store {} has {stored} commits but its marker {} is missing: it cannot be told whether acknowledged writes were lost",
                store.display(),
                marker_file.display()
            )),
        };
    };
    if marker.clean && stored != marker.commit {
        return Err(format!(
            "the store {} holds commit {stored}, but it was stopped cleanly at commit {} ({}): its journal or tables were changed or lost after the stop",
            store.display(),
            marker.commit,
            marker_file.display()
        ));
    }
    if stored < marker.commit {
        return Err(format!(
            "the store {} holds commit {stored}, but commit {} was durable before ({}): acknowledged writes are missing (a damaged or deleted journal, not a crash's torn tail)",
            store.display(),
            marker.commit,
            marker_file.display()
        ));
    }
    Ok(())
}

/// The marker of a running store: written after flushes, at most once a second.
pub struct MarkerKeeper {
    data_dir: PathBuf,
    written: u64,
    written_at: Instant,
}

impl MarkerKeeper {
    /// Marks the store in `data_dir` as running from durable commit `commit`.
    pub fn start(data_dir: &Path, commit: u64, now_ms: u64) -> StoreResult<MarkerKeeper> {
        write_marker(
            data_dir,
            &Marker {
                commit,
                clean: false,
                at_ms: now_ms,
            },
        )?;
        Ok(MarkerKeeper {
            data_dir: data_dir.to_path_buf(),
            written: commit,
            written_at: Instant::now(),
        })
    }

    /// `commit` is durable: recorded if the marker lags and a second has passed.
    pub fn durable(&mut self, commit: u64, now_ms: u64) -> StoreResult<()> {
        if commit <= self.written || self.written_at.elapsed() < MARKER_EVERY {
            return Ok(());
        }
        write_marker(
            &self.data_dir,
            &Marker {
                commit,
                clean: false,
                at_ms: now_ms,
            },
        )?;
        self.written = commit;
        self.written_at = Instant::now();
        Ok(())
    }

    /// A clean stop: `commit` is the last, and nothing of it is only in the journal.
    pub fn stopped(&mut self, commit: u64, now_ms: u64) -> StoreResult<()> {
        write_marker(
            &self.data_dir,
            &Marker {
                commit,
                clean: true,
                at_ms: now_ms,
            },
        )?;
        self.written = commit;
        Ok(())
    }
}

/// Keeps the marker of a running store on a thread of its own: writing it takes three
/// syncs (the file, the rename, the directory: milliseconds), which no commit waits for.
/// The marker records the newest durable commit it was told of, at most once a second
/// and at most a second late. Telling it costs a commit two atomic operations: the
/// thread is woken by the first commit after each write only, not by every commit.
pub struct MarkerThread {
    told: Arc<Told>,
    thread: std::thread::JoinHandle<MarkerKeeper>,
}

/// What commits tell the marker's thread.
#[derive(Default)]
struct Told {
    /// The newest durable commit told.
    newest: AtomicU64,
    /// A commit was told since the thread last took `newest`.
    pending: AtomicBool,
    /// Set by a clean stop.
    stopping: Mutex<bool>,
    wake: Condvar,
}

/// Tells the marker's thread of durable commits; cloned into each commit.
#[derive(Clone)]
pub struct MarkerTeller(Arc<Told>);

impl MarkerTeller {
    /// `commit` is durable.
    pub fn tell(&self, commit: u64) {
        let told = &self.0;
        told.newest.fetch_max(commit, Ordering::SeqCst);
        if !told.pending.swap(true, Ordering::SeqCst) {
            // Under the lock, so that the thread cannot miss it between looking at
            // `pending` and waiting.
            let _stopping = told.stopping.lock();
            told.wake.notify_one();
        }
    }
}

impl Told {
    /// Waits until `ready` holds or a stop is asked for, or until `until` if given;
    /// whether a stop was asked for.
    fn wait(&self, until: Option<Instant>, ready: impl Fn() -> bool) -> bool {
        let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stopping {
                return true;
            }
            if ready() {
                return false;
            }
            stopping = match until {
                None => self.wake.wait(stopping).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.wake
                        .wait_timeout(stopping, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

impl MarkerThread {
    pub fn start(mut keeper: MarkerKeeper) -> StoreResult<MarkerThread> {
        let told = Arc::new(Told::default());
        let shared = told.clone();
        let thread = std::thread::Builder::new()
            .name("jobcast-marker".into())
            .spawn(move || {
                let told = shared;
                loop {
                    if told.wait(None, || told.pending.load(Ordering::SeqCst)) {
                        break;
                    }
                    // Waits out the second since the last write; commits told meanwhile
                    // only raise `newest`.
                    let due = keeper.written_at + MARKER_EVERY;
                    if told.wait(Some(due), || Instant::now() >= due) {
                        break;
                    }
                    // Cleared before `newest` is read: a commit told after this wakes
                    // the thread again, one told before is in `newest`.
                    told.pending.store(false, Ordering::SeqCst);
                    let newest = told.newest.load(Ordering::SeqCst);
                    if let Err(e) = keeper.durable(newest, wall_ms()) {
                        tracing::warn!(error = %e, "the store's marker could not be written; will retry");
                        told.pending.store(true, Ordering::SeqCst);
                        let retry = Instant::now() + MARKER_EVERY;
                        if told.wait(Some(retry), || Instant::now() >= retry) {
                            break;
                        }
                    }
                }
                keeper
            })
            .map_err(|e| StoreError::Engine(Box::new(e)))?;
        Ok(MarkerThread { told, thread })
    }

    /// What a commit tells once it is durable (from any thread).
    pub fn teller(&self) -> MarkerTeller {
        MarkerTeller(self.told.clone())
    }

    /// A clean stop at `commit`, once every commit is done: the thread ends, then the
    /// marker says so.
    pub fn stopped(self, commit: u64, now_ms: u64) -> StoreResult<()> {
        let MarkerThread { told, thread } = self;
        *told.stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        told.wake.notify_one();
        let mut keeper = thread
            .join()
            .map_err(|_| StoreError::Engine("the marker's thread panicked".into()))?;
        keeper.stopped(commit, now_ms)
    }
}

/// The wall clock, ms since the epoch (0 before it).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(commit: u64, clean: bool) -> Marker {
        Marker {
            commit,
            clean,
            at_ms: 1,
        }
    }

    #[test]
    fn a_store_behind_its_marker_or_off_a_clean_stop_is_damaged() {
        let (store, dir) = (Path::new("/data/store.fjall"), Path::new("/data"));
        // Running: the store may be ahead of the marker (it lags a second), never behind.
        assert!(check(Some(&marker(10, false)), 10, store, dir).is_ok());
        assert!(check(Some(&marker(10, false)), 12, store, dir).is_ok());
        let behind = check(Some(&marker(10, false)), 7, store, dir).unwrap_err();
        assert!(
            behind.contains("/data/store.fjall") && behind.contains("/data/store.marker"),
            "{behind}"
        );
        assert!(
            behind.contains("commit 7") && behind.contains("commit 10"),
            "{behind}"
        );
        // Stopped cleanly: exactly.
        assert!(check(Some(&marker(10, true)), 10, store, dir).is_ok());
        assert!(check(Some(&marker(10, true)), 9, store, dir).is_err());
        assert!(check(Some(&marker(10, true)), 11, store, dir).is_err());
        // No marker: only a store from before the count.
        assert!(check(None, 0, store, dir).is_ok());
        assert!(check(None, 3, store, dir).unwrap_err().contains("missing"));
    }

    #[test]
    fn the_marker_is_written_at_most_once_a_second_while_running_and_at_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut keeper = MarkerKeeper::start(dir.path(), 5, 100).unwrap();
        assert_eq!(
            read_marker(dir.path()).unwrap(),
            Some(marker_at(5, false, 100))
        );
        keeper.durable(6, 200).unwrap();
        assert_eq!(
            read_marker(dir.path()).unwrap().unwrap().commit,
            5,
            "within the second"
        );
        keeper.written_at -= MARKER_EVERY;
        keeper.durable(7, 300).unwrap();
        assert_eq!(
            read_marker(dir.path()).unwrap(),
            Some(marker_at(7, false, 300))
        );
        keeper.stopped(8, 400).unwrap();
        assert_eq!(
            read_marker(dir.path()).unwrap(),
            Some(marker_at(8, true, 400))
        );
        std::fs::write(marker_path(dir.path()), "commit = \"x\"").unwrap();
        assert!(matches!(
            read_marker(dir.path()),
            Err(StoreError::Damaged(_))
        ));
    }

    #[test]
    fn the_marker_thread_records_the_newest_commit_within_a_second_and_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = MarkerKeeper::start(dir.path(), 5, 100).unwrap();
        let thread = MarkerThread::start(keeper).unwrap();
        let teller = thread.teller();
        for commit in 6..=9 {
            teller.tell(commit);
        }
        // Not before the second since the start is out, then the newest.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let marker = read_marker(dir.path()).unwrap().unwrap();
            if marker.commit == 9 {
                assert!(!marker.clean);
                break;
            }
            assert_eq!(marker.commit, 5, "only the start's or the newest commit");
            assert!(Instant::now() < deadline, "commit 9 never recorded");
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.stopped(10, 500).unwrap();
        assert_eq!(
            read_marker(dir.path()).unwrap(),
            Some(marker_at(10, true, 500))
        );
    }

    fn marker_at(commit: u64, clean: bool, at_ms: u64) -> Marker {
        Marker {
            commit,
            clean,
            at_ms,
        }
    }
}
