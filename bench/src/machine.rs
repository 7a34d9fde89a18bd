//! The whole machine's busy CPU time (every process and the kernel), for what a part
//! cost in all when several processes share the work (PostgreSQL's backends, the
//! kernel's writeback, the bench's own synthetic workers).

use std::time::Duration;

/// CPU time spent busy on all cores since boot: `/proc/stat`'s first line less its
/// idle and I/O-wait times. `None` where there is no `/proc/stat`.
pub fn busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_from(stat.lines().next()?)
}

/// The busy time in `/proc/stat`'s `cpu` line (user, nice, system, idle, iowait, irq,
/// softirq, steal, then guest times already counted in user and nice).
fn busy_from(line: &str) -> Option<Duration> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 8 {
        return None;
    }
    let (idle, iowait, steal) = (ticks[3], ticks[4], ticks[7]);
    let busy = ticks.iter().sum::<u64>() - idle - iowait - steal;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Some(Duration::from_micros(busy * 1_000_000 / per_second))
}

/// CPU time between two readings (the machine's, or a process's), per unit of work, in
/// µs; "unknown" without both.
pub fn per_unit(before: Option<Duration>, after: Option<Duration>, units: f64) -> String {
    match (before, after) {
        (Some(b), Some(a)) if a >= b && units > 0.0 => {
            format!("{:.0} µs", (a - b).as_secs_f64() * 1e6 / units)
        }
        _ => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_iowait_and_steal_and_the_guest_columns() {
        // user 100, nice 2, system 50, idle 1000, iowait 40, irq 3, softirq 5, steal 7,
        // guest 11 (inside user already), guest_nice 0.
        let line = "cpu  100 2 50 1000 40 3 5 7 11 0";
        let ticks = 100 + 2 + 50 + 3 + 5;
        // SAFETY: as in `busy_from`.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            busy_from(line),
            Some(Duration::from_micros(ticks * 1_000_000 / per_second))
        );
        assert_eq!(busy_from("cpu0 1 2 3 4 5 6 7 8"), None, "one core's line");
        assert_eq!(busy_from("cpu 1 2 3"), None, "too few fields");
        assert_eq!(busy_from("cpu 1 2 x 4 5 6 7 8"), None);
    }

    #[test]
    fn a_share_needs_both_readings_in_order() {
        let s = Duration::from_secs;
        assert_eq!(per_unit(Some(s(1)), Some(s(3)), 1_000.0), "2000 µs");
        assert_eq!(per_unit(None, Some(s(3)), 1_000.0), "unknown");
        assert_eq!(per_unit(Some(s(3)), Some(s(1)), 1_000.0), "unknown");
    }
}
