//! Retention: finished runs and their logs are deleted when they are older than the job's
//! `retention` (or the broker's `max_age`), and the oldest finished ones when more than
//! `max_runs` are stored. In small steps (a few hundred records looked at per batch), so
//! pruning a large store never stalls the loop; never an unfinished run, never the newest.

use crate::store::{OldestRun, Store, StoreResult};
use crate::{Core, Now, OldestAsked, Outbox};
use jobcast_protocol::{Reply, RunRecord, RunState};

/// Records looked at in one step of the loop (each step a batch and a flush of its own
/// when it deletes: 64 keeps a batch to a few milliseconds).
pub(crate) const STEP: usize = 64;
/// Records a dry `Prune` looks at, and records a `Prune` deletes among, at most: both
/// run on the loop, so both are bounded (a dry look at 20,000 records takes tens of ms).
const DRY_SCAN: usize = 20_000;
const DELETE_SCAN: usize = 2_048;
/// How long the loop waits before looking again once a pass found nothing to delete.
const IDLE_MS: u64 = 10_000;
/// Asks made by any core of this process so far: an ask's number is never used twice,
/// so an answer read for a core since replaced (a store outage, a leader elected again:
/// the reads thread outlives it) never passes for an answer to the new one's ask.
static ASKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// How long a walk that asked for its runs waits for them before asking again (an
/// answer lost with a failed read).
const ANSWER_WAIT_MS: u64 = 10_000;
/// Between two steps of a pass that delete nothing: walking a large store where little
/// is due costs little.
const WALK_MS: u64 = 100;

/// How long finished runs are kept, and how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: Option<u64>,
    pub max_runs: Option<u64>,
}

/// Where the pruning walk is.
#[derive(Debug, Default)]
pub(crate) struct Pruning {
    /// The next sequence number to look at; back to the oldest after the newest.
    cursor: u64,
    next_step_ms: u64,
    /// Runs deleted since the broker started.
    pruned: u64,
    /// Whether the current pass (from the oldest) has deleted anything.
    pass_deleted: bool,
    /// Where the walk reads away from the loop: what it asked for, or found.
    walk: Walk,
}

/// Retention's read away from the loop ([`Store::walks_away`]).
#[derive(Debug, Default, PartialEq)]
enum Walk {
    #[default]
    Idle,
    /// Given up at `until_ms` if still unanswered.
    Asked { asked: OldestAsked, until_ms: u64 },
    /// The records from `from_seq` on, as the reader found them.
    Found { from_seq: u64, runs: Vec<OldestRun> },
}

impl Pruning {
    /// Asks for the records from the cursor on, to be read away from the loop.
    fn ask(&mut self, now: Now, out: &mut Outbox) {
        let asked = OldestAsked {
            number: ASKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            from_seq: self.cursor,
            limit: STEP,
        };
        out.oldest = Some(asked);
        // Not woken by an answer (a read that failed): asked again then.
        let until_ms = now.ms() + ANSWER_WAIT_MS;
        self.walk = Walk::Asked { asked, until_ms };
        self.next_step_ms = until_ms;
    }

    /// Runs deleted since the broker started.
    pub fn pruned(&self) -> u64 {
        self.pruned
    }
}

impl Retention {
    /// Whether `run` is to go: finished, and older than its job's retention or the
    /// broker's, or one of the oldest beyond `max_runs` (`excess` of them left to pick).
    fn expired(&self, run: &RunRecord, now: Now, excess: &mut u64) -> bool {
        if !run.state.is_terminal() {
            return false;
        }
        let keep_ms = run.spec.policy.retention_ms.or(self.max_age_ms);
        let ended = run.finished_at_ms.unwrap_or(run.created_at_ms);
        let too_old = keep_ms.is_some_and(|keep| now.ms().saturating_sub(ended) > keep);
        if too_old {
            *excess = excess.saturating_sub(1);
            return true;
        }
        if *excess > 0 {
            *excess -= 1;
            return true;
        }
        false
    }
}

impl<S: Store> Core<S> {
    fn retention_applies(&self) -> bool {
        let r = self.config.retention;
        r.max_age_ms.is_some() || r.max_runs.is_some() || self.tables.jobs.any_retention()
    }

    /// The shortest time any run is kept by age (the broker's or a job's), if any rule
    /// keeps by age. A run created less than this ago cannot be due by age, and neither
    /// can any run after it (numbered later, created later): a walk can stop there.
    fn shortest_keep_ms(&self) -> Option<u64> {
        let jobs = self.tables.jobs.retentions();
        self.config
            .retention
            .max_age_ms
            .into_iter()
            .chain(jobs)
            .min()
    }

    fn excess_runs(&self) -> StoreResult<u64> {
        Ok(match self.config.retention.max_runs {
            Some(max) => self.store.run_count()?.saturating_sub(max),
            None => 0,
        })
    }

    /// When the loop should take the next step (a step that finds retention off rests
    /// like one that found nothing, so no batch pays for looking at every job).
    /// Moves the next step with a step of the wall clock.
    pub(crate) fn shift_pruning(&mut self, shift: impl Fn(u64) -> u64) {
        self.stored.pruning.next_step_ms = shift(self.stored.pruning.next_step_ms);
        if let Walk::Asked { until_ms, .. } = &mut self.stored.pruning.walk {
            *until_ms = shift(*until_ms);
        }
    }

    pub(crate) fn next_prune_ms(&self) -> u64 {
        self.stored.pruning.next_step_ms
    }

    /// One bounded step of the walk, from the loop: deletes what is due among the next
    /// `STEP` records. Returns how many it deleted. A step that deleted something is
    /// followed by the next at once (a batch of its own, committed like any other).
    /// Where the store walks away from the loop ([`Store::walks_away`]), a step first asks
    /// for its records (`out.oldest`) and takes them once they are found.
    pub(crate) fn prune_step(&mut self, now: Now, out: &mut Outbox) -> StoreResult<u64> {
        if now.ms() < self.stored.pruning.next_step_ms {
            return Ok(0);
        }
        if !self.retention_applies() {
            self.stored.pruning.walk = Walk::Idle;
            self.stored.pruning.next_step_ms = now.ms() + IDLE_MS;
            return Ok(0);
        }
        if self.store.is_backlogged() {
            // Deleting now would add to a backlog the engine is still writing out, and
            // its writes (ours included) would be held back until it catches up.
            self.stored.pruning.next_step_ms = now.ms() + WALK_MS;
            return Ok(0);
        }
        let newest = self.store.last_run_seq()?;
        let mut excess = self.excess_runs()?;
        let shortest_keep = self.shortest_keep_ms();
        if excess == 0 && shortest_keep.is_none() {
            // Nothing beyond the count and no rule by age: no record to look at.
            self.stored.pruning.walk = Walk::Idle;
            self.stored.pruning.cursor = 0;
            self.stored.pruning.next_step_ms = now.ms() + IDLE_MS;
            return Ok(0);
        }
        let cursor = self.stored.pruning.cursor;
        let away = self.store.walks_away();
        let batch = if away {
            match std::mem::take(&mut self.stored.pruning.walk) {
                Walk::Found { from_seq, runs } if from_seq == cursor => runs,
                Walk::Asked { asked, until_ms } if now.ms() < until_ms => {
                    // Still being read: the answer wakes the walk.
                    self.stored.pruning.walk = Walk::Asked { asked, until_ms };
                    self.stored.pruning.next_step_ms = until_ms;
                    return Ok(0);
                }
                _ => {
                    self.stored.pruning.ask(now, out);
                    return Ok(0);
                }
            }
        } else {
            self.store
                .oldest_runs(cursor, STEP)?
                .into_iter()
                .map(|run| OldestRun {
                    run,
                    log_offsets: Vec::new(),
                })
                .collect()
        };
        let mut deleted = 0;
        let mut too_young = false;
        for found in &batch {
            let run = &found.run;
            too_young = excess == 0
                && shortest_keep
                    .is_none_or(|keep| run.created_at_ms.saturating_add(keep) > now.ms());
            if too_young {
                // Neither this run nor any later one is due: the pass ends here, so a
                // store of young runs costs one record's look per pass.
                break;
            }
            if run.seq != newest && self.config.retention.expired(run, now, &mut excess) {
                // A run given up as lost may have had output since it was read (its late
                // report's): the store looks for its log itself.
                if away && run.state != RunState::Lost {
                    self.store.delete_found_run(found)?;
                } else {
                    self.store.delete_run(run)?;
                }
                self.stored
                    .finished
                    .deleted(run.spec.team.as_deref(), run.state);
                deleted += 1;
            }
        }
        self.stored.pruning.pruned += deleted;
        self.stored.pruning.pass_deleted |= deleted > 0;
        self.stored.pruning.next_step_ms = match batch.last() {
            Some(last) if batch.len() == STEP && !too_young => {
                self.stored.pruning.cursor = last.run.seq + 1;
                if deleted > 0 {
                    now.ms()
                } else {
                    now.ms() + WALK_MS
                }
            }
            _ => {
                // The end of a pass: start again from the oldest, at once if this pass
                // found work (more may be due), else after a while.
                self.stored.pruning.cursor = 0;
                if std::mem::take(&mut self.stored.pruning.pass_deleted) {
                    now.ms()
                } else {
                    now.ms() + IDLE_MS
                }
            }
        };
        if away && self.stored.pruning.next_step_ms <= now.ms() {
            // The walk goes on at once: its next records are read while this step's
            // deletions commit.
            self.stored.pruning.ask(now, out);
        }
        if deleted > 0 {
            tracing::info!(deleted, "retention: finished runs deleted");
        }
        Ok(deleted)
    }

    /// The runs retention's walk asked for (`out.oldest`), read away from the loop, or why
    /// they could not be read. An answer to an ask given up since is dropped; the next
    /// step (at once) takes the runs.
    pub fn oldest_runs_found(
        &mut self,
        asked: OldestAsked,
        found: StoreResult<Vec<OldestRun>>,
        now_us: u64,
    ) {
        let pruning = &mut self.stored.pruning;
        if !matches!(pruning.walk, Walk::Asked { asked: waiting, .. } if waiting == asked) {
            return;
        }
        let now_ms = now_us / 1_000;
        match found {
            Ok(runs) => {
                pruning.walk = Walk::Found {
                    from_seq: asked.from_seq,
                    runs,
                };
                pruning.next_step_ms = now_ms;
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention could not read the oldest runs; trying again");
                pruning.walk = Walk::Idle;
                pruning.next_step_ms = now_ms + WALK_MS;
            }
        }
    }

    /// `Prune`: counts (dry) or deletes what retention would delete now, among the oldest
    /// `DRY_SCAN` (or `DELETE_SCAN`) runs.
    pub(crate) fn prune(&mut self, dry_run: bool, now: Now) -> StoreResult<Reply> {
        let newest = self.store.last_run_seq()?;
        let mut excess = self.excess_runs()?;
        let limit = if dry_run { DRY_SCAN } else { DELETE_SCAN };
        let (mut cursor, mut scanned, mut runs) = (0, 0u64, 0u64);
        loop {
            let batch = self.store.oldest_runs(cursor, STEP)?;
            for run in &batch {
                if run.seq != newest && self.config.retention.expired(run, now, &mut excess) {
                    if !dry_run {
                        // What the walk read before may be gone now: it reads again.
                        if std::mem::take(&mut self.stored.pruning.walk) != Walk::Idle {
                            self.stored.pruning.next_step_ms = now.ms();
                        }
                        self.store.delete_run(run)?;
                        self.stored
                            .finished
                            .deleted(run.spec.team.as_deref(), run.state);
                        self.stored.pruning.pruned += 1;
                    }
                    runs += 1;
                }
            }
            scanned += batch.len() as u64;
            match batch.last() {
                Some(last) if batch.len() == STEP && (scanned as usize) < limit => {
                    cursor = last.seq + 1;
                }
                _ => {
                    let complete = batch.len() < STEP;
                    return Ok(Reply::Pruned {
                        runs,
                        scanned,
                        complete,
                    });
                }
            }
        }
    }
}
