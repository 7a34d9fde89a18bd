//! Records kept as a ring of settings: entry `seq` in slot `seq % capacity` under a
//! prefix, so the oldest is overwritten, never deleted, and each is written in the batch
//! that made it (the audit log, the alert history). The newest `capacity` are also kept
//! in memory, oldest first.

use crate::store::{Store, StoreError, StoreResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::VecDeque;

/// A record with its place in the ring.
pub(crate) trait Numbered {
    fn seq(&self) -> u64;
}

#[derive(Debug)]
pub(crate) struct Ring<T> {
    prefix: &'static str,
    /// What a damaged record is called in an error.
    what: &'static str,
    capacity: u64,
    entries: VecDeque<T>,
}

impl<T: Numbered + Serialize + DeserializeOwned> Ring<T> {
    /// From the store's settings, read once at start by whoever loads several rings.
    pub fn load(
        settings: &[(String, Vec<u8>)],
        prefix: &'static str,
        what: &'static str,
        capacity: u64,
    ) -> StoreResult<Ring<T>> {
        let mut entries = Vec::new();
        for (key, bytes) in settings {
            if !key.starts_with(prefix) {
                continue;
            }
            let entry: T = rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
                what,
                detail: format!("{key}: {e}"),
            })?;
            entries.push(entry);
        }
        entries.sort_by_key(T::seq);
        Ok(Ring {
            prefix,
            what,
            capacity,
            entries: entries.into(),
        })
    }

    /// The number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.entries.back().map_or(1, |e| e.seq() + 1)
    }

    /// Adds `entry` (numbered [`Ring::next_seq`]), writing it in the batch.
    pub fn push(&mut self, store: &mut impl Store, entry: T) -> StoreResult<()> {
        self.write(store, &entry)?;
        self.entries.push_back(entry);
        while self.entries.len() as u64 > self.capacity {
            self.entries.pop_front();
        }
        Ok(())
    }

    /// Changes the record numbered `seq`, if it is still kept, and writes it again.
    pub fn update(
        &mut self,
        store: &mut impl Store,
        seq: u64,
        change: impl FnOnce(&mut T),
    ) -> StoreResult<()> {
        let Some(first) = self.entries.front().map(T::seq) else {
            return Ok(());
        };
        let Some(entry) = seq
            .checked_sub(first)
            .and_then(|i| self.entries.get_mut(i as usize))
        else {
            return Ok(());
        };
        change(entry);
        let bytes = encode(self.what, entry)?;
        store.put_setting(&slot(self.prefix, self.capacity, seq), &bytes)
    }

    /// Newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().rev()
    }

    fn write(&self, store: &mut impl Store, entry: &T) -> StoreResult<()> {
        let bytes = encode(self.what, entry)?;
        store.put_setting(&slot(self.prefix, self.capacity, entry.seq()), &bytes)
    }
}

fn slot(prefix: &str, capacity: u64, seq: u64) -> String {
    format!("{prefix}{:05}", seq % capacity)
}

fn encode<T: Serialize>(what: &'static str, entry: &T) -> StoreResult<Vec<u8>> {
    rmp_serde::to_vec_named(entry).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}
