//! The job definitions grants carried, kept by the broker's id for them, so that a later
//! grant can name one instead of carrying it again (`GrantedRun`). Kept for one
//! registration: the broker counts what it sent per session.

use jobcast_protocol::{Assignment, GrantedRun, JobSpec};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Definitions kept at most, the oldest let go first: more than the broker counts as
/// sent to one session (1,024), so none it may name was let go.
pub const KEPT: usize = 4_096;

#[derive(Debug, Default)]
pub struct Definitions {
    by_id: HashMap<u64, Arc<JobSpec>>,
    /// Ids, the least recently sent first.
    order: VecDeque<u64>,
}

impl Definitions {
    /// What a granted run executes: with its definition carried (kept under its id), or
    /// with the one kept under the id it names. `Err` gives the run back when it names
    /// one not kept here.
    pub fn resolve(&mut self, mut run: GrantedRun) -> Result<Assignment, GrantedRun> {
        match run.job.take() {
            Some(job) => {
                if run.definition != 0 {
                    self.keep(run.definition, job.clone());
                }
                Ok(run.into_assignment(job))
            }
            None => match self.by_id.get(&run.definition) {
                Some(job) => {
                    let job = job.clone();
                    Ok(run.into_assignment(job))
                }
                None => Err(run),
            },
        }
    }

    fn keep(&mut self, id: u64, job: Arc<JobSpec>) {
        if self.by_id.insert(id, job).is_some() {
            // Sent again (the broker started counting anew): now the most recent.
            self.order.retain(|kept| *kept != id);
        }
        self.order.push_back(id);
        while self.order.len() > KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
    }

    /// A new registration: the broker counts nothing as sent to it.
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::Exec;

    fn granted(run_id: &str, definition: u64, job: Option<&str>) -> GrantedRun {
        GrantedRun {
            run_id: run_id.into(),
            attempt: 1,
            scheduled_at_ms: 0,
            definition,
            job: job.map(|name| {
                Arc::new(JobSpec::new(
                    name,
                    "default",
                    Exec::Command(vec!["true".into()]),
                ))
            }),
            params: Default::default(),
        }
    }

    #[test]
    fn a_named_definition_is_the_one_carried_before_under_that_id() {
        let mut kept = Definitions::default();
        let first = kept
            .resolve(granted("r1", 5, Some("hello")))
            .expect("carried");
        let second = kept.resolve(granted("r2", 5, None)).expect("named");
        assert_eq!(second.run_id, "r2");
        assert_eq!(second.job.name, "hello");
        assert!(Arc::ptr_eq(&first.job, &second.job), "one copy kept");
        // An id never carried, and one let go at a new registration: given back.
        assert_eq!(
            kept.resolve(granted("r3", 6, None)).err().map(|r| r.run_id),
            Some("r3".into())
        );
        kept.clear();
        assert!(kept.resolve(granted("r4", 5, None)).is_err());
        // A definition carried without an id (an older broker) is simply used.
        let plain = kept
            .resolve(granted("r5", 0, Some("plain")))
            .expect("carried");
        assert_eq!(plain.job.name, "plain");
        assert!(kept.by_id.is_empty());
    }

    #[test]
    fn the_least_recently_sent_go_first_and_a_definition_sent_again_stays() {
        let mut kept = Definitions::default();
        for id in 1..=KEPT as u64 {
            kept.resolve(granted("r", id, Some("job")))
                .expect("carried");
        }
        // Sent again: now the most recent, so the next one lets 2 go, not 1.
        kept.resolve(granted("r", 1, Some("job"))).expect("carried");
        kept.resolve(granted("r", KEPT as u64 + 1, Some("job")))
            .expect("carried");
        assert!(kept.resolve(granted("r", 1, None)).is_ok());
        assert!(kept.resolve(granted("r", 2, None)).is_err());
        assert_eq!(kept.by_id.len(), KEPT);
        assert_eq!(kept.order.len(), KEPT);
    }
}
