//! Where the broker's store lives in its data directory, and the one-time copy of a store
//! an earlier broker kept in sled into fjall (docs/ARCHITECTURE.md says why the engine
//! changed).

use super::engine::View;
use super::engine::{Engine, Tree};
use super::integrity::{self, wall_ms, MarkerKeeper, COMMIT_KEY};
use super::kv::{copy_records, replay_log, TREES};
use super::{io_error, FjallEngine, KvStore, SledEngine, Store, StoreError, StoreResult};
use jobcast_core::store::Copied;
use jobcast_protocol::RunState;
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// The broker's store: its records in fjall.
pub type BrokerStore = KvStore<FjallEngine>;

/// Block cache of the store when the config names none.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Block cache of the store a backup writes (it only writes).
const BACKUP_CACHE_BYTES: u64 = 8 << 20;

/// The store, under the data directory.
const CURRENT: &str = "store.fjall";
/// A copy in progress; renamed to `CURRENT` once complete.
const PARTIAL: &str = "store.fjall.partial";
/// Where brokers up to the switch kept their sled store.
const SLED: &str = "store";
/// Where that sled store is moved once copied: kept, not deleted.
const SLED_KEPT: &str = "store.sled-before-upgrade";
/// The store's write-ahead log (`wal.rs`), under the data directory.
const LOG: &str = "store.wal";
/// Size of the log's segments: two are allocated at any time (the one written and the
/// next), so this is small beside the free space a broker keeps (`min_free_bytes`, 64 MiB
/// by default). Each one filled costs the engine a sync, on the applier's thread: a few a
/// second at the broker's capacity.
const LOG_SEGMENT_BYTES: u64 = 4 << 20;

/// The commit count an engine's store holds, read before anything writes to it.
fn stored_commit(engine: &FjallEngine) -> StoreResult<u64> {
    let settings = engine.tree("settings")?;
    Ok(Tree::get(&settings, COMMIT_KEY)?
        .and_then(|bytes| bytes.as_slice().try_into().ok())
        .map_or(0, u64::from_be_bytes))
}

/// Writes every record `view` sees into a new store in `to`, a directory created here
/// (its parent must exist; it must not): a data directory a broker can open, with the
/// marker of a clean stop. Nothing is left in `to` when it fails.
pub fn write_backup(view: &dyn View, to: &Path) -> StoreResult<Copied> {
    std::fs::create_dir(to).map_err(|e| io_error("create the backup directory", to, e))?;
    let written = write_store_into(view, to);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(to);
    }
    written
}

fn write_store_into(view: &dyn View, data_dir: &Path) -> StoreResult<Copied> {
    let partial = data_dir.join(PARTIAL);
    let mut copied = Copied::default();
    let (commit, clean) = {
        let engine = FjallEngine::open(&partial, BACKUP_CACHE_BYTES)?;
        for name in TREES {
            let tree = engine.tree(name)?;
            for item in view.oldest_first(name, Bound::Unbounded, Bound::Unbounded) {
                let (key, value) = item?;
                Tree::insert(&tree, &key, &value)?;
                copied.records += 1;
                copied.bytes += (key.len() + value.len()) as u64;
            }
        }
        // Into the engine's tables, not only its journal: the copy is as a clean stop
        // leaves a store (if that wait runs out, the journal is durable all the same).
        let clean = engine.flush_journal()?;
        (stored_commit(&engine)?, clean)
    };
    integrity::write_marker(
        data_dir,
        &integrity::Marker {
            commit,
            clean,
            at_ms: wall_ms(),
        },
    )?;
    let current = data_dir.join(CURRENT);
    std::fs::rename(&partial, &current)
        .map_err(|e| io_error("rename the copied store to", &current, e))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error("sync", data_dir, e))?;
    Ok(copied)
}

/// Opens the store in `data_dir`, first copying a sled store left by an earlier broker.
/// A store that disagrees with its marker (damage that is not a crash's torn tail, see
/// `integrity.rs`) is refused with [`StoreError::Damaged`], before anything is written.
pub fn open_in(data_dir: &Path, cache_bytes: u64) -> StoreResult<BrokerStore> {
    let current = data_dir.join(CURRENT);
    let sled = data_dir.join(SLED);
    if !current.exists() && sled.join("conf").exists() {
        copy_from_sled(data_dir, cache_bytes)?;
    }
    let marker = integrity::read_marker(data_dir)?;
    let engine = FjallEngine::open(&current, cache_bytes)?;
    let log = data_dir.join(LOG);
    replay_log(&engine, &log, false)?;
    integrity::check(marker.as_ref(), stored_commit(&engine)?, &current, data_dir)
        .map_err(|problem| {
            StoreError::Damaged(format!(
                "{problem}. Not started. `jobcast-broker --repair` opens what can be read and records every unfinished run as lost (none runs again); keep a copy of {} first",
                data_dir.display()
            ))
        })?;
    let store = KvStore::with_engine(engine)?.with_log(&log, LOG_SEGMENT_BYTES)?;
    let keeper = MarkerKeeper::start(data_dir, store.commit(), wall_ms())?;
    store.with_marker(keeper)
}

/// What `--repair` found and changed.
#[derive(Debug, Default)]
pub struct RepairReport {
    pub store: PathBuf,
    /// What was wrong; `None`: the store agreed with its marker and nothing was changed.
    pub problem: Option<String>,
    /// Unfinished runs (id, job, state they were in), now lost (cancelled if queued):
    /// any of them may have ended in a write the damage took.
    pub runs_ended: Vec<(String, String, RunState)>,
    /// Jobs whose last tick moved to the marker's time (job, from, to), so that no tick
    /// before it fires again.
    pub jobs_advanced: Vec<(String, u64, u64)>,
}

/// Opens a damaged store as far as it can be read and makes it safe to start on: every
/// unfinished run is ended (a finished run whose end the damage took is never run
/// again), every job's last tick moves up to when the marker was written. Never run by
/// itself: the operator asks for it (`jobcast-broker --repair`).
pub fn repair_in(data_dir: &Path, cache_bytes: u64) -> StoreResult<RepairReport> {
    let current = data_dir.join(CURRENT);
    let (marker, unreadable) = match integrity::read_marker(data_dir) {
        Ok(marker) => (marker, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let engine = FjallEngine::open(&current, cache_bytes)?;
    // What the log holds up to any damage; then the log goes (the engine has it).
    let log = data_dir.join(LOG);
    let replayed = replay_log(&engine, &log, true)?;
    super::wal::remove_all(&log)?;
    let problem = replayed.damage.or(unreadable).or_else(|| {
        integrity::check(
            marker.as_ref(),
            stored_commit(&engine).ok()?,
            &current,
            data_dir,
        )
        .err()
    });
    let mut report = RepairReport {
        store: current,
        problem,
        ..Default::default()
    };
    let mut store = KvStore::with_engine(engine)?;
    if report.problem.is_none() {
        return Ok(report);
    }
    let now = wall_ms();
    let cause = "store repaired: acknowledged writes were missing, so this run may have ended already; not run again";
    for mut run in store.active_runs()? {
        let was = run.state;
        let to = match was {
            RunState::Queued => RunState::Cancelled,
            _ => RunState::Lost,
        };
        if run.transition(to, now, cause).is_ok() {
            store.put_run(&run)?;
            report.runs_ended.push((run.id, run.job, was));
        }
    }
    let since = marker.map_or(now, |m| m.at_ms);
    for (job, mut state) in store.job_states()? {
        if state.last_tick_ms < since {
            report
                .jobs_advanced
                .push((job.clone(), state.last_tick_ms, since));
            state.last_tick_ms = since;
            store.put_job_state(&job, &state)?;
        }
    }
    let keeper = MarkerKeeper::start(data_dir, store.commit(), now)?;
    let mut store = store.with_marker(keeper)?;
    store.close_cleanly()?;
    Ok(report)
}

/// Copies the sled store into a new fjall store, then moves the sled one aside. A copy
/// cut short (the broker killed) is started over at the next start: the new store only
/// takes its name once complete.
fn copy_from_sled(data_dir: &Path, cache_bytes: u64) -> StoreResult<()> {
    let (sled, partial) = (data_dir.join(SLED), data_dir.join(PARTIAL));
    tracing::warn!(
        from = %sled.display(),
        "copying the store of an earlier broker (sled) into the current engine (fjall)"
    );
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .map_err(|e| io_error("remove the unfinished copy", &partial, e))?;
    }
    let (copied, commit) = {
        let from = SledEngine::open(&sled, cache_bytes)?;
        let to = FjallEngine::open(&partial, cache_bytes)?;
        (copy_records(&from, &to)?, stored_commit(&to)?)
    };
    // The copy is durable: the marker starts from it.
    integrity::write_marker(
        data_dir,
        &integrity::Marker {
            commit,
            clean: false,
            at_ms: wall_ms(),
        },
    )?;
    let current = data_dir.join(CURRENT);
    std::fs::rename(&partial, &current)
        .map_err(|e| io_error("rename the copied store to", &current, e))?;
    let kept = data_dir.join(SLED_KEPT);
    std::fs::rename(&sled, &kept).map_err(|e| io_error("move the sled store to", &kept, e))?;
    tracing::warn!(
        records = copied,
        kept = %kept.display(),
        "store copied; the sled store is kept beside it: remove it once this broker has run well"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use jobcast_protocol::{Exec, JobSpec, RunFilter, RunRecord, RunState};

    #[test]
    fn a_sled_store_of_an_earlier_broker_is_copied_whole_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobSpec::new("nightly", "default", Exec::Command(vec!["true".into()]));
        let mut runs = Vec::new();
        {
            let engine = SledEngine::open(&dir.path().join(SLED), 8 << 20).unwrap();
            let mut old = KvStore::with_engine(engine).unwrap();
            old.put_job(&job).unwrap();
            for seq in 1..=5 {
                let mut run = RunRecord::queued(format!("run{seq}"), seq, job.clone(), seq, "q");
                if seq < 5 {
                    run.state = RunState::Succeeded;
                }
                old.create_run(&run).unwrap();
                old.put_log_chunk(&run.id, 0, b"log line\n").unwrap();
                runs.push(run);
            }
            old.delete_run(&runs.remove(0)).unwrap();
            old.put_setting("disabled_pools", b"[]").unwrap();
            old.flush().unwrap();
        }
        // A copy cut short before: started over.
        std::fs::create_dir_all(dir.path().join(PARTIAL).join("junk")).unwrap();

        let store = open_in(dir.path(), 8 << 20).unwrap();
        assert_eq!(store.jobs().unwrap(), vec![job]);
        let mut listed = store
            .runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .runs;
        listed.reverse();
        assert_eq!(listed, runs);
        assert_eq!(store.run_count().unwrap(), 4, "the pruned count came along");
        assert_eq!(store.active_runs().unwrap().len(), 1);
        assert_eq!(store.log_chunks("run3").unwrap()[0].1, b"log line\n");
        assert_eq!(
            store.setting("disabled_pools").unwrap().as_deref(),
            Some(&b"[]"[..])
        );
        assert!(dir.path().join(SLED_KEPT).join("conf").exists());
        assert!(!dir.path().join(SLED).exists());
        assert!(!dir.path().join(PARTIAL).exists());
        drop(store);
        // Later starts open the copy and leave the kept sled store alone.
        let again = open_in(dir.path(), 8 << 20).unwrap();
        assert_eq!(again.run_count().unwrap(), 4);
    }
}

#[cfg(test)]
mod damage_tests {
    use super::*;
    use jobcast_protocol::{Exec, JobSpec, RunRecord};

    #[test]
    fn a_backup_holds_the_store_as_its_reader_saw_it_and_opens_as_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_in(&dir.path().join("data"), 8 << 20).unwrap();
        let job = JobSpec::new("job", "default", Exec::Command(vec!["true".into()]));
        store.put_job(&job).unwrap();
        for seq in 1..=3 {
            let run = RunRecord::queued(format!("run{seq}"), seq, job.clone(), seq, "q");
            store.create_run(&run).unwrap();
            store.put_log_chunk(&run.id, 0, b"out\n").unwrap();
        }
        store.flush().unwrap();
        let mut reader = store.reader().expect("a snapshot reader");
        // Written after the snapshot: not in the copy.
        let late = RunRecord::queued("run4".into(), 4, job.clone(), 4, "q");
        store.create_run(&late).unwrap();
        store.flush().unwrap();

        let to = dir.path().join("backup");
        let copied = reader.back_up(&to).unwrap();
        assert!(copied.records > 6 && copied.bytes > 0, "{copied:?}");
        let again = reader
            .back_up(&to)
            .expect_err("an existing directory is refused");
        assert!(again.to_string().contains("exists"), "{again}");
        let nowhere = dir.path().join("missing").join("backup");
        assert!(reader.back_up(&nowhere).is_err());
        assert!(!nowhere.exists());
        drop(reader);

        let backup = open_in(&to, 8 << 20).unwrap();
        assert_eq!(backup.run_count().unwrap(), 3);
        assert!(backup.run("run4").unwrap().is_none());
        assert_eq!(
            backup.log_chunks("run2").unwrap(),
            vec![(0, b"out\n".to_vec())]
        );
        assert_eq!(backup.jobs().unwrap().len(), 1);
        // The source goes on untouched.
        assert!(store.run("run4").unwrap().is_some());
    }

    fn journal_files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "jnl") {
                    found.push(path);
                }
            }
        }
        found
    }

    /// How much of a journal holds records: fjall allocates the file ahead, in zeros.
    fn written_len(journal: &Path) -> u64 {
        let bytes = std::fs::read(journal).unwrap();
        bytes
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |at| at as u64 + 1)
    }

    /// A broker's store with `runs` runs, created in batches of their own, then ended in
    /// batches of their own (so a store that lost the later half has them unfinished);
    /// the marker has caught up. Left without a clean stop (as by a SIGKILL) unless
    /// `clean`.
    fn store_with_runs(dir: &Path, runs: u64, clean: bool) {
        let mut store = open_in(dir, 8 << 20).unwrap();
        let job = JobSpec::new("job", "default", Exec::Command(vec!["true".into()]));
        store.put_job(&job).unwrap();
        let all: Vec<RunRecord> = (1..=runs)
            .map(|seq| RunRecord::queued(format!("run{seq}"), seq, job.clone(), seq, "q"))
            .collect();
        for run in &all {
            store.create_run(run).unwrap();
            store.flush().unwrap();
        }
        for mut run in all {
            run.transition(RunState::Assigned, 1, "granted").unwrap();
            run.transition(RunState::Running, 1, "started").unwrap();
            run.transition(RunState::Succeeded, 1, "exited 0").unwrap();
            store.put_run(&run).unwrap();
            store.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        store.flush().unwrap();
        if clean {
            store.close_cleanly().unwrap();
        }
        // Dropped: without `close_cleanly`, what only the journal holds stays there.
    }

    fn refused(dir: &Path) -> String {
        let err = open_in(dir, 8 << 20)
            .err()
            .expect("a damaged store is refused");
        let text = err.to_string();
        assert!(
            text.contains("store.fjall") && text.contains("store.marker"),
            "{text}"
        );
        text
    }

    /// `--repair` ends what the damage left unfinished, and the store opens after it with
    /// nothing to run again.
    fn repaired(dir: &Path) -> RepairReport {
        let report = repair_in(dir, 8 << 20).unwrap();
        assert!(report.problem.is_some());
        let store = open_in(dir, 8 << 20).expect("opens after the repair");
        assert!(
            store.active_runs().unwrap().is_empty(),
            "nothing left to run again"
        );
        for (id, _, was) in &report.runs_ended {
            let run = store.run(id).unwrap().unwrap();
            assert!(run.state.is_terminal(), "{id} was {was}");
        }
        report
    }

    /// Two stores of `runs` runs, left as by a SIGKILL, with `damage` done to each one's
    /// engine journal. The first keeps its write-ahead log, which holds every batch since
    /// the store was opened: it opens whole. The second loses its log too: refused (its
    /// text returned), then repaired.
    fn journal_damaged(runs: u64, damage: impl Fn(&Path)) -> (String, RepairReport) {
        let (kept, lost) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [kept.path(), lost.path()] {
            store_with_runs(dir, runs, false);
            for journal in journal_files(dir) {
                damage(&journal);
            }
        }
        let store = open_in(kept.path(), 8 << 20).expect("the log makes up for the journal");
        assert_eq!(store.run_count().unwrap(), runs);
        assert!(
            store.active_runs().unwrap().is_empty(),
            "every end replayed"
        );
        std::fs::remove_dir_all(lost.path().join(LOG)).unwrap();
        (refused(lost.path()), repaired(lost.path()))
    }

    #[test]
    fn a_journal_cut_in_half_is_refused_and_repair_ends_what_went_back() {
        let (refusal, report) = journal_damaged(200, |journal| {
            let data = written_len(journal);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(journal)
                .unwrap();
            file.set_len(data / 2).unwrap();
        });
        assert!(refusal.contains("acknowledged writes are missing"));
        assert!(report.runs_ended.len() > 50, "{report:?}");
    }

    #[test]
    fn four_kib_zeroed_in_the_middle_of_the_journal_is_refused() {
        let (refusal, _) = journal_damaged(200, |journal| {
            let data = written_len(journal) as usize;
            let mut bytes = std::fs::read(journal).unwrap();
            bytes[data / 2..data / 2 + 4096].fill(0);
            std::fs::write(journal, bytes).unwrap();
        });
        assert!(refusal.contains("acknowledged writes are missing"));
    }

    #[test]
    fn a_deleted_journal_is_refused() {
        journal_damaged(50, |journal| std::fs::remove_file(journal).unwrap());
    }

    #[test]
    fn a_damaged_record_in_the_log_is_refused_and_repair_keeps_what_comes_before() {
        let dir = tempfile::tempdir().unwrap();
        store_with_runs(dir.path(), 100, false);
        // fjall's journal lost too, so that the records after the damage are needed.
        for journal in journal_files(dir.path()) {
            std::fs::remove_file(journal).unwrap();
        }
        let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.path().join(LOG))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        segments.sort();
        // The first holds the records (the second is the spare, all zeros).
        let segment = &segments[0];
        let mut bytes = std::fs::read(segment).unwrap();
        let written = written_len(segment) as usize;
        bytes[written / 2] ^= 0x5a;
        std::fs::write(segment, bytes).unwrap();
        let refused = open_in(dir.path(), 8 << 20)
            .err()
            .expect("damage in the log is refused")
            .to_string();
        assert!(
            refused.contains(".wal") && refused.contains("damaged record"),
            "{refused}"
        );
        let report = repair_in(dir.path(), 8 << 20).unwrap();
        assert!(
            report
                .problem
                .as_deref()
                .is_some_and(|p| p.contains(".wal")),
            "{report:?}"
        );
        let store = open_in(dir.path(), 8 << 20).expect("opens after the repair");
        assert!(
            store.active_runs().unwrap().is_empty(),
            "nothing to run again"
        );
    }

    #[test]
    fn after_a_clean_stop_nothing_only_the_journal_holds_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        store_with_runs(dir.path(), 50, true);
        for journal in journal_files(dir.path()) {
            std::fs::remove_file(journal).unwrap();
        }
        let store = open_in(dir.path(), 8 << 20).expect("a clean stop needs no journal");
        assert_eq!(store.run_count().unwrap(), 50);
        assert!(store.active_runs().unwrap().is_empty());
    }

    #[test]
    fn a_missing_table_is_refused_naming_the_store() {
        let dir = tempfile::tempdir().unwrap();
        store_with_runs(dir.path(), 20, true);
        let table = {
            let mut found = None;
            let mut stack = vec![dir.path().to_path_buf()];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap().flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.parent().is_some_and(|p| p.ends_with("tables")) {
                        found = Some(path);
                    }
                }
            }
            found.expect("a table file")
        };
        std::fs::remove_file(&table).unwrap();
        let text = open_in(dir.path(), 8 << 20)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            text.contains("store.fjall") && text.contains("missing or damaged"),
            "{text}"
        );
    }

    #[test]
    fn a_torn_tail_after_a_crash_is_the_normal_case() {
        let dir = tempfile::tempdir().unwrap();
        store_with_runs(dir.path(), 20, false);
        // Garbage after the last record, as a write cut by a power loss leaves.
        for journal in journal_files(dir.path()) {
            let data = written_len(&journal) as usize;
            let mut bytes = std::fs::read(&journal).unwrap();
            bytes[data..data + 100].fill(0x5a);
            std::fs::write(&journal, bytes).unwrap();
        }
        let store = open_in(dir.path(), 8 << 20).expect("a torn tail opens silently");
        assert_eq!(store.run_count().unwrap(), 20);
    }
}
