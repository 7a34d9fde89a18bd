//! Free space in the data directory, read every 100 ms while requests flow (a `statvfs`
//! call); the core decides what a low disk means (`jobcast_core::LowDisk`).

use crate::config::BrokerConfig;
use crate::store::Store;
use jobcast_core::{Core, DiskChange};
use std::time::{Duration, Instant};

/// How often free space in the data directory is looked at while requests flow.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Free space in the data directory, read now and then (a `statvfs` call).
pub(super) struct SpaceCheck {
    dir: std::path::PathBuf,
    reserve_bytes: u64,
    next: Instant,
    /// The last failure to read it, logged once.
    failing: bool,
}

impl SpaceCheck {
    pub(super) fn new(config: &BrokerConfig) -> SpaceCheck {
        SpaceCheck {
            dir: config.data_dir.clone(),
            // The records are on the database's disk, not this one.
            reserve_bytes: if config.postgres.is_some() {
                0
            } else {
                config.min_free_bytes
            },
            next: Instant::now(),
            failing: false,
        }
    }

    /// Reads the free space at the next check, whenever it comes (a store open again).
    pub(super) fn check_soon(&mut self) {
        self.next = Instant::now();
    }

    /// Reads the free space if it is time, and tells the core.
    pub(super) fn check<S: Store>(&mut self, core: &mut Core<S>) {
        let now = Instant::now();
        if self.reserve_bytes == 0 || now < self.next {
            return;
        }
        self.next = now + SPACE_CHECK_INTERVAL;
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory");
                }
                return;
            }
        };
        self.failing = false;
        match core.note_free_space(free, self.reserve_bytes) {
            DiskChange::BecameLow(low) => tracing::error!(
                free_bytes = low.free_bytes,
                reserve_bytes = low.reserve_bytes,
                "{}",
                low.describe()
            ),
            DiskChange::Recovered { free_bytes } => {
                tracing::warn!(
                    free_bytes,
                    "free space is back over the reserve: taking new work again"
                )
            }
            DiskChange::Unchanged => {}
        }
    }
}
