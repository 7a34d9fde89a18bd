//! A TCP relay between a worker and the broker that can stop passing bytes, both ways,
//! while both ends stay up and connected: a network partition, as a test can make one on
//! loopback without privileges.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a stopped pump looks again (and how long a read waits for bytes).
const POLL: Duration = Duration::from_millis(20);

pub struct Relay {
    /// Where the worker connects instead of the broker, `tcp://127.0.0.1:port`.
    pub endpoint: String,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays connections made to a fresh loopback port to `target` (`tcp://host:port`).
    pub fn start(target: &str) -> Relay {
        let target = target.trim_start_matches("tcp://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        listener.set_nonblocking(true).expect("relay nonblocking");
        let endpoint = format!("tcp://{}", listener.local_addr().expect("relay address"));
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (cut, stop) = (cut.clone(), stop.clone());
            std::thread::spawn(move || accept(listener, &target, cut, stop))
        };
        Relay {
            endpoint,
            cut,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Stops passing bytes both ways (they wait in the relay and the kernel's buffers);
    /// connections stay open.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Passes bytes again, the held ones first.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target: &str, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let mut pumps = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((inbound, _)) => {
                let Ok(outbound) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (cut, stop) = (cut.clone(), stop.clone());
                    pumps.push(std::thread::spawn(move || pump(from, to, cut, stop)));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Copies `from` to `to` until either closes or the relay stops; reads nothing while cut.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buffer = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        if cut.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
