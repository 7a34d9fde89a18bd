//! Free space in the data directory: under the reserve, the broker takes no new work, so
//! that the store never runs out of space in the middle of a write (sled cannot even
//! open a store on a full disk). Runs already out finish and are recorded.

use crate::store::Store;
use crate::{Core, CoreError};

/// Free space is back to normal once it is this much over the reserve (a quarter of it),
/// so that a disk hovering at the reserve does not flip the broker every check.
const RELEASE_MARGIN_DIVISOR: u64 = 4;

/// Free space found under the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowDisk {
    pub free_bytes: u64,
    pub reserve_bytes: u64,
}

impl LowDisk {
    pub fn describe(&self) -> String {
        format!(
            "the broker's data directory has {} free, under its reserve of {} (min_free_bytes): \
             it takes no new work until space is freed",
            mebibytes(self.free_bytes),
            mebibytes(self.reserve_bytes)
        )
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// What a free-space reading changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChange {
    Unchanged,
    BecameLow(LowDisk),
    Recovered { free_bytes: u64 },
}

impl<S: Store> Core<S> {
    /// Takes a reading of the free space in the data directory. A reserve of 0 turns the
    /// check off.
    pub fn note_free_space(&mut self, free_bytes: u64, reserve_bytes: u64) -> DiskChange {
        let was_low = self.process.low_disk.is_some();
        let low = if was_low {
            free_bytes < reserve_bytes.saturating_add(reserve_bytes / RELEASE_MARGIN_DIVISOR)
        } else {
            free_bytes < reserve_bytes
        };
        self.process.low_disk = low.then_some(LowDisk {
            free_bytes,
            reserve_bytes,
        });
        match (was_low, self.process.low_disk) {
            (false, Some(low)) => DiskChange::BecameLow(low),
            (true, None) => {
                // Queued runs may start again: workers' held claims are answered at once
                // instead of at the next heartbeat's wake-up.
                for pool in self.tables.runs.pools_with_queued() {
                    self.tables.workers.waiting_mut().mark_dirty(&pool);
                }
                DiskChange::Recovered { free_bytes }
            }
            _ => DiskChange::Unchanged,
        }
    }

    /// Refuses a request that creates work while free space is under the reserve.
    pub(crate) fn check_room_for_new_work(&self) -> Result<(), CoreError> {
        match self.process.low_disk {
            Some(low) => Err(CoreError::DiskLow(low)),
            None => Ok(()),
        }
    }

    pub fn low_disk(&self) -> Option<LowDisk> {
        self.process.low_disk
    }
}
