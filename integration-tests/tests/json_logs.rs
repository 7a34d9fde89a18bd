//! JSON log lines are for log collectors: every field of the broker's and the worker's
//! lines that jq or JavaScript would read wrong as a number, or that a debug string would
//! hide (ids past 2^53, lists), is written as a string.

use jobcast_integration_tests::*;
use serde_json::Value;
use std::time::Duration;

/// The first JSON line of `log` whose message is `message`.
fn line_with(log: &str, message: &str) -> Option<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == message)
}

#[test]
fn ids_and_lists_in_json_logs_are_strings() {
    let mut cluster = Cluster::start_with(1, &["--log-format", "json"]);
    cluster.start_worker("w1", &["--log-format", "json", "--pools", "default,etl"]);

    let broker =
        line_with(&cluster.broker_log(), "state read from the store").expect("a JSON line");
    let boot_id = broker["boot_id"].as_str().expect("boot_id as a string");
    assert!(boot_id.parse::<u64>().is_ok(), "{broker}");

    let registered = wait_for(
        "the worker's registration line",
        Duration::from_secs(10),
        || line_with(&cluster.worker_log("w1"), "registered with the broker"),
    );
    assert_eq!(
        registered["boot_id"].as_str(),
        Some(boot_id),
        "{registered}"
    );
    let starting = line_with(&cluster.worker_log("w1"), "worker starting").expect("a JSON line");
    assert_eq!(starting["pools"], "default,etl", "{starting}");
}
