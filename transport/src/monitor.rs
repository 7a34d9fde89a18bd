//! Connection events of a socket (libzmq's socket monitor), read by the socket's owner.

use crate::{context, AsyncSocket, Received, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// What happened to one connection of the monitored socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A TCP connection was accepted (a bound socket) or made (a connecting one); its
    /// handshake is still to come.
    Connected,
    /// A connection closed: the peer left, stopped answering heartbeats, or broke a
    /// limit (an oversized message, a malformed frame).
    Disconnected,
    /// A connection's ZMTP handshake completed (no descriptor: libzmq gives none).
    HandshakeSucceeded,
    /// A connection was closed before its handshake completed (another mechanism, or
    /// too slow; libzmq closes some without this event: see the broker's `handshakes`).
    HandshakeFailed,
    /// A connection was refused for its credentials.
    AuthFailed,
    /// A connecting socket's attempt failed (nothing listens there, or the host is
    /// unreachable); libzmq tries again later.
    ConnectFailed,
}

/// Reads connection events of one socket. Keep reading them promptly, and drop the
/// monitored socket before (or with) this: see [`crate::AsyncSocket`]'s `Drop`.
pub struct Monitor {
    events: AsyncSocket,
}

impl Monitor {
    /// Starts monitoring `target`. Must be called inside a tokio runtime.
    pub fn attach(target: &zmq::Socket) -> Result<Monitor> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let endpoint = format!(
            "inproc://jobcast-monitor-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let wanted = zmq::SocketEvent::ACCEPTED as i32
            | zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32
            | zmq::SocketEvent::CONNECTED as i32
            | zmq::SocketEvent::DISCONNECTED as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32
            | zmq::SocketEvent::CONNECT_RETRIED as i32;
        target.monitor(&endpoint, wanted)?;
        let events = context().socket(zmq::PAIR)?;
        events.set_linger(0)?;
        // libzmq sends events with a blocking send: a bounded queue here would let a
        // burst of connections stall libzmq's I/O thread while the reader catches up.
        events.set_rcvhwm(0)?;
        events.connect(&endpoint)?;
        Ok(Monitor {
            events: AsyncSocket::new(events)?,
        })
    }

    /// The next event; waits for one.
    pub async fn next(&self) -> Result<PeerEvent> {
        Ok(self.next_with_value().await?.0)
    }

    /// The next event and its value: for `Connected` and `Disconnected` the
    /// connection's file descriptor (libzmq's, not to be closed), else an error code.
    pub async fn next_with_value(&self) -> Result<(PeerEvent, u32)> {
        loop {
            if let Some(event) = self.try_next_with_value()? {
                return Ok(event);
            }
            self.events.wait(zmq::POLLIN).await?;
        }
    }

    /// As [`Monitor::next_with_value`], without waiting: `None` when no event is queued.
    pub fn try_next_with_value(&self) -> Result<Option<(PeerEvent, u32)>> {
        while let Some(received) = self.events.try_recv(2)? {
            if let Some(event) = decode(&received) {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

/// An event is two parts: 2 bytes of event number and 4 of value (native order), then
/// the endpoint.
fn decode(received: &Received) -> Option<(PeerEvent, u32)> {
    let Received::Parts(parts) = received else {
        return None;
    };
    let head = parts.first()?;
    let number = u16::from_ne_bytes([*head.first()?, *head.get(1)?]);
    let value = u32::from_ne_bytes(head.get(2..6)?.try_into().ok()?);
    let event = match zmq::SocketEvent::from_raw(number) {
        zmq::SocketEvent::ACCEPTED | zmq::SocketEvent::CONNECTED => Some(PeerEvent::Connected),
        zmq::SocketEvent::DISCONNECTED => Some(PeerEvent::Disconnected),
        zmq::SocketEvent::HANDSHAKE_SUCCEEDED => Some(PeerEvent::HandshakeSucceeded),
        zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL
        | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL => Some(PeerEvent::HandshakeFailed),
        zmq::SocketEvent::HANDSHAKE_FAILED_AUTH => Some(PeerEvent::AuthFailed),
        zmq::SocketEvent::CONNECT_RETRIED => Some(PeerEvent::ConnectFailed),
        _ => None,
    }?;
    Some((event, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{socket, Limits};

    #[tokio::test]
    async fn a_peer_coming_and_going_is_seen() {
        let limits = Limits::default();
        let router = socket(zmq::ROUTER, &limits).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let monitor = Monitor::attach(&router).unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let router = AsyncSocket::new(router).unwrap();
        let dealer = socket(zmq::DEALER, &limits).unwrap();
        dealer.connect(&endpoint).unwrap();
        let deadline = std::time::Duration::from_secs(10);
        let first = tokio::time::timeout(deadline, monitor.next()).await;
        assert_eq!(first.unwrap().unwrap(), PeerEvent::Connected);
        // A message through proves the handshake is over, so closing is a disconnect
        // rather than a failed handshake.
        dealer.send("hello", 0).unwrap();
        let received = tokio::time::timeout(deadline, router.recv(2)).await;
        assert!(matches!(received, Ok(Ok(Received::Parts(_)))));
        drop(dealer);
        let second = tokio::time::timeout(deadline, monitor.next()).await;
        assert_eq!(second.unwrap().unwrap(), PeerEvent::HandshakeSucceeded);
        let third = tokio::time::timeout(deadline, monitor.next()).await;
        assert_eq!(third.unwrap().unwrap(), PeerEvent::Disconnected);
    }

    #[tokio::test]
    async fn a_connection_to_a_port_nobody_listens_on_is_seen_to_fail() {
        // A port that was free a moment ago: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dealer = socket(zmq::DEALER, &Limits::default()).unwrap();
        let monitor = Monitor::attach(&dealer).unwrap();
        dealer.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), monitor.next()).await;
        assert_eq!(event.unwrap().unwrap(), PeerEvent::ConnectFailed);
    }
}
