//! `jobcast-core` is the pure core: no runtime, socket, HTTP or storage engine among its
//! dependencies (direct or not), and no clock, file or network call in its source. The
//! compiler keeps the first once the crates are absent; this test keeps them absent.

use jobcast_integration_tests::files_under;
use std::path::Path;
use std::process::Command;

/// Crates that do I/O or own a runtime: none may be built into the core. (`libc` comes
/// in through `getrandom`, the protocol's nonces: not listed.)
const FORBIDDEN: &[&str] = &[
    "tokio",
    "mio",
    "zmq",
    "zmq-sys",
    "fjall",
    "lsm-tree",
    "sled",
    "axum",
    "hyper",
    "ureq",
    "rustix",
    "postgres",
    "tokio-postgres",
];

#[test]
fn the_core_depends_on_no_runtime_socket_or_storage_engine() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "jobcast-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--locked", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"jobcast-protocol"), "tree read: {tree}");
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|c| crates.contains(c)).collect();
    assert!(
        found.is_empty(),
        "jobcast-core depends on {found:?}:\n{tree}"
    );
}

/// Calls that read a clock or touch the outside world; the server passes `now` in.
const IMPURE_CALLS: &[&str] = &[
    "SystemTime::now",
    "Instant::now",
    "Utc::now",
    "std::fs",
    "std::net",
    "std::env",
    "std::thread",
    "std::process",
];

#[test]
fn the_core_reads_no_clock_file_or_network() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src");
    let mut offences = Vec::new();
    let sources: Vec<_> = files_under(&src)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    let files = sources.len();
    for path in sources {
        let text = std::fs::read_to_string(&path).expect("source is readable");
        for (n, line) in text.lines().enumerate() {
            if let Some(call) = IMPURE_CALLS.iter().find(|c| line.contains(*c)) {
                offences.push(format!("{}:{}: {call}", path.display(), n + 1));
            }
        }
    }
    assert!(files > 30, "read only {files} source files of the core");
    assert!(
        offences.is_empty(),
        "impure calls in the core: {offences:#?}"
    );
}
