//! The shipped systemd units: both pass `systemd-analyze verify` (pointed at this build's
//! programs), and the broker's is hardened (`systemd-analyze security` rates its exposure
//! 2.0 or lower: it was 9.2 "UNSAFE" unhardened). `.ci/run` has `systemd-analyze`; elsewhere
//! the test says it was skipped.

use jobcast_integration_tests::{bin, say_skipped};
use std::process::Command;

fn analyze_available() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing: .ci/run installs Debian's systemd"
        );
        say_skipped("systemd-analyze is not installed");
    }
    found
}

/// The unit as shipped, with its program at this build's path, written into `dir`.
fn unit_for_this_build(dir: &std::path::Path, unit: &str, program: &str) -> std::path::PathBuf {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&shipped).expect("the shipped unit");
    let ours = format!("/usr/local/bin/{program}");
    assert!(text.contains(&ours), "{unit} runs {ours}");
    let path = dir.join(unit);
    std::fs::write(&path, text.replace(&ours, &bin(program).to_string_lossy())).unwrap();
    path
}

#[test]
fn the_shipped_units_verify_and_the_brokers_is_hardened() {
    if !analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (unit, program) in [
        ("jobcast-broker.service", "jobcast-broker"),
        ("jobcast-worker.service", "jobcast-worker"),
    ] {
        let path = unit_for_this_build(dir.path(), unit, program);
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{unit}: {out:?}");
    }
    let broker = dir.path().join("jobcast-broker.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&broker)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            line.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        exposure <= 2.0,
        "the broker's unit is exposed {exposure}:\n{text}"
    );
}
