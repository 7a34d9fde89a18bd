//! Commands answered without a broker: shell completions and man pages.

use crate::args::Args;
use crate::failure::Failure;
use anyhow::Result;
use clap::CommandFactory;
use std::path::Path;
use std::process::ExitCode;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    clap_complete::generate(
        shell,
        &mut Args::command(),
        "jobcastctl",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn generate_man(dir: &Path) -> Result<ExitCode> {
    // The release alone: the pages are committed, and must not change with each commit.
    let command = Args::command().version(env!("CARGO_PKG_VERSION"));
    clap_mangen::generate_to(command, dir).map_err(|e| {
        Failure::Usage(format!(
            "cannot write man pages into {}: {e}",
            dir.display()
        ))
    })?;
    Ok(ExitCode::SUCCESS)
}
