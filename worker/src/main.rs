use jobcast_worker::{cgroup, config, process, session};

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
    let check_config = args.check_config;
    let mut config = config::load(args)?;
    let find = if check_config {
        cgroup::Containment::probe
    } else {
        cgroup::Containment::detect
    };
    config.containment = match config.containment_choice {
        config::ContainmentChoice::ProcessTree => cgroup::Containment::ProcessTree {
            why: "chosen (containment = \"process-tree\")".into(),
        },
        choice => match find(&config.id, &config.script_temp_path) {
            cgroup::Containment::ProcessTree { why }
                if choice == config::ContainmentChoice::Cgroup =>
            {
                anyhow::bail!("containment = \"cgroup\" is set, but {why}")
            }
            found => found,
        },
    };
    if check_config {
        println!(
            "config is valid: worker {} for broker {}, pools {:?}, concurrency {}; runs contained by {}",
            config.id,
            config
                .brokers
                .iter()
                .map(|broker| broker.router.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            config.pools,
            config.concurrency,
            config.containment.describe()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    jobcast_daemon::init_logging(&config.log_level, config.log_format)?;
    tracing::info!(containment = %config.containment.describe(), "how runs are contained");
    config::prepare_script_dir(&config)?;
    process::become_subreaper()
        .context("cannot become a child subreaper (needed to kill whole process trees)")?;
    // Before taking work: nothing an earlier process of this worker started may still run
    // when the broker hands out the retry of its run.
    let mark = process::WorkerMark {
        id: &config.id,
        home: &config.script_temp_path,
    };
    if let Some(cgroups) = config.containment.cgroups() {
        match cgroups.end_leftovers() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                cgroups = n,
                "ended what runs of an earlier process of this worker left in their cgroups"
            ),
            Err(stuck) => anyhow::bail!(
                "processes in cgroups {stuck:?} of an earlier run of worker {} would not end; not starting",
                config.id
            ),
        }
    }
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
    // One thread: the worker's work is handing bytes between the broker and its runs'
    // processes, and hand-offs between threads (futex wake-ups, a run's task on one
    // thread and the session on another) were a sixth of its CPU per shell run
    // (docs/BENCHMARKS.md). Nothing it does on this thread blocks for long: a spawn
    // returns once the program is executing, and `/proc` is read in a few milliseconds.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cgroups = config.containment.cgroups().cloned();
    let code = runtime.block_on(session::run(config));
    // Every run has ended (drained, or refused with its processes ended).
    if let Some(cgroups) = cgroups {
        cgroups.remove_dir();
    }
    code
}
