//! What the publisher takes as subscriptions, and what it does to a key that floods it.
//!
//! libzmq keeps every topic a subscriber sends in a tree, a node per byte, for as long as
//! the connection lasts: 3,000 subscriptions of 1 kB on one connection cost the broker
//! 94 MB before the publisher became an XPUB in manual mode. Now each subscription
//! reaches the broker as a message (with the key that sent it and its address) and takes
//! effect only if it is a topic the broker publishes on (`all/`, `pool/<name>/`,
//! `worker/<name>/`), up to [`MAX_TOPICS_PER_KEY`] different ones per key; a topic is at
//! most 128 bytes (libzmq closes a connection that sends a longer one). libzmq still
//! records every topic a connection asked for until it closes, so a key that asks for
//! more than that, or for [`MAX_REFUSED_PER_KEY`] topics nobody publishes, is a flood:
//! its connection is closed by the broker (which frees all of it) and the key is refused
//! on the publisher for [`FLOOD_BAN`].
//!
//! libzmq does not say which connection a message came from, only its address (no port):
//! the connection closed is the one from that address that has received the most bytes,
//! read from the kernel (`TCP_INFO`). Subscribers send nothing but their handshake and
//! their subscriptions (ZMTP heartbeats are off), so the flood's is the largest; should
//! another connection from that host be closed instead, it reconnects within a second
//! and subscribes again, and the flood's next subscription closes the next largest.

use jobcast_protocol::topic;
use jobcast_transport::PeerEvent;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Different topics one key may subscribe to, over all its connections: `all/`, its own
/// `worker/<id>/` and one per pool it serves.
pub const MAX_TOPICS_PER_KEY: usize = 256;
/// Subscriptions to topics the broker does not publish on that one key may send before
/// they count as a flood.
pub const MAX_REFUSED_PER_KEY: u32 = 16;
/// How long a key that flooded the publisher is refused there.
pub const FLOOD_BAN: Duration = Duration::from_secs(60);

/// What to do with one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Take,
    /// Not a topic the broker publishes on: not applied, counted.
    Refuse,
    /// Past what a key may ask: not applied; the connection is closed and the key
    /// refused for a while.
    Flood,
}

/// The topics each key subscribed to, for the broker's life.
#[derive(Debug, Default)]
pub struct SubscriptionBook {
    keys: HashMap<String, KeyTopics>,
}

#[derive(Debug, Default)]
struct KeyTopics {
    taken: HashSet<Box<[u8]>>,
    refused: u32,
}

impl SubscriptionBook {
    /// Judges a subscription to `topic` by `key`.
    pub fn judge(&mut self, key: &str, topic: &[u8]) -> Verdict {
        let topics = match self.keys.get_mut(key) {
            Some(topics) => topics,
            None => self.keys.entry(key.to_string()).or_default(),
        };
        if !topic::is_published(topic) {
            topics.refused += 1;
            if topics.refused > MAX_REFUSED_PER_KEY {
                // Counted afresh after the flood is dealt with.
                topics.refused = 0;
                return Verdict::Flood;
            }
            return Verdict::Refuse;
        }
        if topics.taken.contains(topic) {
            return Verdict::Take;
        }
        if topics.taken.len() >= MAX_TOPICS_PER_KEY {
            return Verdict::Flood;
        }
        topics.taken.insert(topic.into());
        Verdict::Take
    }
}

/// A key that flooded the publisher, from this address (as libzmq wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    pub key: String,
    pub address: String,
}

/// The publisher's connections (from its monitor) and the keys refused there: kept by
/// the task that reads the monitor and answers the handshakes.
#[derive(Debug, Default)]
pub struct PublisherPeers {
    connections: HashMap<RawFd, SocketAddr>,
    banned: HashMap<String, Instant>,
}

impl PublisherPeers {
    /// A connection was accepted on descriptor `fd`.
    pub fn connected(&mut self, fd: RawFd) {
        if let Some(peer) = peer_of(fd) {
            self.connections.insert(fd, peer);
        }
    }

    pub fn disconnected(&mut self, fd: RawFd) {
        self.connections.remove(&fd);
    }

    /// Follows the publisher's monitor: a connection's descriptor, to close it should it
    /// flood.
    pub fn noted(&mut self, event: &jobcast_transport::Result<(PeerEvent, u32)>) {
        match event {
            Ok((PeerEvent::Connected, fd)) => self.connected(*fd as RawFd),
            Ok((PeerEvent::Disconnected, fd)) => self.disconnected(*fd as RawFd),
            _ => {}
        }
    }

    /// Whether `key` is refused on the publisher now.
    pub fn is_banned(&mut self, key: &str, now: Instant) -> bool {
        self.banned.retain(|_, until| *until > now);
        self.banned.contains_key(key)
    }

    /// Refuses the flood's key for [`FLOOD_BAN`] and closes the connection from its
    /// address that received the most; the peer closed, if one was.
    pub fn stop(&mut self, flood: &Flood, now: Instant) -> Option<SocketAddr> {
        self.banned.insert(flood.key.clone(), now + FLOOD_BAN);
        let from = |peer: &SocketAddr| match flood.address.parse::<IpAddr>() {
            Ok(ip) => peer.ip() == ip,
            Err(_) => peer.ip().to_string() == flood.address,
        };
        // A descriptor whose peer changed was closed and reused: forgotten, not touched.
        self.connections
            .retain(|fd, peer| peer_of(*fd) == Some(*peer));
        let (fd, peer) = self
            .connections
            .iter()
            .filter(|(_, peer)| from(peer))
            .max_by_key(|(fd, _)| bytes_received(**fd))
            .map(|(fd, peer)| (*fd, *peer))?;
        // SAFETY: `fd` is libzmq's open TCP connection to `peer` (checked just above);
        // shutting it down leaves the descriptor open for libzmq, which sees the
        // connection end and closes it, freeing what it held.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        self.connections.remove(&fd);
        Some(peer)
    }
}

/// The remote address of a TCP socket, if `fd` is one.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the storage is large enough for any address, and its length is passed.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                let v4 = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::from((
                    u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let v6 = &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::from((
                    v6.sin6_addr.s6_addr,
                    u16::from_be(v6.sin6_port),
                )))
            }
            _ => None,
        }
    }
}

/// Bytes the kernel received on TCP connection `fd` (0 if it cannot say).
fn bytes_received(fd: RawFd) -> u64 {
    // SAFETY: `info` is as large as the length passed; the kernel fills what it has.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc == 0 {
            info.tcpi_bytes_received
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_key_takes_the_topics_it_serves_and_no_more() {
        let mut book = SubscriptionBook::default();
        assert_eq!(book.judge("w1", b"all/"), Verdict::Take);
        assert_eq!(book.judge("w1", b"worker/w1/"), Verdict::Take);
        for n in 0..MAX_TOPICS_PER_KEY - 2 {
            let pool = topic::pool(&format!("p{n}"));
            assert_eq!(book.judge("w1", pool.as_bytes()), Verdict::Take, "{pool}");
        }
        // Full: the same topics again (a reconnection) are taken, a new one is a flood.
        assert_eq!(book.judge("w1", b"pool/p0/"), Verdict::Take);
        assert_eq!(book.judge("w1", b"all/"), Verdict::Take);
        assert_eq!(book.judge("w1", b"pool/one-more/"), Verdict::Flood);
        // Another key has its own.
        assert_eq!(book.judge("w2", b"pool/one-more/"), Verdict::Take);
    }

    #[test]
    fn topics_nobody_publishes_on_are_refused_and_many_are_a_flood() {
        let mut book = SubscriptionBook::default();
        for n in 0..MAX_REFUSED_PER_KEY {
            assert_eq!(
                book.judge("w1", format!("x{n}").as_bytes()),
                Verdict::Refuse
            );
        }
        assert_eq!(book.judge("w1", b""), Verdict::Flood);
        assert_eq!(book.judge("w1", b"all"), Verdict::Refuse, "counted afresh");
        assert_eq!(book.judge("w1", b"all/"), Verdict::Take);
    }

    #[test]
    fn a_flood_bans_its_key_and_closes_the_busiest_connection_from_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut quiet = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (quiet_end, _) = listener.accept().unwrap();
        let mut busy = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (busy_end, busy_peer) = listener.accept().unwrap();
        quiet.write_all(b"hello").unwrap();
        busy.write_all(&[7u8; 4096]).unwrap();
        let received = |fd| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while bytes_received(fd) < 4096 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        received(busy_end.as_raw_fd());

        let mut peers = PublisherPeers::default();
        peers.connected(quiet_end.as_raw_fd());
        peers.connected(busy_end.as_raw_fd());
        let now = Instant::now();
        let elsewhere = Flood {
            key: "w9".into(),
            address: "10.9.9.9".into(),
        };
        assert_eq!(
            peers.stop(&elsewhere, now),
            None,
            "no connection from there"
        );
        let flood = Flood {
            key: "w1".into(),
            address: "127.0.0.1".into(),
        };
        assert_eq!(peers.stop(&flood, now), Some(busy_peer));
        assert!(peers.is_banned("w1", now) && !peers.is_banned("w2", now));
        assert!(!peers.is_banned("w1", now + FLOOD_BAN));
        // The busy connection was shut down; the quiet one still carries bytes.
        let mut byte = [0u8; 1];
        busy.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let read = std::io::Read::read(&mut busy, &mut byte);
        let closed = match &read {
            Ok(n) => *n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "closed: {read:?}");
        quiet.write_all(b"still here").unwrap();
        drop(quiet_end);
    }
}
