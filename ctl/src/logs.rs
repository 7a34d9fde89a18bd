//! `jobcastctl logs`: a run's output, or following it as it grows.

use crate::Ctl;
use anyhow::{bail, Result};
use jobcast_protocol::{AdminRequest, Reply};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn logs(ctl: &Ctl, run: String, follow: bool) -> Result<ExitCode> {
    let Reply::Log {
        run: record,
        data,
        next_offset,
    } = ctl.call(AdminRequest::GetLog { run, offset: None }).await?
    else {
        bail!("unexpected reply");
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&data)?;
    out.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let id = record.id.clone();
    let mut offset = next_offset;
    let mut ended = record.state.is_terminal();
    loop {
        let Reply::Log {
            run: record,
            data,
            next_offset,
        } = ctl
            .call(AdminRequest::GetLog {
                run: id.clone(),
                offset: Some(offset),
            })
            .await?
        else {
            bail!("unexpected reply");
        };
        out.write_all(&data)?;
        out.flush()?;
        offset = next_offset;
        // One more read after the run ends picks up its last output.
        if ended && data.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        ended = record.state.is_terminal();
        if data.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
