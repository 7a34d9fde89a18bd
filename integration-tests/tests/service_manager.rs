//! systemd's notify protocol (`Type=notify`), spoken to a socket the test listens on as
//! systemd would: READY once the broker listens, WATCHDOG while its loop turns, STOPPING
//! on SIGTERM.

use jobcast_integration_tests::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Every datagram that arrives within `within`, as text.
fn messages(
    socket: &UnixDatagram,
    within: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

/// Watchdog messages the test waits for.
const FED: usize = 60;

#[test]
fn the_broker_says_ready_keeps_the_watchdog_fed_and_says_stopping() {
    let mut cluster = Cluster::start(1);
    let path = cluster.path("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("a notify socket");
    cluster.set_host_env("NOTIFY_SOCKET", &path.to_string_lossy());
    // A watchdog of 100 ms: the broker says it is alive every 50 ms, although nothing but
    // its own heartbeat wakes its loop here (no worker, no job: about twice a second).
    // Sixty times within twenty seconds (three, when it works) is only possible if the
    // loop sleeps no longer than the watchdog asks.
    cluster.set_host_env("WATCHDOG_USEC", "100000");
    cluster.kill_broker();
    cluster.start_broker();

    let said = messages(&socket, Duration::from_secs(20), |got| {
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= FED
    });
    let ready = said
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {said:?}"));
    assert!(said[ready].contains("STATUS=listening"), "{said:?}");
    let fed = said[ready..]
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert!(fed >= FED, "the watchdog was fed {fed} times: {said:?}");

    // SAFETY: kill(2) on the broker this test started.
    unsafe { libc::kill(cluster.broker_pid(), libc::SIGTERM) };
    let said = messages(&socket, Duration::from_secs(15), |got| {
        got.iter().any(|m| m.contains("STOPPING=1"))
    });
    assert!(said.iter().any(|m| m.contains("STOPPING=1")), "{said:?}");
    let status = wait_for("the broker to exit", Duration::from_secs(15), || {
        cluster
            .broker
            .as_mut()
            .and_then(|b| b.try_wait().ok().flatten())
    });
    assert!(status.success(), "{status}");
}
