use anyhow::{Context, Result};
use clap::Parser;
use jobcast_broker::config::{self, Overrides};
use jobcast_broker::election::{Election, Elector};
use jobcast_broker::reload::Reloading;
use jobcast_broker::server::{self, now_us};
use jobcast_broker::store::postgres::lease::Candidate;
use jobcast_broker::store::postgres::{PgSettings, PgStore};
use jobcast_broker::store::{self, Store};
use jobcast_core::Core;
use jobcast_protocol::{jobfile, AdminRequest, Reply};
use std::path::PathBuf;

// The loop allocates for every message and store record; mimalloc halves what glibc's
// allocator cost it (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version `--version` prints: the release and the commit it was built from
/// (`build/version.rs`).
const VERSION: &str = env!("JOBCAST_VERSION_LONG");

/// The end of `--help` and of the man page.
const SIGNALS: &str = "\
Signals:
  SIGTERM, SIGINT  flush the store and exit 0 (workers keep their runs going and report
                   them when a broker is back)
  SIGHUP           read the settings file again and take its worker keys, API tokens and
                   webhooks (as `jobcastctl reload`); a file with a mistake changes nothing

Exit codes: 0 stopped by a signal, or --check-config found the settings valid; 1 the
settings are wrong, or the broker could not start (a port in use, a store it cannot open).

Settings: examples/broker.toml lists them all; docs/DEPLOY.md shows a production set-up.";

/// The jobcast broker: stores jobs and runs, and dispatches runs to workers.
#[derive(Debug, Parser)]
#[command(version = VERSION, about, after_long_help = SIGNALS)]
struct Args {
    /// Settings file (TOML). Flags override it.
    #[arg(long, short, env = "JOBCAST_BROKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Check the settings (and the jobs file, if one is named) and exit: 0 if they are
    /// valid, 1 with what is wrong if not. Touches no store and no port.
    #[arg(long)]
    check_config: bool,
    /// Open a store that was refused as damaged (acknowledged writes missing) as far as it
    /// can be read, end every unfinished run (a run the damage may have finished never
    /// runs again), print what changed, and exit. Never done without asking. Keep a copy
    /// of the data directory first.
    #[arg(long)]
    repair: bool,
    /// Write the bound endpoints to this file once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Write this program's man page into this directory and exit.
    #[arg(long, hide = true, value_name = "DIR")]
    generate_man: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<BrokerCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum BrokerCommand {
    /// Copy the store the settings name (data_dir, or [postgres]) into another, empty
    /// one, every record, and check that both hold the same; the broker must be stopped.
    /// Then point the settings at the new store.
    Migrate {
        /// The new store: a PostgreSQL URL (`postgres://user@host/db`), or a directory
        /// for an embedded store.
        #[arg(long, value_name = "URL|DIR")]
        to: String,
        /// The new PostgreSQL store's password file (else PGPASSWORD).
        #[arg(long, value_name = "FILE")]
        to_password_file: Option<PathBuf>,
        /// The CA certificates for the new PostgreSQL store's TLS.
        #[arg(long, value_name = "FILE")]
        to_ca_file: Option<PathBuf>,
    },
    /// Copy a backup (`jobcastctl backup DIR`) into the store the settings name (data_dir,
    /// or [postgres]), which must be empty, and check that both hold the same; the broker
    /// must be stopped. The backup is left as it was.
    Restore {
        /// The backup's directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobcast-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.generate_man {
        use clap::CommandFactory;
        // The release alone: the page is committed, and must not change with each commit.
        let command = Args::command().version(env!("CARGO_PKG_VERSION"));
        clap_mangen::generate_to(command, dir)
            .with_context(|| format!("cannot write the man page into {}", dir.display()))?;
        return Ok(());
    }
    let (args_check_config, args_repair) = (args.check_config, args.repair);
    let overrides = args.overrides;
    // The settings as at start; a reload builds them again the same way.
    let config_path = args.config;
    let read_settings = move || -> Result<config::BrokerConfig> {
        let file = match &config_path {
            Some(path) => config::read_file(path)?,
            None => Default::default(),
        };
        config::resolve(file, overrides.clone())
    };
    let config = read_settings()?;
    jobcast_daemon::init_logging(&config.log_level, config.log_format)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    // Read the jobs file before touching the store, so a typo changes nothing.
    let jobs = match &config.jobs {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read jobs file {}", path.display()))?;
            Some(jobfile::parse(&text).with_context(|| format!("in {}", path.display()))?)
        }
        None => None,
    };
    // Read (not connected to) before anything else, so a bad URL or an unreadable
    // password file is a settings error.
    let postgres = match &config.postgres {
        Some(section) => Some(
            PgSettings::new(
                &section.url,
                section.password_file.as_deref(),
                section.ca_file.as_deref(),
            )
            .context("in [postgres]")?,
        ),
        None => None,
    };
    if args_check_config {
        let store = match &postgres {
            Some(settings) => format!("store {}", settings.describe()),
            None => format!("data_dir {}", config.data_dir.display()),
        };
        println!(
            "config is valid: {store}, requests on {}, events on {}, HTTP {}, {} worker keys{}",
            config.router,
            config.publish,
            config.http_listen.as_deref().unwrap_or("off"),
            config.keys.workers.len(),
            jobs.as_ref()
                .map(|jobs| format!(", {} jobs in the jobs file", jobs.len()))
                .unwrap_or_default()
        );
        return Ok(());
    }
    if let Some(BrokerCommand::Migrate {
        to,
        to_password_file,
        to_ca_file,
    }) = &args.command
    {
        let target = match to.starts_with("postgres://") || to.starts_with("postgresql://") {
            true => Target::Postgres(Box::new(
                PgSettings::new(to, to_password_file.as_deref(), to_ca_file.as_deref())
                    .context("in --to")?,
            )),
            false => Target::Dir(PathBuf::from(to)),
        };
        return match postgres {
            Some(settings) => migrate(
                PgStore::open(&settings)
                    .with_context(|| format!("cannot open the store at {}", settings.describe()))?,
                &target,
                MIGRATED,
            ),
            None => migrate(
                store::open_in(&config.data_dir, config.cache_size).with_context(|| {
                    format!("cannot open the store in {}", config.data_dir.display())
                })?,
                &target,
                MIGRATED,
            ),
        };
    }
    if let Some(BrokerCommand::Restore { from }) = &args.command {
        if !store::integrity::marker_path(from).exists() {
            anyhow::bail!(
                "{} is not a backup: it holds no store (`jobcastctl backup DIR` writes one)",
                from.display()
            );
        }
        let backup = store::open_in(from, config.cache_size)
            .with_context(|| format!("cannot open the backup in {}", from.display()))?;
        let target = match postgres {
            Some(settings) => Target::Postgres(Box::new(settings)),
            None => Target::Dir(config.data_dir.clone()),
        };
        return migrate(
            backup,
            &target,
            "done: the store holds every record of the backup; start the broker",
        );
    }
    let core_config = config.core_config();
    let serving = Serving {
        config,
        jobs,
        read_settings: Box::new(read_settings),
        ready_file: args.ready_file,
    };
    if let Some(settings) = postgres {
        if args_repair {
            anyhow::bail!("--repair is for the embedded store; a PostgreSQL store is repaired with PostgreSQL's own tools");
        }
        // The schema in place (and a database that answers) before anything else.
        drop(
            PgStore::open(&settings)
                .with_context(|| format!("cannot open the store at {}", settings.describe()))?,
        );
        return serving.serve_elected(settings, core_config);
    }
    let config = &serving.config;
    if args_repair {
        return repair(config);
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let (data_dir, cache_size) = (config.data_dir.clone(), config.cache_size);
    // At start, and again after a store failure (a full disk): the state is what the
    // store holds.
    serving.serve(move |now_us: u64| {
        let store = store::open_in(&data_dir, cache_size)
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
        Ok(Core::new(store, core_config.clone(), now_us)?)
    })
}

/// What serving needs besides the store: the settings, the jobs file read at start, how
/// to read the settings again (SIGHUP), and where to say the broker is listening.
struct Serving {
    config: config::BrokerConfig,
    jobs: Option<Vec<jobcast_protocol::JobSpec>>,
    read_settings: jobcast_broker::reload::ReadSettings,
    ready_file: Option<PathBuf>,
}

impl Serving {
    /// Opens the core (`open_core`, again after a store failure), applies the jobs file,
    /// and serves until a signal stops the broker.
    fn serve<S: Store + 'static>(
        self,
        mut open_core: impl FnMut(u64) -> Result<Core<S>> + 'static,
    ) -> Result<()> {
        let Serving {
            config,
            jobs,
            read_settings,
            ready_file,
        } = self;
        let mut core = open_core(now_us())?;
        if let Some(jobs) = jobs {
            apply_jobs_file(&mut core, jobs)?;
        }
        let (the_loop, side) = runtimes()?;
        the_loop.block_on(async {
            server::serve(
                core,
                open_core,
                server::Setup {
                    config: &config,
                    side: side.handle(),
                    reloading: reloading(read_settings)?,
                },
                move |bound| write_ready_file(ready_file.as_deref(), bound),
                shutdown_signal(),
            )
            .await
        })
    }

    /// Several brokers may share the database: this one acts only while it holds the
    /// leader's lease, and stands by otherwise (`server::serve_elected`).
    fn serve_elected(
        self,
        settings: PgSettings,
        core_config: jobcast_core::CoreConfig,
    ) -> Result<()> {
        let Serving {
            config,
            jobs,
            read_settings,
            ready_file,
        } = self;
        let section = config
            .postgres
            .clone()
            .unwrap_or_else(|| config::PostgresSection::with_url(String::new()));
        let (replica_settings, replica_config) = (settings.clone(), core_config.clone());
        let lease = section.lease();
        let mut elector = Elector::new(
            settings,
            lease,
            Candidate {
                holder: Candidate::holder_name(),
                router: String::new(),
                publish: String::new(),
                http: String::new(),
            },
        );
        let try_every = elector.try_every();
        // A standby's read-only view of the database, for the API's reads.
        let replica = move |now_us: u64| -> Result<Core<PgStore>> {
            let store = PgStore::open_read_only(&replica_settings)?;
            Ok(Core::new(store, replica_config.clone(), now_us)?)
        };
        let elect = move |bound: &server::Bound, now_us: u64| -> Result<Election<Core<PgStore>>> {
            elector.set_addresses(advertised(&section, bound));
            elector.try_once(|store| -> Result<Core<PgStore>> {
                let mut core = Core::new(store, core_config.clone(), now_us)?;
                if let Some(jobs) = &jobs {
                    apply_jobs_file(&mut core, jobs.clone())?;
                }
                // Reading the state may take long on a large database; once acting, a
                // read that hangs fails the store after a lease (2 s at least): the loop
                // must get back to seeing its lease end.
                core.store_mut()
                    .limit_answers(lease.max(std::time::Duration::from_secs(2)));
                Ok(core)
            })
        };
        let (the_loop, side) = runtimes()?;
        the_loop.block_on(async {
            server::serve_elected(
                elect,
                replica,
                try_every,
                server::Setup {
                    config: &config,
                    side: side.handle(),
                    reloading: reloading(read_settings)?,
                },
                move |bound| write_ready_file(ready_file.as_deref(), bound),
                shutdown_signal(),
            )
            .await
        })
    }
}

/// The addresses written with the lease: as configured, else as bound (an address bound
/// on every interface named by this host's name).
fn advertised(
    section: &config::PostgresSection,
    bound: &server::Bound,
) -> (String, String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let named = |address: &str| address.replace("0.0.0.0", &host).replace("[::]", &host);
    (
        section
            .advertise_router
            .clone()
            .unwrap_or_else(|| named(&bound.router)),
        section
            .advertise_publish
            .clone()
            .unwrap_or_else(|| named(&bound.publish)),
        section
            .advertise_http
            .clone()
            .or_else(|| bound.http.as_deref().map(named))
            .unwrap_or_default(),
    )
}

/// The loop's runtime and the HTTP side's. The loop runs on the main thread, which waits
/// on its sockets itself: a request wakes the loop directly, not a runtime worker that
/// then wakes it. The dashboard, API and live feed, and the checks of connecting keys, run
/// on two threads of their own (`jobcast-http`), never in the loop's way.
fn runtimes() -> Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let the_loop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the loop's async runtime")?;
    let side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jobcast-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP side's async runtime")?;
    Ok((the_loop, side))
}

fn reloading(read: jobcast_broker::reload::ReadSettings) -> Result<Reloading> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(Reloading {
        read,
        hangups: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
    })
}

/// Applies the jobs file given at start (at each takeover, for several brokers).
fn apply_jobs_file<S: Store>(
    core: &mut Core<S>,
    jobs: Vec<jobcast_protocol::JobSpec>,
) -> Result<()> {
    let mut out = Default::default();
    core.handle_api(
        "the jobs file given at start",
        0,
        AdminRequest::ApplyJobs { jobs },
        &jobcast_core::Scope::all(),
        now_us(),
        &mut out,
    )?;
    if let Some(reply) = out.replies.pop() {
        match reply.reply {
            Reply::Applied {
                created, updated, ..
            } => {
                tracing::info!(?created, ?updated, "jobs file applied")
            }
            Reply::Error { message, .. } => anyhow::bail!("jobs file refused: {message}"),
            _ => {}
        }
    }
    Ok(())
}

/// `--ready-file`: where the broker listens, written whole (renamed into place).
fn write_ready_file(path: Option<&std::path::Path>, bound: &server::Bound) -> Result<()> {
    if let Some(path) = path {
        let mut text = format!(
            "router = \"{}\"\npublish = \"{}\"\n",
            bound.router, bound.publish
        );
        if let Some(http) = &bound.http {
            text.push_str(&format!("http = \"{http}\"\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// What `migrate` says when the copy holds every record.
const MIGRATED: &str = "done: the new store holds every record; point the broker's settings at it";

/// Where `migrate` copies to.
enum Target {
    Postgres(Box<PgSettings>),
    Dir(PathBuf),
}

/// `migrate`: copies `from` into the target, then counts both (the target opened again)
/// and says whether they agree.
fn migrate(from: impl Store, target: &Target, done: &str) -> Result<()> {
    let before =
        jobcast_broker::migrate::tally(&from).context("cannot count the store's records")?;
    println!("from: {before}");
    let after = match target {
        Target::Postgres(settings) => {
            let open = || {
                PgStore::open(settings)
                    .with_context(|| format!("cannot open the store at {}", settings.describe()))
            };
            copy_and_count(&from, open()?, open)?
        }
        Target::Dir(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let open = || {
                store::open_in(dir, store::DEFAULT_CACHE_BYTES)
                    .with_context(|| format!("cannot open the store in {}", dir.display()))
            };
            copy_and_count(&from, open()?, open)?
        }
    };
    println!("to:   {after}");
    if before != after {
        anyhow::bail!("the copy does not hold what the store held (see above): do not use it");
    }
    println!("{done}");
    Ok(())
}

/// Copies into `to`, closes it, opens it again with `reopen`, and counts what it holds.
fn copy_and_count<S: Store>(
    from: &impl Store,
    mut to: S,
    reopen: impl Fn() -> Result<S>,
) -> Result<jobcast_broker::migrate::Tally> {
    jobcast_broker::migrate::copy(from, &mut to)?;
    to.close_cleanly().context("cannot close the new store")?;
    drop(to);
    Ok(jobcast_broker::migrate::tally(&reopen()?)?)
}

/// `--repair`: what was wrong with the store and what was changed, on standard output.
fn repair(config: &config::BrokerConfig) -> Result<()> {
    let report = store::repair_in(&config.data_dir, config.cache_size).with_context(|| {
        format!(
            "cannot open the store in {} even to repair it",
            config.data_dir.display()
        )
    })?;
    let Some(problem) = &report.problem else {
        println!(
            "{}: no damage found (the store agrees with its marker); nothing changed",
            report.store.display()
        );
        return Ok(());
    };
    println!("{}: {problem}", report.store.display());
    println!("ended {} unfinished runs:", report.runs_ended.len());
    for (run, job, was) in &report.runs_ended {
        let now = if *was == jobcast_protocol::RunState::Queued {
            "cancelled"
        } else {
            "lost"
        };
        println!("  {run}  {job}  {was} -> {now}");
    }
    println!(
        "moved the last tick of {} jobs to when the store was last known whole:",
        report.jobs_advanced.len()
    );
    for (job, from, to) in &report.jobs_advanced {
        println!(
            "  {job}  {} -> {}",
            jobcast_core::format_ms(*from),
            jobcast_core::format_ms(*to)
        );
    }
    println!("the store is marked whole again: start the broker");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
