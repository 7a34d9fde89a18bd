//! Who ended a connection: its peer, or libzmq on the broker's side.
//!
//! libzmq closes a connection whose peer sends a frame over `max_frame_bytes` (or one
//! that breaks ZMTP) and reports only a disconnect, the same event as a peer leaving; the
//! descriptor it names is closed by the time the event is read. So the side task keeps a
//! duplicate of each accepted connection's descriptor: the socket stays open through it,
//! and at the disconnect the kernel still says its state. Closed by libzmq with the peer
//! still there, it is `ESTABLISHED` (the broker's side has not sent its FIN: the duplicate
//! holds it); a peer that left has sent its FIN or reset (`CLOSE_WAIT`, `CLOSED`). The
//! duplicate is closed right after, which ends the connection for the peer.
//!
//! A descriptor number can be reused before its accept event is read, and the duplicate
//! then be of a later connection; the side task reads the monitors before it answers each
//! handshake, so a connection that completed its handshake (the only ones whose ends are
//! asked about here) had its own descriptor kept before it could. At most a quarter of
//! the process's open-files limit is kept, so libzmq never runs short of descriptors
//! because of this.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Linux's `TCP_ESTABLISHED` (`tcpi_state`, include/net/tcp_states.h); libc has no name
/// for it.
const TCP_ESTABLISHED: u8 = 1;

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The peer (it closed, reset, or stopped answering).
    ByPeer,
    /// libzmq, with the peer still connected: a frame it refused.
    ByBroker,
}

/// Duplicates of the descriptors of one socket's open connections.
#[derive(Debug, Default)]
pub struct KeptDescriptors {
    kept: HashMap<RawFd, OwnedFd>,
}

impl KeptDescriptors {
    /// A connection was accepted on `fd` (libzmq's).
    pub fn accepted(&mut self, fd: RawFd) {
        if self.kept.len() >= keep_at_most() {
            return;
        }
        // SAFETY: `fd` is only borrowed for the duplication; if it is not open any more,
        // `try_clone_to_owned` fails and nothing is kept.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(copy) = borrowed.try_clone_to_owned() {
            if is_tcp(&copy) {
                self.kept.insert(fd, copy);
            }
        }
    }

    /// The connection on `fd` was closed by libzmq (its event may be read before libzmq
    /// has closed the descriptor itself): who ended it, if that can be told.
    pub fn closed(&mut self, fd: RawFd) -> Option<Ended> {
        let copy = self.kept.remove(&fd)?;
        let ended = match tcp_state(&copy)? {
            TCP_ESTABLISHED => Ended::ByBroker,
            _ => Ended::ByPeer,
        };
        Some(ended)
    }

    /// Lets every duplicate go (the monitor that tells closes has stopped).
    pub fn clear(&mut self) {
        self.kept.clear();
    }
}

/// A quarter of the open-files limit, read once (the broker does not change it).
fn keep_at_most() -> usize {
    static AT_MOST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AT_MOST.get_or_init(|| {
        // SAFETY: `limit` is written by the call.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return 0;
        }
        (limit.rlim_cur / 4) as usize
    })
}

fn is_tcp(fd: &OwnedFd) -> bool {
    tcp_state(fd).is_some()
}

/// The TCP state of a socket ([`TCP_ESTABLISHED`], ...), if it is a TCP socket.
fn tcp_state(fd: &OwnedFd) -> Option<u8> {
    // SAFETY: `info` is as large as the length passed; the kernel fills what it has.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_close_by_the_broker_is_told_from_one_by_the_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut kept = KeptDescriptors::default();

        // The server side closes (as libzmq does on a refused frame); the peer is there.
        let (mut client, server) = pair(&listener);
        let fd = server.as_raw_fd();
        kept.accepted(fd);
        drop(server);
        assert_eq!(kept.closed(fd), Some(Ended::ByBroker));
        // The duplicate went with it: the peer sees the end.
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);

        // The peer leaves first, then the server side closes.
        let (client, server) = pair(&listener);
        let fd = server.as_raw_fd();
        kept.accepted(fd);
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(10);
        let kept_copy = kept.kept.get(&fd).unwrap();
        while tcp_state(kept_copy) == Some(TCP_ESTABLISHED) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(server);
        assert_eq!(kept.closed(fd), Some(Ended::ByPeer));

        // The close's event may be read before libzmq closed its descriptor: the same.
        let (_client, server) = pair(&listener);
        let fd = server.as_raw_fd();
        kept.accepted(fd);
        assert_eq!(kept.closed(fd), Some(Ended::ByBroker));
        drop(server);
        assert_eq!(kept.closed(12345), None, "never kept");
    }
}
