//! `GetLog`: a run's stored output, whole or from an offset (for following). The run is
//! found when asked; its output is read once the batch is durable, away from the loop
//! where the store allows, and answered by [`log_reply`].

use crate::run_table::RunTable;
use crate::selector;
use crate::store::Store;
use crate::{CoreError, MAX_LOG_SLICE};
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
/// from `offset` on.
pub fn log_reply(run: RunRecord, chunks: &[(u64, Vec<u8>)], offset: Option<u64>) -> Reply {
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
    }
}
