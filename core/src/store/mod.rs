//! What the core needs from durable state: the [`Store`] trait, and an in-memory store
//! for tests of the core. The engines (fjall, sled) live in the broker.
//!
//! Writes are applied at once but only become durable at [`Store::flush`]; the server
//! calls it once per batch of requests (group commit) before it answers any of them.

mod memory;

pub use memory::{HeldCommits, MemoryStore};

use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The storage engine failed (its own error, kept as the source).
    #[error("store: {0}")]
    Engine(Box<dyn std::error::Error + Send + Sync>),
    /// A file of the store could not be read or written.
    #[error("store: cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("store holds an unreadable {what} record: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// Damage that is not a crash's torn tail (`integrity.rs`): the store is not opened.
    #[error("{0}")]
    Damaged(String),
    /// The commit was refused because this broker no longer holds the leader's lease
    /// (several brokers on one database): another broker may be acting, so this one must
    /// stop at once. Nothing of the refused commit was written.
    #[error("not the leader any more: {0}")]
    Fenced(String),
    /// Another process has the store open: two brokers (or a broker and `migrate`) on one
    /// data directory would each overwrite what the other wrote.
    #[error("it is in use by another process (a broker, or a migrate or restore, on the same data directory): stop that first, or give this broker a data directory of its own")]
    InUse,
    /// This kind of store does not do what was asked (e.g. a backup of PostgreSQL).
    #[error("{0}")]
    Unsupported(&'static str),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Told the outcome of a [`Store::start_flush`].
pub type FlushDone = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// What the broker needs from a store. Kept small so a second backend is easy to add.
pub trait Store: Send {
    fn jobs(&self) -> StoreResult<Vec<JobSpec>>;
    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()>;

    /// Writes a new run with its id index entry, and marks it unfinished.
    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()>;
    /// Rewrites an existing run; drops it from the unfinished index once it has ended.
    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()>;
    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>>;
    /// Whether a new random run id is taken. A store whose commit refuses a duplicate id
    /// by itself (a unique index) may answer from what it has not committed alone.
    fn run_id_taken(&self, id: &str) -> StoreResult<bool> {
        Ok(self.run(id)?.is_some())
    }
    /// Runs that are not in a terminal state.
    fn active_runs(&self) -> StoreResult<Vec<RunRecord>>;
    /// Newest first, filtered, at most `filter.limit`, looking at no more than
    /// [`LISTING_SCAN`] records (see [`Listing`]).
    fn runs(&self, filter: &RunFilter) -> StoreResult<Listing>;
    /// Ids of stored runs that start with `prefix`, in id order, at most `limit` (a range
    /// read: it costs `limit`, not the number of runs).
    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>>;
    /// The highest run sequence number stored, 0 if none.
    fn last_run_seq(&self) -> StoreResult<u64>;
    fn run_count(&self) -> StoreResult<u64>;
    /// Runs with a sequence number of at least `from_seq`, oldest first, at most `limit`.
    fn oldest_runs(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<RunRecord>>;
    /// Removes a finished run, its id and its log. `run` is one read from this store
    /// (retention's `oldest_runs`); deleting it again changes nothing. Never called for
    /// the newest run, so `last_run_seq` only grows.
    fn delete_run(&mut self, run: &RunRecord) -> StoreResult<()>;
    /// Removes a finished run as a reader found it ([`RunReader::oldest_runs`]), without
    /// reading the store: its log's chunks are those the reader found. Called only for a
    /// run no other deletion has taken since and whose log has not grown since (a run
    /// given up as lost, whose output may still come, goes through `delete_run`). By
    /// default, `delete_run`.
    fn delete_found_run(&mut self, found: &OldestRun) -> StoreResult<()> {
        self.delete_run(&found.run)
    }
    /// Whether retention's walk reads the oldest runs with a [`Store::reader`], away from
    /// the loop (the loop then never waits on those reads), rather than on the loop.
    fn walks_away(&self) -> bool {
        false
    }

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()>;
    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()>;
    /// Chunks of a run's log in stream order: (offset, bytes).
    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>>;

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>>;
    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()>;

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>>;
    fn put_job_state(&mut self, job: &str, state: &JobState) -> StoreResult<()>;

    /// Small named settings (e.g. the disabled pools).
    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()>;
    /// Every setting, by key (moving a store whole).
    fn settings(&self) -> StoreResult<Vec<(String, Vec<u8>)>>;

    /// Makes every write so far durable.
    fn flush(&mut self) -> StoreResult<()>;

    /// Starts making every write so far durable and returns without waiting; `done` is
    /// called with the outcome, from whatever thread commits. Outcomes come in the order
    /// the calls were made, and once one has failed every later one fails too (a later
    /// batch may build on the failed one). The loop hands a batch over this way and goes
    /// on with the next while it commits. By default, a flush now.
    fn start_flush(&mut self, done: FlushDone) {
        done(self.flush());
    }

    /// A clean stop: every write durable and, where the engine keeps a journal, nothing
    /// left that only the journal holds.
    /// The loop was told the outcome of the oldest commit [`Store::start_flush`] started
    /// (in order, one call per flush): a store that reads its commits in flight back
    /// from memory lets that one go.
    fn commit_told(&mut self) {}

    fn close_cleanly(&mut self) -> StoreResult<()> {
        self.flush()
    }

    /// A reader of the stored runs as they are now (the writes made so far included),
    /// for another thread: listings are read there rather than on the loop. `None` if
    /// the store cannot be read from another thread (then the loop reads it).
    fn reader(&self) -> Option<Box<dyn RunReader>> {
        None
    }

    /// Whether the engine is behind on writing out what it was given, so that more
    /// optional writes now (retention's deletes) would hold up the rest.
    fn is_backlogged(&self) -> bool {
        false
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub records: u64,
    pub bytes: u64,
}

/// A run retention's walk found ([`RunReader::oldest_runs`]), with the offsets of its
/// log's chunks (empty where the store deletes a log without naming its chunks).
#[derive(Debug, Clone, PartialEq)]
pub struct OldestRun {
    pub run: RunRecord,
    pub log_offsets: Vec<u64>,
}

/// Reads stored runs on a thread other than the loop's (see [`Store::reader`]).
pub trait RunReader: Send {
    /// As [`Store::runs`].
    fn runs(&mut self, filter: &RunFilter) -> StoreResult<Listing>;
    /// As [`Store::log_chunks`].
    fn log_chunks(&mut self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>>;
    /// A run by its id.
    fn run(&mut self, id: &str) -> StoreResult<Option<RunRecord>>;
    /// As [`Store::oldest_runs`], each run with its log's chunks (for
    /// [`Store::delete_found_run`]).
    fn oldest_runs(&mut self, from_seq: u64, limit: usize) -> StoreResult<Vec<OldestRun>>;

    /// Writes a copy of the store as this reader sees it into the new directory `to`, a
    /// store a broker can open; what it wrote. Only a store that reads from a snapshot
    /// can do it consistently while the broker runs.
    fn back_up(&mut self, to: &std::path::Path) -> StoreResult<Copied> {
        let _ = to;
        Err(StoreError::Unsupported(
            "this kind of store is not copied by the broker",
        ))
    }

    /// A listing; a search for a whole run id is a lookup (see [`listing_by_id`]), one
    /// for output reads the runs' logs (see [`listing_by_output`]).
    fn listing(&mut self, filter: &RunFilter) -> StoreResult<Listing> {
        if let Some(listing) = listing_by_id(filter, |id| self.run(id))? {
            return Ok(listing);
        }
        if filter.output.is_some() {
            let reader = std::cell::RefCell::new(self);
            return listing_by_output(
                filter,
                |page| reader.borrow_mut().runs(page),
                |id| reader.borrow_mut().log_chunks(id),
            );
        }
        self.runs(filter)
    }
}

/// Runs whose output one listing reads at most, and bytes of output: a search for text
/// in output reads each candidate's log, so it stops after this much and says where to go
/// on (as a listing that looked at [`LISTING_SCAN`] records does).
pub const OUTPUT_SCAN_RUNS: usize = 2_000;
pub const OUTPUT_SCAN_BYTES: u64 = 64 << 20;
/// Runs asked of the store at a time while searching output.
const OUTPUT_PAGE: u32 = 200;

/// The listing of a search in output: the runs passing the other filters, newest first,
/// whose stored output contains `filter.output` (any case), within [`OUTPUT_SCAN_RUNS`]
/// and [`OUTPUT_SCAN_BYTES`].
pub fn listing_by_output(
    filter: &RunFilter,
    mut runs: impl FnMut(&RunFilter) -> StoreResult<Listing>,
    mut log: impl FnMut(&str) -> StoreResult<Vec<(u64, Vec<u8>)>>,
) -> StoreResult<Listing> {
    let needle = filter
        .output
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .into_bytes();
    let mut page = RunFilter {
        output: None,
        limit: OUTPUT_PAGE,
        ..filter.clone()
    };
    let (mut found, mut looked, mut bytes) = (Vec::new(), 0usize, 0u64);
    loop {
        let listing = runs(&page)?;
        let exhausted = listing.runs.len() < OUTPUT_PAGE as usize;
        for run in listing.runs {
            if found.len() >= filter.limit as usize {
                return Ok(Listing {
                    runs: found,
                    resume_before: None,
                });
            }
            if looked >= OUTPUT_SCAN_RUNS || bytes >= OUTPUT_SCAN_BYTES {
                return Ok(Listing {
                    runs: found,
                    resume_before: Some(match filter.after_seq {
                        Some(_) => run.seq - 1,
                        None => run.seq + 1,
                    }),
                });
            }
            looked += 1;
            let chunks = log(&run.id)?;
            bytes += chunks.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            if contains_any_case(&chunks, &needle) {
                found.push(run.clone());
            }
            match page.after_seq {
                Some(_) => page.after_seq = Some(run.seq),
                None => page.before_seq = Some(run.seq),
            }
        }
        match listing.resume_before {
            // The walk over records stopped early: go on from where it did.
            Some(resume) if exhausted => match page.after_seq {
                Some(_) => page.after_seq = Some(resume),
                None => page.before_seq = Some(resume),
            },
            _ if exhausted => {
                return Ok(Listing {
                    runs: found,
                    resume_before: None,
                })
            }
            _ => {}
        }
    }
}

/// Whether a log's chunks, as stored, contain `needle` (lower case) in any case; a match
/// across two chunks counts.
fn contains_any_case(chunks: &[(u64, Vec<u8>)], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let mut carried: Vec<u8> = Vec::new();
    for (_, chunk) in chunks {
        let mut window = std::mem::take(&mut carried);
        window.extend(chunk.iter().map(u8::to_ascii_lowercase));
        if window.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = needle.len().saturating_sub(1).min(window.len());
        carried = window[window.len() - keep..].to_vec();
    }
    false
}

/// The listing of a search for a whole run id (16 hex digits): that run, looked up by
/// its id however old, or nothing, when it does not pass the other filters; `None` when
/// the text is not a whole id, or no run has it (then the listing walks as for any text).
pub fn listing_by_id(
    filter: &RunFilter,
    run: impl FnOnce(&str) -> StoreResult<Option<RunRecord>>,
) -> StoreResult<Option<Listing>> {
    let Some(text) = filter.text.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Some(found) = run(&text.to_ascii_lowercase())? else {
        return Ok(None);
    };
    let shown = filter.matches(&found)
        && filter.before_seq.is_none_or(|before| found.seq < before)
        && filter.after_seq.is_none_or(|after| found.seq > after)
        && filter.since_ms.is_none_or(|t| found.created_at_ms >= t)
        && filter.until_ms.is_none_or(|t| found.created_at_ms < t)
        && filter.limit > 0;
    Ok(Some(Listing {
        runs: if shown { vec![found] } else { Vec::new() },
        resume_before: None,
    }))
}

/// Stored records one listing looks at, at most: a filter that matches little must not
/// hold the loop for a walk over the whole store (a few tens of ms at most).
pub const LISTING_SCAN: usize = 20_000;

/// A listing's runs, and where it stopped when it looked at [`LISTING_SCAN`] records
/// before finding `limit` runs: the sequence number to go on from (as `before_seq`).
#[derive(Debug, Default, PartialEq)]
pub struct Listing {
    pub runs: Vec<RunRecord>,
    pub resume_before: Option<u64>,
}

/// Applies `filter` to runs given in its order (newest first; oldest first when it asks
/// from `after_seq`): the listing every backend returns.
pub fn list_newest_first(
    runs: impl Iterator<Item = StoreResult<RunRecord>>,
    filter: &RunFilter,
) -> StoreResult<Listing> {
    let oldest_first = filter.after_seq.is_some();
    let mut listed = Vec::new();
    for (looked, run) in runs.enumerate() {
        if listed.len() >= filter.limit as usize {
            break;
        }
        let run = run?;
        if looked == LISTING_SCAN {
            // Where the next listing in the same direction takes up.
            let go_on = if oldest_first {
                run.seq - 1
            } else {
                run.seq + 1
            };
            return Ok(Listing {
                runs: listed,
                resume_before: Some(go_on),
            });
        }
        let (too_old, too_new) = (
            filter.since_ms.is_some_and(|t| run.created_at_ms < t),
            filter.until_ms.is_some_and(|t| run.created_at_ms >= t),
        );
        // Everything further is beyond the range too.
        if (too_old && !oldest_first) || (too_new && oldest_first) {
            break;
        }
        if too_old || too_new || !filter.matches(&run) {
            continue;
        }
        listed.push(run);
    }
    Ok(Listing {
        runs: listed,
        resume_before: None,
    })
}
