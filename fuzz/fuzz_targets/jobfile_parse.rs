//! Any text as a jobs file (what `jobcastctl apply` and `--jobs` read): a job list or a
//! clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(jobs) = jobcast_protocol::jobfile::parse(text) {
            for job in &jobs {
                // Whatever parses also passes the checks the broker applies again.
                assert!(jobcast_protocol::jobfile::validate(job).is_ok());
            }
        }
    }
});
