//! Worker settings: a TOML file, environment variables and flags (flags win).

use anyhow::{bail, Context, Result};
use clap::Parser;
use jobcast_daemon::LogFormat;
use jobcast_protocol::{logcap, names, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The version `--version` prints: the release and the commit it was built from
/// (`build/version.rs`).
const VERSION: &str = env!("JOBCAST_VERSION_LONG");

/// The end of `--help` and of the man page.
const SIGNALS: &str = "\
Signals:
  SIGTERM   drain: take no new runs, hand back those not started, let running ones finish
            (up to drain_timeout, then kill them), report everything, exit 0
  SIGINT, or a second SIGTERM
            kill running runs now, report them, exit

Exit codes: 0 drained; 1 a setting is wrong or the worker failed; 3 the broker refuses this
worker (an id it has no key for, a wrong secret, a pool its key may not serve): the log
names the setting to add.";

/// The jobcast worker: claims runs from the broker and executes them.
///
/// Every setting can come from the config file, an environment variable or a flag;
/// flags win over the environment, which wins over the file.
#[derive(Debug, Parser, Default)]
#[command(version = VERSION, about, after_long_help = SIGNALS)]
pub struct Args {
    /// Settings file (TOML) with the keys below in snake_case.
    #[arg(long, short, env = "JOBCAST_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The broker's request endpoint [default: tcp://127.0.0.1:5555]. Several brokers
    /// sharing one database: all of them, comma-separated (the worker follows the one
    /// that leads).
    #[arg(long, env = "JOBCAST_BROKER")]
    pub broker: Option<String>,
    /// The broker's event endpoint [default: tcp://127.0.0.1:5556]. Several brokers:
    /// theirs, comma-separated, in the same order as `--broker`.
    #[arg(long, env = "JOBCAST_EVENTS")]
    pub events: Option<String>,
    /// This worker's id, as listed in the broker's keys [default: the host name].
    #[arg(long, env = "JOBCAST_WORKER_ID")]
    pub id: Option<String>,
    /// This worker's secret (prefer --secret-file or the environment).
    #[arg(long, env = "JOBCAST_WORKER_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding this worker's secret.
    #[arg(long, env = "JOBCAST_WORKER_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Runs executed at once [default: 4].
    #[arg(long, env = "JOBCAST_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// The most runs held ready beyond the busy slots, started the moment a slot frees (no
    /// round trip to the broker between runs): the worker asks for as many as its
    /// concurrency, and more while short runs use them up before they are refilled; 0
    /// turns it off [default: 16 × the concurrency, at most 1024].
    #[arg(long, env = "JOBCAST_PREFETCH")]
    pub prefetch: Option<u32>,
    /// Pools to take work from, comma-separated [default: default].
    #[arg(long, env = "JOBCAST_POOLS", value_delimiter = ',')]
    pub pools: Option<Vec<String>>,
    /// Log level: error, warn, info, debug or trace [default: info].
    #[arg(long, env = "JOBCAST_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as `text` (coloured on a terminal only) or `json` [default: text].
    #[arg(long, env = "JOBCAST_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Most bytes of output kept per run: the first 20% and the last 80% [default: 819200].
    #[arg(long, env = "JOBCAST_MAX_LOG_BYTES")]
    pub max_log_bytes: Option<u64>,
    /// Directory for script files [default: the system temp dir /jobcast-<id>].
    #[arg(long, env = "JOBCAST_SCRIPT_TEMP_PATH")]
    pub script_temp_path: Option<PathBuf>,
    /// Rebuild the connection after hearing nothing from the broker this long [default: 10s].
    #[arg(long, env = "JOBCAST_RECONNECT_AFTER_INACTIVITY", value_parser = humantime::parse_duration)]
    pub reconnect_after_inactivity: Option<Duration>,
    /// On SIGTERM, how long running runs may take before they are killed [default: 5m].
    #[arg(long, env = "JOBCAST_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when killing a run [default: 5s].
    #[arg(long, env = "JOBCAST_KILL_GRACE", value_parser = humantime::parse_duration)]
    pub kill_grace: Option<Duration>,
    /// How long to wait for the broker when connecting [default: 5s].
    #[arg(long, env = "JOBCAST_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// How runs' processes are kept together: `auto` (a cgroup per run where the worker
    /// may create cgroups, else the process tree), `cgroup` (required: refuse to start
    /// without), `process-tree` [default: auto].
    #[arg(long, env = "JOBCAST_CONTAINMENT", value_enum)]
    pub containment: Option<ContainmentChoice>,
    /// A variable jobs may ask this worker to fill (`worker_env`): NAME (from this
    /// process's variable of that name), NAME=env:OTHER or NAME=file:/path. Repeatable.
    #[arg(long = "worker-env", value_parser = crate::worker_env::parse_flag)]
    pub worker_env: Vec<(String, crate::worker_env::Source)>,
    /// Write this program's man page into this directory and exit.
    #[arg(long, hide = true, value_name = "DIR")]
    pub generate_man: Option<PathBuf>,
    /// Check the settings, say how runs' processes will be contained (a cgroup per run,
    /// or the process tree), and exit: 0 if the settings are valid, 1 if not.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub broker: Option<String>,
    pub events: Option<String>,
    pub id: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub concurrency: Option<u32>,
    pub prefetch: Option<u32>,
    pub pools: Option<Vec<String>>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub max_log_bytes: Option<u64>,
    pub script_temp_path: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub reconnect_after_inactivity: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub kill_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    pub containment: Option<ContainmentChoice>,
    /// Variables jobs may ask this worker to fill: `NAME = { env = "VAR" }` or
    /// `NAME = { file = "/path" }`.
    #[serde(default)]
    pub worker_env: BTreeMap<String, crate::worker_env::Source>,
}

/// Where one broker is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoints {
    /// Its request (ROUTER) endpoint.
    pub router: String,
    /// Its event (PUB) endpoint.
    pub events: String,
}

impl std::fmt::Display for BrokerEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.router)
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Every broker this worker may be served by, the first asked first (several share
    /// one database; one leads).
    pub brokers: Vec<BrokerEndpoints>,
    pub id: String,
    pub secret: Secret,
    pub concurrency: u32,
    pub prefetch: u32,
    pub pools: Vec<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub max_log_bytes: u64,
    pub script_temp_path: PathBuf,
    pub reconnect_after_inactivity: Duration,
    pub drain_timeout: Duration,
    pub kill_grace: Duration,
    pub connect_timeout: Duration,
    pub worker_env: BTreeMap<String, crate::worker_env::Source>,
    /// How runs' processes are kept together: found at start (`cgroup.rs`).
    pub containment: crate::cgroup::Containment,
    pub containment_choice: ContainmentChoice,
}

/// The `containment` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ContainmentChoice {
    #[default]
    Auto,
    Cgroup,
    ProcessTree,
}

/// This machine's host name, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".to_string())
}

pub fn load(args: Args) -> Result<WorkerConfig> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the worker config {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid worker config {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    resolve(args, file)
}

pub fn resolve(args: Args, file: FileConfig) -> Result<WorkerConfig> {
    let id = args.id.or(file.id).unwrap_or_else(hostname);
    names::validate("worker id", &id)?;
    let secret = match (args.secret, args.secret_file) {
        (Some(secret), _) => secret,
        (None, Some(path)) => read_secret(&path)?,
        (None, None) => match (file.secret, file.secret_file) {
            (Some(secret), _) => secret,
            (None, Some(path)) => read_secret(&path)?,
            (None, None) => bail!(
                "no secret for worker {id:?}: set `secret` or `secret_file` in the config, \
                 JOBCAST_WORKER_SECRET, or --secret-file (the broker's [keys.workers] must list the same)"
            ),
        },
    };
    if secret.is_empty() {
        bail!("the secret for worker {id:?} is empty");
    }
    let pools = args
        .pools
        .or(file.pools)
        .unwrap_or_else(|| vec!["default".to_string()]);
    if pools.is_empty() {
        bail!("the worker needs at least one pool");
    }
    for pool in &pools {
        names::validate("pool", pool)?;
    }
    let concurrency = args.concurrency.or(file.concurrency).unwrap_or(4);
    if !(1..=1024).contains(&concurrency) {
        bail!("concurrency must be between 1 and 1024, not {concurrency}");
    }
    let prefetch = args
        .prefetch
        .or(file.prefetch)
        .unwrap_or((16 * concurrency).min(1024));
    if prefetch > 1024 {
        bail!("prefetch must be between 0 and 1024, not {prefetch}");
    }
    let max_log_bytes = args
        .max_log_bytes
        .or(file.max_log_bytes)
        .unwrap_or(800 << 10);
    if max_log_bytes < logcap::MIN_CAP as u64 {
        bail!("max_log_bytes must be at least {}", logcap::MIN_CAP);
    }
    let reconnect_after_inactivity = args
        .reconnect_after_inactivity
        .or(file.reconnect_after_inactivity)
        .unwrap_or(Duration::from_secs(10));
    if reconnect_after_inactivity < Duration::from_secs(2) {
        bail!("reconnect_after_inactivity must be at least 2s (the broker's heartbeat is 1s)");
    }
    let script_temp_path = args
        .script_temp_path
        .or(file.script_temp_path)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("jobcast-{id}")));
    let brokers = broker_list(
        &args
            .broker
            .or(file.broker)
            .unwrap_or_else(|| "tcp://127.0.0.1:5555".into()),
        &args
            .events
            .or(file.events)
            .unwrap_or_else(|| "tcp://127.0.0.1:5556".into()),
    )?;
    Ok(WorkerConfig {
        brokers,
        secret: Secret::new(secret),
        concurrency,
        prefetch,
        pools,
        log_level: {
            // Checked with the rest, so that `--check-config` refuses what a start would.
            let level = args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into());
            jobcast_daemon::check_log_level(&level)?;
            level
        },
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        max_log_bytes,
        script_temp_path,
        reconnect_after_inactivity,
        drain_timeout: args
            .drain_timeout
            .or(file.drain_timeout)
            .unwrap_or(Duration::from_secs(300)),
        kill_grace: args
            .kill_grace
            .or(file.kill_grace)
            .unwrap_or(Duration::from_secs(5)),
        connect_timeout: args
            .connect_timeout
            .or(file.connect_timeout)
            .unwrap_or(Duration::from_secs(5)),
        // Flags add to (and override) the file's list.
        worker_env: file.worker_env.into_iter().chain(args.worker_env).collect(),
        containment: crate::cgroup::Containment::ProcessTree {
            why: "cgroups not looked for yet".into(),
        },
        containment_choice: args.containment.or(file.containment).unwrap_or_default(),
        id,
    })
}

fn read_secret(path: &PathBuf) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// Creates the script directory and proves it is writable, so that a bad path fails at
/// start rather than on the first run.
pub fn prepare_script_dir(config: &WorkerConfig) -> Result<()> {
    let dir = &config.script_temp_path;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create script_temp_path {}: choose a writable directory",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("script_temp_path {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The brokers named by `broker` and `events`: comma-separated lists, paired in order.
pub fn broker_list(routers: &str, events: &str) -> Result<Vec<BrokerEndpoints>> {
    let (routers, events) = (
        jobcast_client::endpoint_list(routers),
        jobcast_client::endpoint_list(events),
    );
    if routers.is_empty() {
        bail!("broker names no endpoint");
    }
    if routers.len() != events.len() {
        bail!(
            "broker names {} endpoints and events {}: give each broker's event endpoint, in the same order",
            routers.len(),
            events.len()
        );
    }
    Ok(routers
        .into_iter()
        .zip(events)
        .map(|(router, events)| BrokerEndpoints { router, events })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            id: Some("w1".into()),
            secret: Some("s3cret-s3cret-s3cret".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let config = resolve(args(), FileConfig::default()).unwrap();
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.prefetch, 64, "16 × the concurrency");
        assert_eq!(config.max_log_bytes, 800 * 1024);
        assert_eq!(config.pools, ["default"]);
        assert_eq!(config.reconnect_after_inactivity, Duration::from_secs(10));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig =
            toml::from_str("concurrency = 2\npools = [\"a\", \"b\"]\ndrain_timeout = \"1m\"")
                .unwrap();
        let config = resolve(
            Args {
                concurrency: Some(8),
                ..args()
            },
            file,
        )
        .unwrap();
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.prefetch, 128, "16 × the concurrency the flag gives");
        assert_eq!(config.pools, ["a", "b"]);
        assert_eq!(config.drain_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let err = |a: Args| format!("{:#}", resolve(a, FileConfig::default()).unwrap_err());
        assert!(err(Args {
            secret: None,
            ..args()
        })
        .contains("no secret"));
        assert!(err(Args {
            concurrency: Some(0),
            ..args()
        })
        .contains("concurrency"));
        assert!(err(Args {
            id: Some("w/1".into()),
            ..args()
        })
        .contains("invalid worker id"));
        assert!(err(Args {
            max_log_bytes: Some(10),
            ..args()
        })
        .contains("max_log_bytes"));
        assert!(toml::from_str::<FileConfig>("concurency = 2").is_err());
    }

    #[test]
    fn the_shipped_example_configs_are_valid() {
        for text in [
            include_str!("../../examples/worker-1.toml"),
            include_str!("../../examples/worker-2.toml"),
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let config = resolve(args(), file).unwrap();
            assert_eq!(config.log_format, LogFormat::Text);
        }
    }
    #[test]
    fn several_brokers_are_paired_with_their_event_endpoints_in_order() {
        let brokers =
            broker_list("tcp://a:5555, tcp://b:5555", "tcp://a:5556,tcp://b:5556").unwrap();
        assert_eq!(
            brokers,
            [
                BrokerEndpoints {
                    router: "tcp://a:5555".into(),
                    events: "tcp://a:5556".into()
                },
                BrokerEndpoints {
                    router: "tcp://b:5555".into(),
                    events: "tcp://b:5556".into()
                },
            ]
        );
        let error = broker_list("tcp://a:5555,tcp://b:5555", "tcp://a:5556").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("broker names 2 endpoints and events 1"),
            "{error}"
        );
        assert!(broker_list(" , ", "tcp://a:5556").is_err());
    }
}
