//! Reads of stored history (listings of runs, a run's log), made on a thread of their
//! own: a listing that walks far back (up to `LISTING_SCAN` records) or a log of a
//! megabyte must not hold up the loop. A batch's reads are handed over once the batch is
//! durable, each with a reader of the store as it was when the batch was applied (a
//! snapshot, or a connection of its own that sees what is committed); what they find
//! comes back to the loop, which answers. Retention's walk reads its oldest runs here
//! too, for the same reason: a range read of the store may wait on the engine's locks.

use crate::store::{Listing, StoreResult};
use anyhow::{Context, Result};
use jobcast_core::store::{OldestRun, RunReader};
use jobcast_core::{BackupAsked, ListingAsked, LogAsked, OldestAsked};

/// Reads a batch asked for.
pub(super) struct Asked {
    pub(super) listings: Vec<ListingAsked>,
    pub(super) logs: Vec<LogAsked>,
    pub(super) oldest: Option<OldestAsked>,
}

/// What a read found, for the loop to answer with.
pub(super) enum Found {
    Listing(ListingAsked, StoreResult<Listing>),
    Log(LogAsked, StoreResult<Vec<(u64, Vec<u8>)>>),
    /// Retention's walk: the oldest runs it asked for.
    Oldest(OldestAsked, StoreResult<Vec<OldestRun>>),
    /// A backup written (or why not), as the reply to send.
    Backup(BackupAsked, Box<jobcast_protocol::Reply>),
}

pub(super) struct Reads {
    asked: std::sync::mpsc::Sender<(Box<dyn RunReader>, Asked)>,
    /// For reads made on threads of their own (backups).
    pub(super) tell: tokio::sync::mpsc::UnboundedSender<Found>,
    pub(super) found: tokio::sync::mpsc::UnboundedReceiver<Found>,
}

impl Reads {
    pub(super) fn start() -> Result<Reads> {
        let (asked, incoming) = std::sync::mpsc::channel::<(Box<dyn RunReader>, Asked)>();
        let (tell, found) = tokio::sync::mpsc::unbounded_channel();
        let told = tell.clone();
        std::thread::Builder::new()
            .name("jobcast-reads".into())
            .spawn(move || {
                for (mut reader, asked) in incoming {
                    for listing in asked.listings {
                        let runs = reader.listing(&listing.filter);
                        if tell.send(Found::Listing(listing, runs)).is_err() {
                            return;
                        }
                    }
                    for log in asked.logs {
                        let chunks = reader.log_chunks(&log.run.id);
                        if tell.send(Found::Log(log, chunks)).is_err() {
                            return;
                        }
                    }
                    if let Some(oldest) = asked.oldest {
                        let runs = reader.oldest_runs(oldest.from_seq, oldest.limit);
                        if tell.send(Found::Oldest(oldest, runs)).is_err() {
                            return;
                        }
                    }
                }
            })
            .context("cannot start the reads' thread")?;
        Ok(Reads {
            asked,
            tell: told,
            found,
        })
    }

    /// Reads what `asked` holds with `reader`, away from the loop.
    pub(super) fn read(&self, reader: Box<dyn RunReader>, asked: Asked) {
        // The thread ends only with the broker.
        let _ = self.asked.send((reader, asked));
    }
}
