//! Ids for the job definitions grants hand out, so that a grant can name a definition
//! its worker session was sent before instead of carrying it again (`GrantedRun`): a
//! shell run's definition holds its whole script, and most grants are of jobs granted
//! a moment ago.

use jobcast_protocol::{GrantedRun, JobSpec, RunRecord};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Definitions given ids at most before the table starts again (their ids are not
/// reused: a definition granted after that gets a new one). The table keeps them alive,
/// older versions of jobs among them: bounded so that a store of many versions of large
/// scripts does not stay in memory for it.
const MAX_IDS: usize = 1_024;
/// Definitions counted as sent to one worker session at most before they are all sent
/// again: fewer than a worker keeps (4,096), so that none counted here was let go there.
pub(crate) const MAX_SENT: usize = 1_024;

/// This broker process's id for each definition it has granted. A definition is one
/// shared `Arc<JobSpec>` (the job table's, or the store's for stored runs); the table
/// holds it, so its address cannot be reused by another while it has an id.
#[derive(Default)]
pub(crate) struct DefinitionIds {
    by_address: HashMap<usize, (Arc<JobSpec>, u64)>,
    last: u64,
}

impl DefinitionIds {
    /// `spec`'s id, given it now if it has none (never 0).
    pub fn id_of(&mut self, spec: &Arc<JobSpec>) -> u64 {
        let address = Arc::as_ptr(spec) as usize;
        if let Some((_, id)) = self.by_address.get(&address) {
            return *id;
        }
        if self.by_address.len() >= MAX_IDS {
            self.by_address.clear();
        }
        self.last += 1;
        self.by_address.insert(address, (spec.clone(), self.last));
        self.last
    }
}

/// The definitions one worker session was sent, by id.
#[derive(Debug, Default)]
pub(crate) struct SentDefinitions {
    ids: HashSet<u64>,
}

impl SentDefinitions {
    /// `run` as this session's grant: its definition named when the session was sent
    /// it, carried (and counted as sent) otherwise.
    pub fn grant(&mut self, ids: &mut DefinitionIds, run: &RunRecord) -> GrantedRun {
        let id = ids.id_of(&run.spec);
        match self.must_carry(id) {
            true => GrantedRun::carrying(run, id),
            false => GrantedRun::naming(run, id),
        }
    }

    /// Whether a grant of definition `id` must carry it (this session was not sent it),
    /// counting it as sent from now on.
    fn must_carry(&mut self, id: u64) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        if self.ids.len() >= MAX_SENT {
            self.ids.clear();
        }
        self.ids.insert(id);
        true
    }

    /// The worker may not hold what it was sent (it handed a run back): carry every
    /// definition again.
    pub fn forget(&mut self) {
        self.ids.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::Exec;

    fn spec(name: &str) -> Arc<JobSpec> {
        Arc::new(JobSpec::new(
            name,
            "default",
            Exec::Command(vec!["true".into()]),
        ))
    }

    #[test]
    fn one_definition_has_one_id_and_an_equal_copy_another() {
        let mut ids = DefinitionIds::default();
        let (a, b) = (spec("a"), spec("b"));
        let copy_of_a = Arc::new((*a).clone());
        let id_a = ids.id_of(&a);
        assert_ne!(id_a, 0);
        assert_eq!(ids.id_of(&a.clone()), id_a, "the same shared definition");
        assert_ne!(ids.id_of(&b), id_a);
        // Another allocation is another definition as far as ids go: it is carried
        // once more, which costs a grant's bytes, never a wrong run.
        assert_ne!(ids.id_of(&copy_of_a), id_a);
    }

    #[test]
    fn ids_are_not_reused_when_the_table_starts_again() {
        let mut ids = DefinitionIds::default();
        let first = spec("first");
        let first_id = ids.id_of(&first);
        let mut seen = HashSet::from([first_id]);
        for n in 0..MAX_IDS {
            assert!(seen.insert(ids.id_of(&spec(&format!("job{n}")))));
        }
        // The table started again on the way: `first` gets a new id, not an old one.
        let again = ids.id_of(&first);
        assert!(seen.insert(again), "id {again} was given before");
    }

    #[test]
    fn a_session_is_granted_a_definition_once_then_named_by_its_id() {
        let mut ids = DefinitionIds::default();
        let mut sent = SentDefinitions::default();
        let mut run = RunRecord::queued("r1".into(), 1, spec("hello"), 0, "test");
        let first = sent.grant(&mut ids, &run);
        assert!(first.definition != 0 && first.job.is_some_and(|job| job.name == "hello"));
        run.id = "r2".into();
        let second = sent.grant(&mut ids, &run);
        assert_eq!(
            (second.run_id.as_str(), second.definition),
            ("r2", first.definition)
        );
        assert!(second.job.is_none(), "named, not carried again");
        // Another session is carried it, under the same id.
        let other = SentDefinitions::default().grant(&mut ids, &run);
        assert_eq!(other.definition, first.definition);
        assert!(other.job.is_some());
    }

    #[test]
    fn a_definition_is_carried_the_first_time_and_again_after_forgetting() {
        let mut sent = SentDefinitions::default();
        assert!(sent.must_carry(7));
        assert!(!sent.must_carry(7));
        assert!(sent.must_carry(8));
        sent.forget();
        assert!(sent.must_carry(7));
        assert!(!sent.must_carry(7));
    }

    #[test]
    fn a_session_counts_at_most_max_sent_definitions() {
        let mut sent = SentDefinitions::default();
        for id in 1..=MAX_SENT as u64 {
            assert!(sent.must_carry(id));
        }
        assert!(!sent.must_carry(1));
        // One more starts the count again: the earlier ones go with their next grant.
        assert!(sent.must_carry(MAX_SENT as u64 + 1));
        assert!(sent.must_carry(1));
        assert!(sent.ids.len() <= MAX_SENT);
    }
}
