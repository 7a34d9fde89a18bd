use jobcast_worker::{config, process, session};

use anyhow::{Context, Result};
use clap::Parser;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobcast-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<std::process::ExitCode> {
    let args = config::Args::parse();
    if let Some(dir) = &args.generate_man {
        use clap::CommandFactory;
        // The release alone: the page is committed, and must not change with each commit.
        let command = config::Args::command().version(env!("CARGO_PKG_VERSION"));
        clap_mangen::generate_to(command, dir)
            .with_context(|| format!("cannot write the man page into {}", dir.display()))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let config = config::load(args)?;
    jobcast_daemon::init_logging(&config.log_level, config.log_format)?;
    config::prepare_script_dir(&config)?;
    process::become_subreaper()
        .context("cannot become a child subreaper (needed to kill whole process trees)")?;
    // Before taking work: nothing an earlier process of this worker started may still run
    // when the broker hands out the retry of its run.
    let mark = process::WorkerMark {
        id: &config.id,
        home: &config.script_temp_path,
    };
    match process::end_leftovers(&mark, config.kill_grace) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            processes = n,
            "ended processes left by an earlier run of this worker"
        ),
        Err(survivors) => anyhow::bail!(
            "processes {survivors:?} of an earlier run of worker {} survive SIGKILL; not starting",
            config.id
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(session::run(config))
}
