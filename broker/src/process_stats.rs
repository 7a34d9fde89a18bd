//! The broker process's own figures for `/metrics`, under the names every Prometheus
//! client library uses (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …),
//! read from `/proc/self` at each scrape.

/// What `/proc/self` says of this process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// The fields of a `/proc/PID/stat` line after the command (which may hold spaces and
/// parentheses: everything up to the last `)` is skipped).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().collect())
}

/// CPU seconds, start (seconds after boot), virtual and resident bytes from a
/// `/proc/self/stat` line, given the clock ticks per second and the page size.
pub fn parse_stat(
    stat: &str,
    ticks_per_second: u64,
    page_bytes: u64,
) -> Option<(f64, f64, u64, u64)> {
    // Counting from field 3 (state) as index 0: utime 11, stime 12, starttime 19,
    // vsize 20, rss 21 (pages).
    let fields = stat_fields(stat)?;
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let ticks = ticks_per_second.max(1) as f64;
    let cpu = (number(11)? + number(12)?) as f64 / ticks;
    let started_after_boot = number(19)? as f64 / ticks;
    Some((
        cpu,
        started_after_boot,
        number(20)?,
        number(21)? * page_bytes,
    ))
}

/// The boot time (seconds since the epoch) from `/proc/stat`'s `btime` line.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// Reads this process's figures; `None` where `/proc` cannot be read.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    let page = rustix::param::page_size() as u64;
    let (cpu_seconds, started_after_boot, virtual_bytes, resident_bytes) =
        parse_stat(&stat, ticks, page)?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| parse_boot_time(&text))?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    Some(ProcessStats {
        cpu_seconds,
        resident_bytes,
        virtual_bytes,
        start_time_seconds: boot as f64 + started_after_boot,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
        // vsize rss …
        let line = "4242 (jobcast (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    6 0 12345 104857600 2560 18446744073709551615";
        let (cpu, started, virt, rss) = parse_stat(line, 100, 4096).unwrap();
        assert_eq!(cpu, 3.0);
        assert_eq!(started, 123.45);
        assert_eq!(virt, 104_857_600);
        assert_eq!(rss, 2560 * 4096);
        assert_eq!(parse_stat("garbage", 100, 4096), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1764892800\nprocesses 9\n"),
            Some(1_764_892_800)
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let stats = read().expect("/proc is readable here");
        assert!(stats.resident_bytes > 0 && stats.open_fds > 0);
        assert!(stats.max_fds >= stats.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            stats.start_time_seconds <= now + 1.0
                && stats.start_time_seconds > now - 86_400.0 * 365.0
        );
    }
}
