//! A standby's view of the database: the state the leader last made durable, read
//! afresh when older than [`VIEW_AGE`], answering the API's reads and feeding the live
//! pages opened on the standby with what changed between two reads.

use super::now_us;
use crate::election::Renewed;
use crate::store::Store;
use anyhow::{Context, Result};
use jobcast_core::{ChangeSet, Core, Outbox, Scope};
use jobcast_protocol::{
    AdminRequest, JobView, Reply, RunFilter, RunRecord, RunState, WorkerStatus,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How old a standby's view of the database may be when it answers a read; live pages
/// on a standby are sent what changed this often.
pub(super) const VIEW_AGE: Duration = Duration::from_secs(2);

/// Runs a live page on a standby is kept up to date on: the newest, and those running.
const FOLLOWED_RUNS: u32 = 200;

/// The database as of a moment ago, read-only.
pub(super) struct DatabaseView<S: Store> {
    core: Option<(Core<S>, Instant)>,
    /// The workers as the leader last stored them, with the runs they hold.
    workers: Vec<WorkerStatus>,
    /// The leader's lease as this standby last read it, shown by `status`.
    lease: Option<Renewed>,
    shown: LiveShown,
}

impl<S: Store> DatabaseView<S> {
    pub(super) fn new() -> Self {
        DatabaseView {
            core: None,
            workers: Vec::new(),
            lease: None,
            shown: LiveShown::default(),
        }
    }

    pub(super) fn set_lease(&mut self, lease: Option<Renewed>) {
        self.lease = lease;
    }

    /// Answers a read as the leader would have, as of the view.
    pub(super) fn answer(
        &mut self,
        replica: &mut impl FnMut(u64) -> Result<Core<S>>,
        request: AdminRequest,
        actor: &str,
        scope: &Scope,
    ) -> Result<Reply> {
        let lease = self.lease.clone();
        let core = self.fresh(replica)?;
        core.set_leadership(lease);
        let mut reply = ask(core, request, actor, scope)?;
        if let Reply::Status(status) = &mut reply {
            // A view built from the database starts as a restarted broker does, every
            // worker unheard of yet; a standby never hears them, so it shows them as the
            // leader stored them instead.
            status.workers = self.workers.clone();
        }
        Ok(reply)
    }

    /// What changed for live pages since the last call (everything, the first time).
    pub(super) fn changes(
        &mut self,
        replica: &mut impl FnMut(u64) -> Result<Core<S>>,
    ) -> Result<ChangeSet> {
        let core = self.fresh(replica)?;
        let all = Scope::all();
        let list = |core: &mut Core<S>, state| {
            let filter = RunFilter {
                state,
                limit: FOLLOWED_RUNS,
                ..Default::default()
            };
            match ask(core, AdminRequest::ListRuns(filter), "live feed", &all)? {
                Reply::Runs { runs, .. } => Ok(runs),
                other => anyhow::bail!("listing runs answered {other:?}"),
            }
        };
        let mut runs = list(core, None)?;
        runs.extend(list(core, Some(RunState::Running))?);
        let Reply::Jobs { jobs } = ask(core, AdminRequest::ListJobs, "live feed", &all)? else {
            anyhow::bail!("listing jobs gave no jobs");
        };
        let Reply::Status(status) = ask(core, AdminRequest::Status, "live feed", &all)? else {
            anyhow::bail!("status gave no status");
        };
        Ok(self.shown.changes(runs, jobs, status.runs_by_state))
    }

    fn fresh(&mut self, replica: &mut impl FnMut(u64) -> Result<Core<S>>) -> Result<&mut Core<S>> {
        if self
            .core
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() > VIEW_AGE)
        {
            // The old view goes first: two whole views are not held at once.
            self.core = None;
            let mut core = replica(now_us())?;
            self.workers = stored_workers(&mut core)?;
            self.core = Some((core, Instant::now()));
        }
        let (core, _) = self.core.as_mut().context("no view of the database")?;
        Ok(core)
    }
}

/// Workers as stored: connected to the leader when it last said so (registration) or
/// gone, running the runs the database gives them. Their heartbeats reach only the
/// leader, so none is dated here.
fn stored_workers<S: Store>(core: &mut Core<S>) -> Result<Vec<WorkerStatus>> {
    let mut workers = core.store().workers()?;
    let mut held: HashMap<String, Vec<String>> = HashMap::new();
    for state in [RunState::Assigned, RunState::Running] {
        let filter = RunFilter {
            state: Some(state),
            limit: HELD_RUNS,
            ..Default::default()
        };
        if let Reply::Runs { runs, .. } = ask(
            core,
            AdminRequest::ListRuns(filter),
            "live feed",
            &Scope::all(),
        )? {
            for run in runs {
                if let Some(worker) = run.worker {
                    held.entry(worker).or_default().push(run.id);
                }
            }
        }
    }
    for worker in &mut workers {
        worker.running = held.remove(&worker.id).unwrap_or_default();
        if worker.online {
            worker.last_seen_ms = 0;
        }
    }
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(workers)
}

/// Runs a standby's worker list shows as held, per state.
const HELD_RUNS: u32 = 1_000;

fn ask<S: Store>(
    core: &mut Core<S>,
    request: AdminRequest,
    actor: &str,
    scope: &Scope,
) -> Result<Reply> {
    let mut out = Outbox::default();
    core.handle_api(actor, 0, request, scope, now_us(), &mut out)?;
    core.answer_reads(&mut out)?;
    out.replies
        .pop()
        .map(|reply| reply.reply)
        .context("no answer from the database's view")
}

/// What live pages on a standby were last sent, to send them only what changed.
#[derive(Default)]
struct LiveShown {
    runs: HashMap<String, RunRecord>,
    jobs: Option<Vec<JobView>>,
    runs_by_state: Option<BTreeMap<String, u64>>,
}

impl LiveShown {
    /// The runs, jobs and counts that differ from those last sent. Runs no longer
    /// listed are forgotten (what is kept is bounded by the listings).
    fn changes(
        &mut self,
        runs: Vec<RunRecord>,
        jobs: Vec<JobView>,
        runs_by_state: BTreeMap<String, u64>,
    ) -> ChangeSet {
        let mut listed = HashMap::with_capacity(runs.len());
        let mut changed = Vec::new();
        for run in runs {
            if listed.contains_key(&run.id) {
                continue;
            }
            if self.runs.get(&run.id) != Some(&run) {
                changed.push(run.clone());
            }
            listed.insert(run.id.clone(), run);
        }
        self.runs = listed;
        let jobs = (self.jobs.as_ref() != Some(&jobs)).then(|| {
            self.jobs = Some(jobs.clone());
            jobs
        });
        let runs_by_state = (self.runs_by_state.as_ref() != Some(&runs_by_state)).then(|| {
            self.runs_by_state = Some(runs_by_state.clone());
            runs_by_state
        });
        ChangeSet {
            runs: changed,
            jobs,
            runs_by_state,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, state: RunState) -> RunRecord {
        use jobcast_protocol::{Exec, JobSpec};
        let spec = JobSpec::new("backup", "default", Exec::Command(vec!["true".into()]));
        RunRecord {
            state,
            ..RunRecord::queued(id.into(), 1, spec, 1, "enqueued")
        }
    }

    #[test]
    fn a_standby_sends_live_pages_only_what_changed() {
        let mut shown = LiveShown::default();
        let counts = |queued: u64| BTreeMap::from([("queued".to_string(), queued)]);
        let first = shown.changes(
            vec![run("a", RunState::Queued), run("b", RunState::Running)],
            vec![],
            counts(1),
        );
        assert_eq!(first.runs.len(), 2, "everything, the first time");
        assert_eq!(first.jobs, Some(vec![]));
        assert_eq!(first.runs_by_state, Some(counts(1)));

        let same = shown.changes(
            vec![run("a", RunState::Queued), run("b", RunState::Running)],
            vec![],
            counts(1),
        );
        assert!(same.runs.is_empty() && same.jobs.is_none() && same.runs_by_state.is_none());

        // "b" is listed twice (newest, and running): sent once.
        let moved = shown.changes(
            vec![
                run("c", RunState::Queued),
                run("a", RunState::Running),
                run("b", RunState::Running),
            ],
            vec![],
            counts(2),
        );
        let ids: Vec<&str> = moved.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["c", "a"]);
        assert_eq!(moved.runs_by_state, Some(counts(2)));

        // A run that left the listings is forgotten; if it comes back it is sent again.
        shown.changes(vec![run("c", RunState::Queued)], vec![], counts(2));
        let back = shown.changes(
            vec![run("c", RunState::Queued), run("a", RunState::Running)],
            vec![],
            counts(2),
        );
        let ids: Vec<&str> = back.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
    }
}
