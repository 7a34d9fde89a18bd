//! `jobcastctl enqueue JOB`: a run of the job now, once even if asked again (its
//! idempotency key, random unless given, makes the request safe to repeat).

use crate::ctl::{expect_reply, Ctl};
use crate::failure::Failure;
use anyhow::Result;
use jobcast_protocol::envelope::random_nonce;
use jobcast_protocol::{AdminRequest, Reply};
use std::collections::BTreeMap;
use std::process::ExitCode;

pub(crate) async fn enqueue(
    ctl: &Ctl,
    job: String,
    key: Option<String>,
    params: Vec<(String, String)>,
    priority: Option<i32>,
) -> Result<ExitCode> {
    let key = key.unwrap_or_else(|| format!("{:016x}", random_nonce()));
    let mut values = BTreeMap::new();
    for (name, value) in params {
        if values.insert(name.clone(), value).is_some() {
            return Err(Failure::Usage(format!("parameter {name:?} is given twice")).into());
        }
    }
    let request = AdminRequest::Enqueue {
        job,
        key: Some(key),
        params: values,
        priority,
    };
    let reply = ctl.call_again_if_unanswered(request).await?;
    let run = expect_reply!(reply, Reply::Enqueued { run } => run);
    ctl.print(&run, |run| {
        println!("queued run {} of job {}", run.id, run.job)
    })?;
    Ok(ExitCode::SUCCESS)
}
