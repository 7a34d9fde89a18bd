//! `ListJobs` (the job table's views), `NextFires` (when a job fires next) and
//! `Upcoming` (what fires next across jobs).

use crate::job_table::JobTable;
use crate::{Handled, Scope};
use jobcast_protocol::{Reply, UpcomingFire};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Most fires one `Upcoming` answers with.
const MAX_UPCOMING: u32 = 200;
/// Ticks looked past for one fire when exclusion windows cover a schedule.
const EXCLUDED_STEPS: usize = 20;

/// Most fire times one `NextFires` answers with.
const MAX_NEXT_FIRES: u32 = 100;

/// Handed the job table: the next `count` ticks of `job` that start runs (excluded ones
/// skipped).
pub(super) fn next_fires(jobs: &JobTable, job: &str, count: u32) -> Handled<Reply> {
    let Some(spec) = jobs.spec(job) else {
        return Err(jobs.unknown(job));
    };
    let mut times_ms = Vec::new();
    if let (Some(schedule), Some(mut next), true) = (
        jobs.schedule(job),
        jobs.next_fire(job),
        jobs.is_active(spec),
    ) {
        let wanted = count.min(MAX_NEXT_FIRES) as usize;
        // Bounded however much of the schedule an exclusion window covers.
        for _ in 0..wanted * 20 {
            if times_ms.len() == wanted {
                break;
            }
            if !schedule.is_excluded(next) {
                times_ms.push(next);
            }
            match schedule.next_after(next) {
                Some(after) => next = after,
                None => break,
            }
        }
    }
    Ok(Reply::NextFires {
        job: Box::new(jobs.view_of(spec)),
        times_ms,
    })
}

/// The next `limit` fires across the jobs `scope` sees, soonest first: each job's next
/// fire in a heap, the soonest taken and replaced by that job's following one, so the
/// work is one schedule step per job and per fire listed.
pub(super) fn upcoming(jobs: &JobTable, scope: &Scope, limit: u32) -> Reply {
    let first_fire = |job: &str, from: u64| {
        let schedule = jobs.schedule(job)?;
        let mut next = from;
        for _ in 0..EXCLUDED_STEPS {
            if !schedule.is_excluded(next) {
                return Some(next);
            }
            next = schedule.next_after(next)?;
        }
        None
    };
    let mut heap = BinaryHeap::new();
    for spec in jobs.specs() {
        if !jobs.is_active(spec) || !scope.allows(spec.team.as_deref()) {
            continue;
        }
        if let Some(at) = jobs
            .next_fire(&spec.name)
            .and_then(|t| first_fire(&spec.name, t))
        {
            heap.push(Reverse((at, spec.name.as_str())));
        }
    }
    let mut fires = Vec::new();
    while fires.len() < limit.min(MAX_UPCOMING) as usize {
        let Some(Reverse((at, job))) = heap.pop() else {
            break;
        };
        fires.push(UpcomingFire {
            job: job.to_string(),
            at_ms: at,
        });
        let following = jobs
            .schedule(job)
            .and_then(|s| s.next_after(at))
            .and_then(|t| first_fire(job, t));
        if let Some(next) = following {
            heap.push(Reverse((next, job)));
        }
    }
    Reply::Upcoming { fires }
}
