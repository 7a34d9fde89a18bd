//! Hash maps and sets with a fast hasher whose keys are fixed (foldhash's `FixedState`).
//!
//! For tables the broker looks up many times a run or a tick (runs by id, counts by job
//! and pool, job states): std's SipHash cost ~5 % of a burst of ticks, and fixed keys
//! give the same iteration order for the same inserts on every run of the broker, so a
//! walk over a table decides the same way each time. The keys are ids the broker makes
//! and names the operator chose, so a hasher no one else can seed gives no one a handle
//! on it.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;
