//! The libzmq linked in is built as jobcast needs it (`.cargo/config.toml` gives the
//! platform checks its vendored build skips): keepalives reach the kernel, nothing it
//! opens survives an exec, its threads signal each other through eventfds, and an
//! endpoint may name an interface.
//!
//! One test in this binary, so that every descriptor opened meanwhile is libzmq's.

use jobcast_transport::{zmq, Limits};
use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::time::Duration;

fn open_descriptors() -> BTreeSet<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads one int option of a descriptor this process holds into a local of
    // the size given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn is_connected(fd: RawFd) -> bool {
    // SAFETY: an all-zero sockaddr_storage is a valid value to be written over.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: writes at most `len` bytes into the local given.
    unsafe {
        libc::getpeername(
            fd,
            (&mut address as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
    }
}

#[test]
fn libzmq_sets_keepalives_closes_on_exec_signals_through_eventfds_and_knows_interfaces() {
    let before = open_descriptors();
    let context = zmq::Context::new();
    let limits = Limits {
        dead_peer_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let router = context.socket(zmq::ROUTER).unwrap();
    limits.apply(&router).unwrap();
    router.set_rcvtimeo(10_000).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let dealer = context.socket(zmq::DEALER).unwrap();
    limits.apply(&dealer).unwrap();
    dealer.connect(&endpoint).unwrap();
    dealer.send("hello", 0).unwrap();
    // Received: both ends of the TCP connection exist.
    let parts = router.recv_multipart(0).expect("the message arrives");
    assert_eq!(parts.last().map(Vec::as_slice), Some(&b"hello"[..]));

    let opened: Vec<RawFd> = open_descriptors().difference(&before).copied().collect();
    let mut connected_tcp = 0;
    let mut eventfds = 0;
    for fd in opened {
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue; // the directory listing's own descriptor, closed since
        };
        let target = target.to_string_lossy().into_owned();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .map(|octal| i64::from_str_radix(octal.trim(), 8).unwrap())
            .unwrap();
        assert!(
            flags & i64::from(libc::O_CLOEXEC) != 0,
            "libzmq's descriptor {fd} ({target}) stays open across exec: every script would inherit it"
        );
        if target == "anon_inode:[eventfd]" {
            eventfds += 1;
        }
        if !target.starts_with("socket:") {
            continue;
        }
        let domain = int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap();
        assert_ne!(
            domain,
            libc::AF_UNIX,
            "libzmq signals through a socket pair ({target}): built without eventfd"
        );
        if domain == libc::AF_INET && is_connected(fd) {
            connected_tcp += 1;
            let keepalive = |name| int_option(fd, libc::IPPROTO_TCP, name).unwrap();
            assert_eq!(
                int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
                Some(1),
                "TCP keepalive is off on a connection: libzmq ignored ZMQ_TCP_KEEPALIVE"
            );
            assert_eq!(keepalive(libc::TCP_KEEPIDLE), 10, "idle: half the timeout");
            assert_eq!(
                keepalive(libc::TCP_KEEPINTVL),
                2,
                "probes over the other half"
            );
            assert_eq!(keepalive(libc::TCP_KEEPCNT), 4);
        }
    }
    assert_eq!(
        connected_tcp, 2,
        "both ends of the one connection were checked"
    );
    assert!(eventfds > 0, "libzmq's mailboxes are eventfds");

    // An interface named in an endpoint, as operators write them.
    let by_name = context.socket(zmq::ROUTER).unwrap();
    by_name.set_linger(0).unwrap();
    by_name
        .bind("tcp://lo:*")
        .expect("libzmq binds to an interface by its name (getifaddrs)");
}
