//! Round trips through the transport alone: a DEALER and a ROUTER that echoes, on
//! loopback, 200-byte messages, one at a time. Once with blocking libzmq calls on plain
//! threads (the floor), once through `jobcast_transport::AsyncSocket` on tokio (what the
//! broker, worker and jobcastctl use).

use crate::latency::summary_row;
use anyhow::{Context, Result};
use jobcast_transport::{zmq, AsyncSocket, Limits, Received};
use std::time::Instant;

const MESSAGE: [u8; 200] = [0x5a; 200];

fn pair() -> Result<(zmq::Socket, zmq::Socket)> {
    let limits = Limits::default();
    let router = jobcast_transport::socket(zmq::ROUTER, &limits)?;
    router.bind("tcp://127.0.0.1:*")?;
    let endpoint = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint"))?;
    let dealer = jobcast_transport::socket(zmq::DEALER, &limits)?;
    dealer.connect(&endpoint)?;
    Ok((router, dealer))
}

fn blocking(round_trips: usize) -> Result<Vec<u64>> {
    let (router, dealer) = pair()?;
    let echo = std::thread::spawn(move || -> Result<()> {
        for _ in 0..round_trips {
            let parts = router.recv_multipart(0)?;
            router.send_multipart(parts, 0)?;
        }
        Ok(())
    });
    let mut samples = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        dealer.send(&MESSAGE[..], 0)?;
        dealer.recv_bytes(0)?;
        samples.push(started.elapsed().as_micros() as u64);
    }
    echo.join().map_err(|_| anyhow::anyhow!("echo thread"))??;
    Ok(samples)
}

async fn recv(socket: &AsyncSocket) -> Result<Vec<zmq::Message>> {
    match socket.recv(2).await? {
        Received::Parts(parts) => Ok(parts),
        Received::TooManyParts(n) => anyhow::bail!("{n} parts"),
    }
}

async fn through_tokio(round_trips: usize) -> Result<Vec<u64>> {
    let (router, dealer) = pair()?;
    let router = AsyncSocket::new(router)?;
    let dealer = AsyncSocket::new(dealer)?;
    let echo = tokio::spawn(async move {
        for _ in 0..round_trips {
            let parts = recv(&router).await?;
            router.wait(zmq::POLLOUT).await?;
            router.try_send(parts)?;
        }
        anyhow::Ok(())
    });
    let mut samples = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        dealer.wait(zmq::POLLOUT).await?;
        dealer.try_send([&MESSAGE[..]])?;
        recv(&dealer).await?;
        samples.push(started.elapsed().as_micros() as u64);
    }
    echo.await.context("echo task")??;
    Ok(samples)
}

pub async fn transport(round_trips: usize) -> Result<()> {
    println!("transport round trip: DEALER → ROUTER → DEALER, 200-byte messages, loopback, one at a time");
    println!();
    println!("| path | round trips | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let floor = tokio::task::spawn_blocking(move || blocking(round_trips)).await??;
    let ours = through_tokio(round_trips).await?;
    summary_row("libzmq, blocking calls on threads", &floor)?;
    summary_row("jobcast-transport on tokio", &ours)
}
