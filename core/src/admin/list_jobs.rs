//! `ListJobs` (the job table's views) and `NextFires`: when a job fires next.

use crate::job_table::JobTable;
use crate::Handled;
use jobcast_protocol::Reply;

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
