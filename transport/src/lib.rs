//! libzmq sockets driven from tokio.
//!
//! A libzmq socket is not thread-safe, so exactly one task owns each one. Rather than a
//! thread per socket with a bridge, the owning task waits on the socket's notification
//! descriptor (`ZMQ_FD`) through tokio's reactor and then does non-blocking sends and
//! receives. `ZMQ_FD` only says "the socket's events may have changed": after every wake,
//! and after every send or receive, the owner must ask `ZMQ_EVENTS` again before it
//! sleeps. [`AsyncSocket::wait`] does exactly that, so callers cannot get it wrong.
//!
//! Reads are bounded in both directions: libzmq refuses a message over `ZMQ_MAXMSGSIZE`
//! before allocating it (set by [`Limits`]), and [`AsyncSocket::try_recv`] keeps at most a
//! fixed number of parts, discarding the rest of a longer message.

mod monitor;

pub use monitor::{Monitor, PeerEvent};
pub use zmq;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use thiserror::Error;
use tokio::io::unix::AsyncFd;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot register the socket with the reactor: {0}")]
    Reactor(#[from] io::Error),
}

pub type Result<T> = std::result::Result<T, TransportError>;

/// The process's one libzmq context (it owns libzmq's I/O thread).
pub fn context() -> &'static zmq::Context {
    static CONTEXT: std::sync::OnceLock<zmq::Context> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

/// The limits and liveness settings every jobcast socket gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message a peer may send; a peer that declares more is disconnected before
    /// anything is allocated.
    pub max_message_bytes: usize,
    /// Messages queued per peer in each direction; past it a PUB drops, a ROUTER refuses.
    pub high_water_mark: i32,
    /// A connection whose peer host stops answering TCP keepalive probes is closed after
    /// about this long.
    ///
    /// ZMTP heartbeats (`ZMQ_HEARTBEAT_IVL`) are deliberately left off: libzmq 4.3.4
    /// aborts the whole process (`Assertion failed: !_io_error`, stream_engine_base.cpp)
    /// when a heartbeat falls due on a connection whose receive queue is full and whose
    /// peer has sent more meanwhile (libzmq issues 4364 and 4767, open). A stopped
    /// worker's SUB reaches that state; so could a busy broker's ROUTER.
    pub dead_peer_timeout: Duration,
    /// A connection that has not completed the ZMTP handshake by then is closed.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            high_water_mark: 1000,
            dead_peer_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

impl Limits {
    /// Applies these limits to a fresh socket (before bind or connect).
    pub fn apply(&self, socket: &zmq::Socket) -> Result<()> {
        socket.set_maxmsgsize(self.max_message_bytes as i64)?;
        socket.set_sndhwm(self.high_water_mark)?;
        socket.set_rcvhwm(self.high_water_mark)?;
        // Idle for half the timeout, then four probes over the other half.
        let secs = self.dead_peer_timeout.as_secs().clamp(4, 86_400) as i32;
        socket.set_tcp_keepalive(1)?;
        socket.set_tcp_keepalive_idle((secs / 2).max(1))?;
        socket.set_tcp_keepalive_intvl((secs / 8).max(1))?;
        socket.set_tcp_keepalive_cnt(4)?;
        socket.set_handshake_ivl(millis(self.handshake_timeout))?;
        // Nothing is worth waiting for at close: the peers retry.
        socket.set_linger(0)?;
        Ok(())
    }
}

/// Who a connecting socket says it is (ZMTP PLAIN). The broker's handshake refuses a
/// connection without a known name and its password, before any message is read.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// Applies them to a socket that connects (before `connect`).
    pub fn apply(&self, socket: &zmq::Socket) -> Result<()> {
        socket.set_plain_username(Some(&self.username))?;
        socket.set_plain_password(Some(&self.password))?;
        Ok(())
    }
}

/// Puts an XPUB socket in manual mode: subscriptions reach the application as messages
/// and take effect only when it subscribes the connection they came from
/// (`set_subscribe` right after receiving one). The `zmq` crate has no setter for it.
pub fn set_xpub_manual(socket: &mut zmq::Socket) -> Result<()> {
    let on: std::os::raw::c_int = 1;
    // SAFETY: the socket is open (borrowed mutably for the call), and the option takes
    // an int by pointer and size, as given.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_MANUAL as std::os::raw::c_int,
            (&on as *const std::os::raw::c_int).cast(),
            std::mem::size_of::<std::os::raw::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: reads this thread's libzmq error number, nothing else.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }).into())
    }
}

/// Creates a socket of `kind` with `limits` applied.
pub fn socket(kind: zmq::SocketType, limits: &Limits) -> Result<zmq::Socket> {
    let socket = context().socket(kind)?;
    limits.apply(&socket)?;
    Ok(socket)
}

/// A SUB socket connecting to `endpoint` with `topics`; libzmq reconnects it by itself
/// (first after 100 ms, backing off to 5 s).
pub fn subscriber(
    endpoint: &str,
    topics: &[String],
    limits: &Limits,
    credentials: &Credentials,
) -> Result<AsyncSocket> {
    let socket = socket(zmq::SUB, limits)?;
    credentials.apply(&socket)?;
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(5_000)?;
    for topic in topics {
        socket.set_subscribe(topic.as_bytes())?;
    }
    socket.connect(endpoint)?;
    AsyncSocket::new(socket)
}

/// The notification descriptor; libzmq owns it, so it is never closed here.
struct NotifyFd(RawFd);

impl AsRawFd for NotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One received message, or what was refused instead. Parts are libzmq's own buffers,
/// not copies (`zmq::Message` reads as `[u8]`).
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Parts(Vec<zmq::Message>),
    /// A message with more parts than allowed; it was read to its end and dropped.
    TooManyParts(usize),
}

/// A libzmq socket owned by one task.
///
/// The mutex is never contended (one task uses the socket) and never held across an
/// await; it is what lets a future that borrows the socket move between tokio's threads,
/// which libzmq allows as long as the handover is a full memory barrier.
pub struct AsyncSocket {
    // Declared first so that it is dropped before the socket that owns the descriptor.
    notify: AsyncFd<NotifyFd>,
    socket: std::sync::Mutex<zmq::Socket>,
}

impl AsyncSocket {
    /// Must be called inside a tokio runtime.
    pub fn new(socket: zmq::Socket) -> Result<Self> {
        let fd = socket.get_fd()?;
        // SAFETY: the descriptor belongs to `socket`, which lives in the same struct and
        // is dropped after the registration (field order), so it stays open meanwhile.
        let notify =
            unsafe { AsyncFd::register_with_interest(NotifyFd(fd), tokio::io::Interest::READABLE) }
                .map_err(|e| TransportError::Reactor(e.into()))?;
        Ok(AsyncSocket {
            notify,
            socket: std::sync::Mutex::new(socket),
        })
    }

    /// Runs `f` on the socket (to set an option, bind, connect).
    pub fn with<R>(&self, f: impl FnOnce(&zmq::Socket) -> R) -> R {
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&socket)
    }

    /// Waits until the socket has one of `events` (`zmq::POLLIN`, `zmq::POLLOUT`).
    pub async fn wait(&self, events: zmq::PollEvents) -> Result<()> {
        loop {
            // Asked after every wake-up: the descriptor is edge-like and a send or a
            // receive may have consumed its signal.
            if self
                .with(|s| again_if_interrupted(|| s.get_events()))?
                .intersects(events)
            {
                return Ok(());
            }
            let mut guard = self.notify.readable().await?;
            guard.clear_ready();
        }
    }

    /// Reads one message without waiting, keeping at most `max_parts` parts.
    pub fn try_recv(&self, max_parts: usize) -> Result<Option<Received>> {
        self.with(|socket| recv_bounded(socket, max_parts))
    }

    /// Waits for the next message, keeping at most `max_parts` parts.
    pub async fn recv(&self, max_parts: usize) -> Result<Received> {
        loop {
            if let Some(received) = self.try_recv(max_parts)? {
                return Ok(received);
            }
            self.wait(zmq::POLLIN).await?;
        }
    }

    /// Sends a message without waiting. `Ok(false)` means it could not be queued now
    /// (high-water mark reached, or no peer yet).
    pub fn try_send<I, T>(&self, parts: I) -> Result<bool>
    where
        I: IntoIterator<Item = T>,
        T: Into<zmq::Message>,
    {
        match self.with(|s| s.send_multipart(parts, zmq::DONTWAIT)) {
            Ok(()) => Ok(true),
            Err(zmq::Error::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The endpoint the socket is bound to (ports resolved when 0 or `*` was asked for).
    pub fn last_endpoint(&self) -> Result<String> {
        Ok(self
            .with(|s| s.get_last_endpoint())?
            .unwrap_or_else(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }
}

/// Runs a libzmq call again while a signal interrupts it (`EINTR`: the broker takes
/// SIGHUP and SIGTERM while it reads and writes; an interruption is never a failure).
fn again_if_interrupted<T>(mut call: impl FnMut() -> zmq::Result<T>) -> zmq::Result<T> {
    loop {
        match call() {
            Err(zmq::Error::EINTR) => continue,
            other => return other,
        }
    }
}

fn recv_bounded(socket: &zmq::Socket, max_parts: usize) -> Result<Option<Received>> {
    let first = match again_if_interrupted(|| socket.recv_msg(zmq::DONTWAIT)) {
        Ok(message) => message,
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut parts = vec![first];
    let mut count = 1;
    // libzmq delivers a multi-part message whole, so its parts are all here.
    while again_if_interrupted(|| socket.get_rcvmore())? {
        let mut part = zmq::Message::new();
        again_if_interrupted(|| socket.recv(&mut part, zmq::DONTWAIT))?;
        count += 1;
        if parts.len() < max_parts {
            parts.push(part);
        }
    }
    if count > max_parts {
        return Ok(Some(Received::TooManyParts(count)));
    }
    Ok(Some(Received::Parts(parts)))
}

impl AsyncSocket {
    /// Stops the socket's monitor (if it has one), synchronously: call it before the
    /// [`Monitor`] reading its events is dropped.
    ///
    /// libzmq sends a socket's monitor events with a blocking send, from its own I/O
    /// thread, holding the socket's monitor lock, and keeps a closed socket alive (and
    /// emitting events) until its reaper gets to it. Should the events' reader be gone
    /// when a connection comes, that send blocks the I/O thread for good (and with it
    /// every socket of the process), and whoever then stops the monitor waits for the
    /// lock for good: a broker stopping while a client reconnected hung so.
    pub fn stop_monitoring(&self) {
        let mut socket = self
            .socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: the socket is open (it is closed only when the field is dropped) and a
        // null endpoint is how libzmq is told to stop monitoring; a socket that is not
        // monitored is left as it is.
        unsafe {
            zmq_sys::zmq_socket_monitor(socket.as_mut_ptr(), std::ptr::null(), 0);
        }
    }
}

impl Drop for AsyncSocket {
    fn drop(&mut self) {
        // Before the socket closes, in case its owner did not (see `stop_monitoring`).
        self.stop_monitoring();
    }
}

/// libzmq's wildcard port is `*`; jobcast's configs say `0` like every other program.
pub fn bindable(endpoint: &str) -> String {
    match endpoint.strip_suffix(":0") {
        Some(host) if endpoint.starts_with("tcp://") => format!("{host}:*"),
        _ => endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (AsyncSocket, AsyncSocket) {
        let limits = Limits::default();
        let router = socket(zmq::ROUTER, &limits).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let router = AsyncSocket::new(router).unwrap();
        let dealer = socket(zmq::DEALER, &limits).unwrap();
        dealer.connect(&router.last_endpoint().unwrap()).unwrap();
        (router, AsyncSocket::new(dealer).unwrap())
    }

    async fn recv(socket: &AsyncSocket, max_parts: usize) -> Received {
        socket.recv(max_parts).await.unwrap()
    }

    #[tokio::test]
    async fn a_round_trip_wakes_both_owners() {
        let (router, dealer) = pair();
        dealer.wait(zmq::POLLOUT).await.unwrap();
        assert!(dealer.try_send([&b"ping"[..]]).unwrap());
        let Received::Parts(parts) = recv(&router, 2).await else {
            panic!("expected a message");
        };
        assert_eq!(&parts[1][..], b"ping");
        assert!(router.try_send([&parts[0][..], b"pong"]).unwrap());
        let Received::Parts(reply) = recv(&dealer, 1).await else {
            panic!("expected the reply");
        };
        assert_eq!(&reply[0][..], b"pong");
    }

    #[tokio::test]
    async fn a_message_with_too_many_parts_is_dropped_and_the_next_still_arrives() {
        let (router, dealer) = pair();
        dealer.wait(zmq::POLLOUT).await.unwrap();
        let long: Vec<&[u8]> = vec![b"x"; 50];
        assert!(dealer.try_send(long).unwrap());
        assert!(dealer.try_send([&b"ok"[..]]).unwrap());
        // identity + 50 parts
        assert_eq!(recv(&router, 2).await, Received::TooManyParts(51));
        let Received::Parts(parts) = recv(&router, 2).await else {
            panic!("expected the second message");
        };
        assert_eq!(&parts[1][..], b"ok");
    }

    #[test]
    fn port_zero_becomes_the_wildcard() {
        assert_eq!(bindable("tcp://127.0.0.1:0"), "tcp://127.0.0.1:*");
        assert_eq!(bindable("tcp://127.0.0.1:5555"), "tcp://127.0.0.1:5555");
    }
}
