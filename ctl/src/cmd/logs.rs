//! `jobcastctl logs`: a run's output, or following it as it grows; and `jobcastctl wait`.
//! Following (and waiting) ends with the run, and the exit code says how it ended.

use crate::ctl::{expect_reply, Ctl};
use crate::failure::run_exit_code;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply, RunRecord};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// How long a follower or a waiter pauses before asking again, when the broker answered
/// at once with nothing new (one that does not hold reads).
const POLL: Duration = Duration::from_millis(200);
/// How long the broker is asked to hold a read while nothing changes.
const HOLD: Duration = Duration::from_secs(20);

/// One read of a run's log.
struct Read {
    record: RunRecord,
    data: Vec<u8>,
    next_offset: u64,
    /// The broker held the read as asked: ask again at once.
    waited: bool,
}

/// One read of a run's log from `offset` (`None`: the whole stored log, capped). With
/// `hold`, the broker answers once the run has output past `offset` or ends (or the hold
/// runs out).
async fn read(ctl: &Ctl, run: &str, offset: Option<u64>, hold: bool) -> Result<Read> {
    let request = AdminRequest::GetLog {
        run: run.to_string(),
        offset,
        wait_ms: hold.then_some(HOLD.as_millis() as u64),
    };
    let reply = match hold {
        true => held(ctl, request).await?,
        false => ctl.call(request).await?,
    };
    Ok(expect_reply!(reply, Reply::Log {
        run,
        data,
        next_offset,
        waited,
    } => Read { record: *run, data, next_offset, waited }))
}

/// A read the broker holds: asked again when the connection drops while it waits (a
/// broker restarting), as a poll would have been, until a call fails otherwise or the
/// broker stays away longer than `--timeout`.
async fn held(ctl: &Ctl, request: AdminRequest) -> Result<Reply> {
    let mut away_since: Option<tokio::time::Instant> = None;
    loop {
        match ctl.call_within(request.clone(), HOLD + ctl.timeout()).await {
            Err(e) if is_disconnected(&e) => {
                let since = *away_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= ctl.timeout() {
                    return Err(e);
                }
                tokio::time::sleep(POLL).await;
            }
            other => return other,
        }
    }
}

fn is_disconnected(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<jobcast_client::ClientError>(),
        Some(jobcast_client::ClientError::Disconnected)
    )
}

/// Prints a piece of the log: the bytes as they are, or a JSON line.
fn print(ctl: &Ctl, out: &mut impl Write, run: &str, offset: u64, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if ctl.json() {
        let line = serde_json::json!({
            "run": run,
            "offset": offset.to_string(),
            "text": String::from_utf8_lossy(data),
        });
        writeln!(out, "{line}")?;
    } else {
        out.write_all(data)?;
    }
    out.flush()?;
    Ok(())
}

/// The run's end in words: its outcome, or its state when it has none (cancelled, …).
fn end_of(record: &RunRecord) -> String {
    record
        .outcome
        .as_ref()
        .map(|o| o.describe())
        .unwrap_or_else(|| record.state.to_string())
}

/// How the run ended, to stderr (or as the last JSON line), and the exit code for it.
fn ended(ctl: &Ctl, out: &mut impl Write, record: &RunRecord) -> Result<ExitCode> {
    let outcome = end_of(record);
    if ctl.json() {
        let line = serde_json::json!({
            "run": record.id,
            "state": record.state,
            "outcome": outcome,
        });
        writeln!(out, "{line}")?;
        out.flush()?;
    } else if record.state != jobcast_protocol::RunState::Succeeded {
        eprintln!("jobcastctl: run {} ended: {outcome}", record.id);
    }
    Ok(run_exit_code(record.state))
}

pub(crate) async fn logs(ctl: &Ctl, run: String, follow: bool) -> Result<ExitCode> {
    let first = read(ctl, &run, None, false).await?;
    let mut out = std::io::stdout().lock();
    print(ctl, &mut out, &first.record.id, 0, &first.data)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let id = first.record.id.clone();
    let mut offset = first.next_offset;
    let mut ended_before = first.record.state.is_terminal();
    loop {
        let read = read(ctl, &id, Some(offset), !ended_before).await?;
        print(ctl, &mut out, &id, offset, &read.data)?;
        offset = read.next_offset;
        // One more read after the run ends picks up its last output.
        if ended_before && read.data.is_empty() {
            return ended(ctl, &mut out, &read.record);
        }
        ended_before = read.record.state.is_terminal();
        if read.data.is_empty() && !read.waited {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `jobcastctl wait RUN`: until the run ends; exits with how it ended.
pub(crate) async fn wait(ctl: &Ctl, run: String) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    loop {
        // From the end of any log: the record, without the output, once the run ends.
        let read = read(ctl, &run, Some(u64::MAX), true).await?;
        let record = read.record;
        if record.state.is_terminal() {
            if !ctl.json() {
                writeln!(
                    out,
                    "run {} {}: {}",
                    record.id,
                    record.state,
                    end_of(&record)
                )?;
            }
            return ended(ctl, &mut out, &record);
        }
        if !read.waited {
            tokio::time::sleep(POLL).await;
        }
    }
}
