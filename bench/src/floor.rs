//! This machine's floor for dispatch latency: what any durable scheduler that starts a
//! process on a run's request must spend at least once, measured beside jobcast in the
//! same bench run. An fsync where the broker keeps its store (a run is durable before it
//! is acknowledged), a spawn of the same script, and a loopback round trip (the request
//! reaches the worker over the network).

use crate::stats::Summary;
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::time::Instant;

/// Each part's median, µs.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub fsync_us: u64,
    pub spawn_us: u64,
    pub round_trip_us: u64,
}

impl Floor {
    pub fn total_us(&self) -> u64 {
        self.fsync_us + self.spawn_us + self.round_trip_us
    }
}

fn median(samples: &[u64], what: &str) -> Result<u64> {
    Ok(Summary::of(samples)
        .with_context(|| format!("no samples of {what}"))?
        .p50)
}

fn micros(started: Instant) -> u64 {
    started.elapsed().as_micros() as u64
}

/// A small append made durable, as a commit is: in a directory beside the broker's.
fn fsyncs(samples: usize) -> Result<u64> {
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-")
        .tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("floor"))?;
    let record = [b'x'; 400];
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        times.push(micros(started));
    }
    median(&times, "fsync")
}

/// `sh script` started, until the call that starts it returns (the process runs).
fn spawns(samples: usize, script: &[u8]) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("noop.sh");
    std::fs::write(&path, script)?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let mut child = std::process::Command::new("/bin/sh").arg(&path).spawn()?;
        times.push(micros(started));
        child.wait()?;
    }
    median(&times, "spawn")
}

/// 200 bytes there and back over loopback TCP.
fn round_trips(samples: usize) -> Result<u64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut peer, _) = listener.accept()?;
        peer.set_nodelay(true)?;
        let mut buffer = [0u8; 200];
        loop {
            if peer.read_exact(&mut buffer).is_err() {
                return Ok(());
            }
            peer.write_all(&buffer)?;
        }
    });
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut buffer = [7u8; 200];
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        stream.write_all(&buffer)?;
        stream.read_exact(&mut buffer)?;
        times.push(micros(started));
    }
    drop(stream);
    let _ = echo.join();
    median(&times, "loopback round trip")
}

/// Measures the floor (`samples` of each part) for a run of `script`.
pub fn measure(samples: usize, script: &[u8]) -> Result<Floor> {
    Ok(Floor {
        fsync_us: fsyncs(samples)?,
        spawn_us: spawns(samples, script)?,
        round_trip_us: round_trips(samples)?,
    })
}
