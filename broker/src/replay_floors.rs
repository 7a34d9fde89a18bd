//! Per-sender replay floors kept across restarts.
//!
//! A new broker process refuses frames sealed before it started (its replay guard's memory
//! starts empty). That leaves frames sealed *ahead* of the broker's clock, inside the skew
//! window: accepted before a restart, their timestamps can still be after the next start.
//! For those the broker keeps, in the store and in the same batch as the frame's effects,
//! a floor past the frame's timestamp for its sender; the next process refuses that
//! sender's frames below it. Senders whose clocks are not ahead never write anything.

use crate::store::{Store, StoreError, StoreResult};
use jobcast_protocol::envelope::floor_after;
use std::collections::BTreeMap;

/// The setting the floors are kept in (a MessagePack map, sender → ms).
const SETTING: &str = "replay_floors";

#[derive(Debug, Default)]
pub struct ReplayFloors {
    kept: BTreeMap<String, u64>,
}

impl ReplayFloors {
    pub fn load(store: &impl Store) -> StoreResult<ReplayFloors> {
        let kept = match store.setting(SETTING)? {
            Some(bytes) => rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "replay floors",
                detail: e.to_string(),
            })?,
            None => BTreeMap::new(),
        };
        Ok(ReplayFloors { kept })
    }

    /// The floors to hand to the frame opener.
    pub fn floors(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.kept
            .iter()
            .map(|(sender, floor)| (sender.clone(), *floor))
    }

    /// A frame of `sender` sealed at `ts_ms` was accepted at `now_ms`: when it was sealed
    /// ahead past the sender's floor, the new floor is written into the current batch
    /// (durable with the frame's effects, before any answer).
    pub fn accepted(
        &mut self,
        store: &mut impl Store,
        sender: &str,
        ts_ms: u64,
        now_ms: u64,
    ) -> StoreResult<()> {
        let Some(floor) = floor_after(ts_ms, now_ms) else {
            return Ok(());
        };
        if self.kept.get(sender).is_some_and(|kept| *kept >= floor) {
            return Ok(());
        }
        self.kept.insert(sender.to_string(), floor);
        let bytes = rmp_serde::to_vec(&self.kept).unwrap_or_default();
        store.put_setting(SETTING, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_floor_is_kept_only_for_frames_sealed_ahead_and_read_back() {
        let mut store = MemoryStore::default();
        let mut floors = ReplayFloors::load(&store).unwrap();
        floors.accepted(&mut store, "w1", 9_000, 10_000).unwrap();
        assert_eq!(
            store.setting(SETTING).unwrap(),
            None,
            "behind the clock: nothing kept"
        );
        floors.accepted(&mut store, "w1", 35_000, 10_000).unwrap();
        floors
            .accepted(&mut store, "admin", 10_500, 10_000)
            .unwrap();
        let again = ReplayFloors::load(&store).unwrap();
        let kept: Vec<_> = again.floors().collect();
        assert_eq!(
            kept,
            vec![("admin".to_string(), 11_000), ("w1".to_string(), 36_000)]
        );
        // A lower floor never replaces a higher one.
        floors.accepted(&mut store, "w1", 20_000, 10_000).unwrap();
        let again = ReplayFloors::load(&store).unwrap();
        assert!(again.floors().any(|f| f == ("w1".to_string(), 36_000)));
    }
}
