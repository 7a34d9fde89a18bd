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

/// A record as large as a run's, appended as a commit appends it.
const RECORD: [u8; 400] = [b'x'; 400];

/// The pause before each chain of [`measure_from_idle`]: about what separates two
/// dispatches of the bench's latency workload, which looks every 0.5 ms.
const IDLE: std::time::Duration = std::time::Duration::from_millis(1);

/// A file to append to, in a directory beside the broker's (removed with the
/// directory).
fn append_file() -> Result<(tempfile::TempDir, std::fs::File)> {
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-")
        .tempdir()?;
    let file = std::fs::File::create(dir.path().join("floor"))?;
    Ok((dir, file))
}

/// `script` in a file of its own (removed with the directory).
fn script_file(script: &[u8]) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("noop.sh");
    std::fs::write(&path, script)?;
    Ok((dir, path))
}

/// The three parts of the floor, set up once and timed one at a time.
struct Parts {
    append: (tempfile::TempDir, std::fs::File),
    script: (tempfile::TempDir, std::path::PathBuf),
    /// A loopback TCP connection to a thread that echoes what it reads.
    echo: std::net::TcpStream,
    echoing: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Parts {
    fn new(script: &[u8]) -> Result<Parts> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let echoing = std::thread::spawn(move || -> std::io::Result<()> {
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
        let echo = std::net::TcpStream::connect(address)?;
        echo.set_nodelay(true)?;
        Ok(Parts {
            append: append_file()?,
            script: script_file(script)?,
            echo,
            echoing,
        })
    }

    /// A small append made durable, as a commit is: µs.
    fn fsync(&mut self) -> Result<u64> {
        let started = Instant::now();
        self.append.1.write_all(&RECORD)?;
        self.append.1.sync_data()?;
        Ok(micros(started))
    }

    /// `sh script` started, until the call that starts it returns (the process runs):
    /// µs, and the process to wait for.
    fn spawn(&self) -> Result<(u64, std::process::Child)> {
        let started = Instant::now();
        let child = std::process::Command::new("/bin/sh")
            .arg(&self.script.1)
            .spawn()?;
        Ok((micros(started), child))
    }

    /// 200 bytes there and back over loopback TCP: µs.
    fn round_trip(&mut self) -> Result<u64> {
        let mut buffer = [7u8; 200];
        let started = Instant::now();
        self.echo.write_all(&buffer)?;
        self.echo.read_exact(&mut buffer)?;
        Ok(micros(started))
    }

    fn close(self) {
        drop(self.echo);
        let _ = self.echoing.join();
    }
}

/// Each part's median, `samples` of each: `chained`, the three one after another after
/// [`IDLE`] (as an idle system's dispatch meets them: the machine woken once, by the
/// request); else each part's samples back to back.
fn measure_parts(samples: usize, script: &[u8], chained: bool) -> Result<Floor> {
    let mut parts = Parts::new(script)?;
    let (mut fsyncs, mut spawns, mut trips) = (Vec::new(), Vec::new(), Vec::new());
    let spawn = |parts: &Parts, spawns: &mut Vec<u64>| -> Result<()> {
        let (took, mut child) = parts.spawn()?;
        spawns.push(took);
        child.wait()?;
        Ok(())
    };
    if chained {
        for _ in 0..samples {
            std::thread::sleep(IDLE);
            fsyncs.push(parts.fsync()?);
            trips.push(parts.round_trip()?);
            spawn(&parts, &mut spawns)?;
        }
    } else {
        for _ in 0..samples {
            fsyncs.push(parts.fsync()?);
        }
        for _ in 0..samples {
            spawn(&parts, &mut spawns)?;
        }
        for _ in 0..samples {
            trips.push(parts.round_trip()?);
        }
    }
    parts.close();
    Ok(Floor {
        fsync_us: median(&fsyncs, "fsync")?,
        spawn_us: median(&spawns, "spawn")?,
        round_trip_us: median(&trips, "loopback round trip")?,
    })
}

/// Measures the floor (`samples` of each part) for a run of `script`, each part's
/// samples back to back.
pub fn measure(samples: usize, script: &[u8]) -> Result<Floor> {
    measure_parts(samples, script, false)
}

/// Measures the floor as a dispatch on an idle system meets it: `samples` times, after
/// a pause, an fsync, a loopback round trip and a spawn, one after another. On a
/// virtual machine this differs from [`measure`]: an fsync issued after even 0.2 ms of
/// idleness took 0.7-1 ms here, against 0.05 ms back to back (docs/BENCHMARKS.md).
pub fn measure_from_idle(samples: usize, script: &[u8]) -> Result<Floor> {
    measure_parts(samples, script, true)
}

/// The CPU a shell run costs at least on jobcast's parts, whatever is built on them: one
/// start of the script, one commit (a grant is durable before its worker hears of it)
/// and one request with its answer over libzmq (a run's end, carrying the next claim,
/// answered with the next grant). µs of CPU each, medians of nothing: totals over many,
/// divided.
#[derive(Debug, Clone, Copy)]
pub struct CpuFloor {
    /// `sh script` started and waited for: the starting process's own CPU, not the
    /// script's.
    pub spawn_us: f64,
    /// A 400-byte append made durable (`write` + `fsync`), as a commit is.
    pub commit_us: f64,
    /// A 200-byte request and its answer between two libzmq contexts over loopback TCP
    /// (a DEALER and a ROUTER, each with its I/O thread, as a worker and a broker have),
    /// blocking calls on both sides: both sides' CPU.
    pub round_trip_us: f64,
}

impl CpuFloor {
    pub fn total_us(&self) -> f64 {
        self.spawn_us + self.commit_us + self.round_trip_us
    }
}

/// CPU used so far, µs: by the calling thread, or by the whole process.
fn cpu_used_us(who: libc::c_int) -> Result<f64> {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Ok(us(usage.ru_utime) + us(usage.ru_stime))
}

fn spawn_cpu(samples: usize, script: &[u8]) -> Result<f64> {
    let (_dir, path) = script_file(script)?;
    let before = cpu_used_us(libc::RUSAGE_THREAD)?;
    for _ in 0..samples {
        let status = std::process::Command::new("/bin/sh").arg(&path).status()?;
        if !status.success() {
            anyhow::bail!("the script failed: {status}");
        }
    }
    Ok((cpu_used_us(libc::RUSAGE_THREAD)? - before) / samples as f64)
}

fn commit_cpu(samples: usize) -> Result<f64> {
    let (_dir, mut file) = append_file()?;
    let before = cpu_used_us(libc::RUSAGE_THREAD)?;
    for _ in 0..samples {
        file.write_all(&RECORD)?;
        file.sync_all()?;
    }
    Ok((cpu_used_us(libc::RUSAGE_THREAD)? - before) / samples as f64)
}

fn zmq_round_trip_cpu(samples: usize) -> Result<f64> {
    use jobcast_transport::zmq;
    let server = zmq::Context::new();
    let router = server.socket(zmq::ROUTER)?;
    router.set_linger(0)?;
    router.bind("tcp://127.0.0.1:*")?;
    let endpoint = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("the ROUTER's endpoint is not text"))?;
    // Echoes until an empty message comes.
    let echo = std::thread::spawn(move || -> Result<()> {
        loop {
            let parts = router.recv_multipart(0)?;
            if parts.get(1).is_none_or(|body| body.is_empty()) {
                return Ok(());
            }
            router.send_multipart(parts, 0)?;
        }
    });
    let client = zmq::Context::new();
    let dealer = client.socket(zmq::DEALER)?;
    dealer.set_linger(0)?;
    dealer.connect(&endpoint)?;
    let request = [7u8; 200];
    let trip = || -> Result<()> {
        dealer.send(&request[..], 0)?;
        dealer.recv_bytes(0)?;
        Ok(())
    };
    for _ in 0..100 {
        trip()?;
    }
    let before = cpu_used_us(libc::RUSAGE_SELF)?;
    for _ in 0..samples {
        trip()?;
    }
    let used = cpu_used_us(libc::RUSAGE_SELF)? - before;
    dealer.send(&[][..], 0)?;
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(used / samples as f64)
}

/// Measures the CPU floor over `samples` of each part. Nothing else of this process
/// may run meanwhile: the round trips are counted over the whole process (libzmq's I/O
/// threads are its own).
pub fn measure_cpu(samples: usize, script: &[u8]) -> Result<CpuFloor> {
    Ok(CpuFloor {
        spawn_us: spawn_cpu(samples, script)?,
        commit_us: commit_cpu(samples)?,
        round_trip_us: zmq_round_trip_cpu(samples)?,
    })
}
