//! `Backup`: a copy of the store written on a thread of its own (a large store takes a
//! while, and listings must not wait behind it), from a snapshot taken when the batch that
//! asked was applied and handed over once that batch is durable; then the copy is opened
//! afresh and counted, and the count is the answer.

use super::reads::Found;
use crate::store::{self, Store, StoreError};
use jobcast_core::store::RunReader;
use jobcast_core::BackupAsked;
use jobcast_protocol::{ErrorCode, Reply};
use std::time::Instant;

/// Writes the backup `asked` for with `reader` (none: the store cannot give one now) and
/// tells the loop the reply.
pub(super) fn start(
    asked: BackupAsked,
    reader: Option<Box<dyn RunReader>>,
    tell: tokio::sync::mpsc::UnboundedSender<Found>,
) {
    let spawned = std::thread::Builder::new()
        .name("jobcast-backup".into())
        .spawn({
            let asked = asked.clone();
            let tell = tell.clone();
            move || {
                let reply = write(&asked, reader);
                let _ = tell.send(Found::Backup(asked, Box::new(reply)));
            }
        });
    if let Err(e) = spawned {
        let reply = refusal(ErrorCode::Internal, format!("cannot start a thread ({e})"));
        let _ = tell.send(Found::Backup(asked, Box::new(reply)));
    }
}

fn refusal(code: ErrorCode, message: String) -> Reply {
    Reply::Error { code, message }
}

fn write(asked: &BackupAsked, reader: Option<Box<dyn RunReader>>) -> Reply {
    let path = asked.path.display().to_string();
    let Some(mut reader) = reader else {
        return refusal(
            ErrorCode::Unavailable,
            "the store cannot be read consistently now; try again".into(),
        );
    };
    let started = Instant::now();
    let copied = match reader.back_up(&asked.path) {
        Ok(copied) => copied,
        Err(e @ (StoreError::Io { .. } | StoreError::Unsupported(_))) => {
            tracing::warn!(path, error = %e, "backup not written");
            return refusal(ErrorCode::BadRequest, format!("backup not written: {e}"));
        }
        Err(e) => {
            tracing::warn!(path, error = %e, "backup not written");
            return refusal(ErrorCode::Internal, format!("backup not written: {e}"));
        }
    };
    drop(reader);
    // Read back as a broker would open it: a copy that does not open is no backup.
    let counted = store::open_in(&asked.path, store::DEFAULT_CACHE_BYTES).and_then(|mut copy| {
        let tally = crate::migrate::tally(&copy)?;
        copy.close_cleanly()?;
        Ok(tally)
    });
    let tally = match counted {
        Ok(tally) => tally,
        Err(e) => {
            tracing::error!(path, error = %e, "a backup written does not read back");
            return refusal(
                ErrorCode::Internal,
                format!(
                    "the backup in {path} was written but does not read back ({e}): do not use it"
                ),
            );
        }
    };
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        path,
        runs = tally.runs,
        records = copied.records,
        bytes = copied.bytes,
        took_ms,
        "backup written"
    );
    Reply::BackedUp {
        path,
        runs: tally.runs,
        jobs: tally.jobs as u64,
        log_chunks: tally.log_chunks,
        records: copied.records,
        bytes: copied.bytes,
        took_ms,
    }
}
