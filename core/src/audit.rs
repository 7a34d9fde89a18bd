//! The audit log: what operators changed, by whom and when; the newest [`MAX_KEPT`] kept
//! in a ring of settings (`ring.rs`), each entry written in the batch that made the
//! change, so it is durable exactly when the change is.

use crate::ring::{Numbered, Ring};
use crate::store::{Store, StoreResult};
use crate::Scope;
use jobcast_protocol::AuditEntry;

/// Entries kept; the key of entry `seq` is slot `seq % MAX_KEPT`, so the oldest is
/// overwritten, never deleted.
pub const MAX_KEPT: u64 = 10_000;
/// Most entries one `Audit` answers with.
pub const MAX_PAGE: u32 = 1_000;
const PREFIX: &str = "audit/";

impl Numbered for AuditEntry {
    fn seq(&self) -> u64 {
        self.seq
    }
}

#[derive(Debug)]
pub(crate) struct AuditLog {
    entries: Ring<AuditEntry>,
}

/// A change to record: what, on what, and what came of it.
pub(crate) struct Change<'a> {
    pub action: &'a str,
    pub target: String,
    pub outcome: String,
}

impl AuditLog {
    pub fn load(settings: &[(String, Vec<u8>)]) -> StoreResult<AuditLog> {
        Ok(AuditLog {
            entries: Ring::load(settings, PREFIX, "audit log entry", MAX_KEPT)?,
        })
    }

    /// Records `change` as made now by `actor` (limited to `scope`'s teams).
    pub fn record(
        &mut self,
        store: &mut impl Store,
        actor: &str,
        scope: &Scope,
        change: Change<'_>,
        at_ms: u64,
    ) -> StoreResult<()> {
        let entry = AuditEntry {
            seq: self.entries.next_seq(),
            at_ms,
            actor: actor.to_string(),
            action: change.action.to_string(),
            target: change.target,
            outcome: change.outcome,
            teams: scope.team_list(),
        };
        tracing::info!(
            actor,
            action = change.action,
            target = %entry.target,
            outcome = %entry.outcome,
            "audit"
        );
        self.entries.push(store, entry)
    }

    /// Newest first: entries `scope` may see, below `before`, at most `limit`.
    pub fn page(&self, scope: &Scope, before: Option<u64>, limit: u32) -> Vec<AuditEntry> {
        self.entries
            .newest_first()
            .filter(|e| before.is_none_or(|before| e.seq < before))
            .filter(|e| scope.sees_entry_of(&e.teams))
            .take(limit.min(MAX_PAGE) as usize)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn kill(n: u64) -> Change<'static> {
        Change {
            action: "kill",
            target: format!("run{n}"),
            outcome: "killed".into(),
        }
    }

    #[test]
    fn entries_survive_a_restart_and_the_oldest_give_way_beyond_the_ring() {
        let mut store = MemoryStore::default();
        let mut log = AuditLog::load(&store.settings().unwrap()).unwrap();
        for n in 0..MAX_KEPT + 5 {
            log.record(&mut store, "key admin", &Scope::all(), kill(n), n)
                .unwrap();
        }
        let again = AuditLog::load(&store.settings().unwrap()).unwrap();
        let seqs = |log: &AuditLog| {
            log.entries
                .newest_first()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&again).len() as u64, MAX_KEPT);
        assert_eq!(seqs(&again).last(), Some(&6), "the oldest 5 gave way");
        assert_eq!(seqs(&again).first(), Some(&(MAX_KEPT + 5)));
        assert_eq!(seqs(&again), seqs(&log));
    }

    #[test]
    fn pages_run_newest_first_and_a_team_sees_only_its_own_callers() {
        let mut store = MemoryStore::default();
        let mut log = AuditLog::load(&store.settings().unwrap()).unwrap();
        let data = Scope::teams(["data".to_string()]);
        let web = Scope::teams(["web".to_string()]);
        log.record(&mut store, "key admin", &Scope::all(), kill(1), 1)
            .unwrap();
        log.record(&mut store, "token d", &data, kill(2), 2)
            .unwrap();
        log.record(&mut store, "token w", &web, kill(3), 3).unwrap();
        log.record(&mut store, "token d", &data, kill(4), 4)
            .unwrap();
        let seqs = |entries: Vec<AuditEntry>| entries.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.page(&Scope::all(), None, 10)), vec![4, 3, 2, 1]);
        assert_eq!(seqs(log.page(&Scope::all(), Some(3), 1)), vec![2]);
        assert_eq!(seqs(log.page(&data, None, 10)), vec![4, 2]);
        assert_eq!(seqs(log.page(&web, None, 10)), vec![3]);
        assert_eq!(log.page(&data, None, 10)[0].teams, vec!["data".to_string()]);
    }
}
