//! Listings of stored runs, read on a thread of their own: a listing that walks far back
//! through history (up to `LISTING_SCAN` records) must not hold up the loop. A batch's
//! listings are handed over once the batch is durable, each with a reader of the store
//! as it was when the batch was applied (a snapshot, or a connection of its own that
//! sees what is committed); what they find comes back to the loop, which answers.

use crate::store::{Listing, StoreResult};
use anyhow::{Context, Result};
use jobcast_core::store::RunReader;
use jobcast_core::ListingAsked;

/// What a listing found, for the loop to answer with.
pub(super) type Found = (ListingAsked, StoreResult<Listing>);

pub(super) struct Listings {
    asked: std::sync::mpsc::Sender<(Box<dyn RunReader>, Vec<ListingAsked>)>,
    pub(super) found: tokio::sync::mpsc::UnboundedReceiver<Found>,
}

impl Listings {
    pub(super) fn start() -> Result<Listings> {
        let (asked, incoming) =
            std::sync::mpsc::channel::<(Box<dyn RunReader>, Vec<ListingAsked>)>();
        let (tell, found) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("jobcast-listings".into())
            .spawn(move || {
                for (mut reader, listings) in incoming {
                    for asked in listings {
                        let listing = reader.runs(&asked.filter);
                        if tell.send((asked, listing)).is_err() {
                            return;
                        }
                    }
                }
            })
            .context("cannot start the listings' thread")?;
        Ok(Listings { asked, found })
    }

    /// Reads `listings` with `reader`, away from the loop.
    pub(super) fn read(&self, reader: Box<dyn RunReader>, listings: Vec<ListingAsked>) {
        // The thread ends only with the broker.
        let _ = self.asked.send((reader, listings));
    }
}
