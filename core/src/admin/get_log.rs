//! `GetLog`: a run's stored output, whole or from an offset (for following). The run is
//! found when asked; its output is read once the batch is durable, away from the loop
//! where the store allows, and answered by [`log_reply`].

use crate::log_waiters::{HeldRead, MAX_LOG_WAIT_MS};
use crate::run_table::RunTable;
use crate::selector;
use crate::store::Store;
use crate::{Core, CoreError, LogAsked, Now, Outbox, ReplyTo, MAX_LOG_SLICE};
use jobcast_protocol::logcap::{self, LogCap};
use jobcast_protocol::{Reply, RunRecord};

/// Stored output from stream offset `from`, with a marker where bytes were cut, up to
/// [`MAX_LOG_SLICE`]. Returns the bytes and the offset to ask for next.
pub(crate) fn slice_from(chunks: &[(u64, Vec<u8>)], from: u64) -> (Vec<u8>, u64) {
    let mut data = Vec::new();
    let mut position = from;
    for (offset, bytes) in chunks {
        let end = offset + bytes.len() as u64;
        if end <= position {
            continue;
        }
        if data.len() >= MAX_LOG_SLICE {
            break;
        }
        if *offset > position {
            data.extend_from_slice(
                format!("\n[jobcast: {} bytes cut]\n", offset - position).as_bytes(),
            );
            position = *offset;
        }
        data.extend_from_slice(&bytes[(position - offset) as usize..]);
        position = end;
    }
    (data, position)
}

/// Handed the run table and the store: the run a `GetLog` means (its output is read
/// once the batch is durable, away from the loop where the store allows).
pub(super) fn find(
    runs: &RunTable,
    store: &impl Store,
    selector: &str,
) -> Result<RunRecord, CoreError> {
    let run_id = selector::resolve_one(runs, store, selector)?;
    selector::find_run(runs, store, &run_id)?.ok_or_else(|| CoreError::NoSuchRun {
        selector: selector.to_string(),
    })
}

/// The reply to a `GetLog`: the run, and its stored output whole (capped as stored) or
/// from `offset` on; `waited` when answered as its `wait_ms` asks.
pub fn log_reply(
    run: RunRecord,
    chunks: &[(u64, Vec<u8>)],
    offset: Option<u64>,
    waited: bool,
) -> Reply {
    let end = chunks.last().map(|(o, b)| o + b.len() as u64).unwrap_or(0);
    let (data, next_offset) = match offset {
        None => {
            let mut cap = LogCap::new((run.log_cap as usize).max(logcap::MIN_CAP));
            for (o, bytes) in chunks {
                cap.push(*o, bytes);
            }
            (cap.render(), end)
        }
        Some(from) => slice_from(chunks, from),
    };
    Reply::Log {
        run: Box::new(run.with_secrets_masked()),
        data,
        next_offset,
        waited,
    }
}

impl<S: Store> Core<S> {
    /// Answers `asked` once the batch is durable; with `wait_ms`, a read of an unfinished
    /// run with nothing past its offset is held until there is, or the run ends, or the
    /// wait runs out (`log_waiters`).
    pub(super) fn read_log(
        &mut self,
        mut asked: LogAsked,
        wait_ms: Option<u64>,
        now: Now,
        out: &mut Outbox,
    ) {
        if let (Some(wait_ms), Some(offset)) = (wait_ms, asked.offset) {
            asked.waited = true;
            let unfinished =
                !asked.run.state.is_terminal() && self.tables.runs.get(&asked.run.id).is_some();
            if unfinished && self.tables.logs.received_end(&asked.run.id) <= offset {
                let read = HeldRead {
                    to: asked.to.clone(),
                    id: asked.id,
                    offset,
                    deadline_ms: now.ms() + wait_ms.min(MAX_LOG_WAIT_MS),
                };
                match self.tables.log_waiters.hold(&asked.run.id, read) {
                    Ok(()) => return,
                    Err(_) => asked.waited = false,
                }
            }
        }
        out.logs.push(asked);
    }

    /// The reads held for `run` that its end or its output now answers.
    pub(crate) fn answer_held_reads(
        &self,
        run: &RunRecord,
        reads: Vec<HeldRead>,
        out: &mut Outbox,
    ) {
        for read in reads {
            out.logs.push(LogAsked {
                to: read.to,
                id: read.id,
                run: Box::new(run.clone()),
                offset: Some(read.offset),
                waited: true,
            });
        }
    }

    /// Gives up every held read (the core goes: its store failed, or its lease is
    /// lost): whom to answer, and the request id; the caller says to ask again.
    pub fn let_go_of_held_reads(&mut self) -> Vec<(ReplyTo, u64)> {
        self.tables
            .log_waiters
            .drain()
            .into_iter()
            .map(|read| (read.to, read.id))
            .collect()
    }

    /// Answers the held reads whose wait ran out, with their runs as they are.
    pub(crate) fn answer_expired_reads(&mut self, now: Now, out: &mut Outbox) {
        for (run_id, read) in self.tables.log_waiters.expired(now.ms()) {
            // A held read's run is unfinished: its end answers the reads held for it.
            if let Some(run) = self.tables.runs.get(&run_id) {
                let run = run.clone();
                self.answer_held_reads(&run, vec![read], out);
            }
        }
    }
}
