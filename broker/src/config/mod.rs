//! Broker settings: a TOML file, overridden by command-line flags.

mod file;
mod keys;

pub use file::*;
pub use keys::*;

use anyhow::{bail, Context, Result};
use jobcast_daemon::LogFormat;
use jobcast_protocol::{names, Secret};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// Neither the file, a flag nor systemd named the data directory: the default, in
    /// the working directory, was taken (warned about at start).
    pub data_dir_defaulted: bool,
    /// The PostgreSQL store, when the records are kept there rather than in `data_dir`.
    pub postgres: Option<PostgresSection>,
    pub router: String,
    pub publish: String,
    pub jobs: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub heartbeat_interval: Duration,
    pub worker_timeout: Duration,
    pub unstarted_grant_hold: Duration,
    pub max_clock_skew: Duration,
    pub peer_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_log_bytes: u64,
    pub min_free_bytes: u64,
    pub cache_size: u64,
    pub keys: Keys,
    pub webhooks: Vec<crate::notify::Webhook>,
    /// The HTTP listener; `None` when turned off with `--http off`.
    pub http_listen: Option<String>,
    pub api_tokens: Vec<ApiToken>,
    /// Browser origins allowed on the live feed; empty means the listen address.
    pub public_origins: Vec<String>,
    pub retention: jobcast_core::Retention,
    /// The most runs assigned or running at once, by pool (where set).
    pub pool_limits: std::collections::BTreeMap<String, u32>,
}

impl BrokerConfig {
    /// What the core is told of these settings.
    pub fn core_config(&self) -> jobcast_core::CoreConfig {
        jobcast_core::CoreConfig {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            worker_timeout_ms: self.worker_timeout.as_millis() as u64,
            // A live worker has registered again by its timeout.
            restart_grace_ms: self.worker_timeout.as_millis() as u64,
            unstarted_grant_hold_ms: self.unstarted_grant_hold.as_millis() as u64,
            retention: self.retention,
            worker_pools: self.keys.worker_pools.clone(),
            max_log_bytes: self.max_log_bytes,
            pool_limits: self.pool_limits.clone(),
            seed: None,
        }
    }

    /// Settings that are valid but probably not what the operator wants, to log once
    /// logging is set up.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.keys.workers.is_empty() {
            warnings.push(
                "no worker keys configured: no worker can connect until [keys.workers] lists some",
            );
        }
        if self.data_dir_defaulted && self.postgres.is_none() {
            warnings.push(
                "no data_dir set: the store is in ./jobcast-data, under the directory the broker was started from; set data_dir (or --data-dir) to keep it in one place",
            );
        }
        warnings
    }
}

fn pool_limits(
    pools: std::collections::BTreeMap<String, PoolSection>,
) -> Result<std::collections::BTreeMap<String, u32>> {
    let mut limits = std::collections::BTreeMap::new();
    for (pool, section) in pools {
        jobcast_protocol::names::validate("pool", &pool)
            .map_err(|e| anyhow::anyhow!("[pools.{pool}]: {e}"))?;
        match section.max_concurrent {
            Some(0) => anyhow::bail!("[pools.{pool}] max_concurrent must be at least 1"),
            Some(limit) => {
                limits.insert(pool, limit);
            }
            None => {}
        }
    }
    Ok(limits)
}

/// The command line's settings, each overriding the file's: the one place a flag meets
/// the file (`resolve`). The broker's `Args` takes them whole (`#[command(flatten)]`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Directory of the embedded store.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the records in PostgreSQL at this URL instead of the embedded store (the
    /// password from `[postgres] password_file` or PGPASSWORD, not the URL).
    #[arg(long, env = "JOBCAST_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// ROUTER endpoint for worker and jobcastctl requests [default: tcp://127.0.0.1:5555].
    #[arg(long)]
    pub router: Option<String>,
    /// PUB endpoint for queue events [default: tcp://127.0.0.1:5556].
    #[arg(long)]
    pub publish: Option<String>,
    /// A jobs.toml to apply at start.
    #[arg(long)]
    pub jobs: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log lines as `text` (coloured on a terminal only) or `json` [default: text].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// How often the broker and workers send heartbeats [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// A worker silent this long is offline and its runs lost [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub worker_timeout: Option<Duration>,
    /// The admin secret (prefer the config file or the environment).
    #[arg(long, env = "JOBCAST_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<String>,
    /// Address of the dashboard and JSON API, or "off" [default: 127.0.0.1:5000].
    #[arg(long)]
    pub http: Option<String>,
}

/// Where the store lives unless configured: the directory systemd made for the service
/// (`StateDirectory=`, passed as `$STATE_DIRECTORY`, the first if several), else
/// `jobcast-data` in the working directory.
pub fn default_data_dir(state_directory: Option<&str>) -> PathBuf {
    state_directory
        .and_then(|dirs| dirs.split(':').find(|dir| !dir.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("jobcast-data"))
}

pub fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the broker config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid broker config {}", path.display()))
}

fn secret(what: &str, value: String) -> Result<Secret> {
    if value.len() < MIN_SECRET_LEN {
        bail!("the {what} secret is shorter than {MIN_SECRET_LEN} characters: use a long random string (e.g. `openssl rand -hex 32`)");
    }
    Ok(Secret::new(value))
}

/// The log filter, `info` unless set; checked with the rest of the settings, so that
/// `--check-config` refuses a filter the broker would refuse at start.
fn checked_log_level(level: Option<String>) -> Result<String> {
    let level = level.unwrap_or_else(|| "info".into());
    jobcast_daemon::check_log_level(&level)?;
    Ok(level)
}

pub fn resolve(file: FileConfig, flags: Overrides) -> Result<BrokerConfig> {
    let admin = flags.admin_secret.or(file.keys.admin).context(
        "no admin key: set `admin` under [keys] in the broker config, or JOBCAST_ADMIN_SECRET",
    )?;
    let mut workers = HashMap::new();
    let mut worker_pools = HashMap::new();
    let mut previous_secrets = HashMap::new();
    for (id, key) in file.keys.workers {
        names::validate("worker id", &id)?;
        if id == jobcast_core::ADMIN || id == "broker" {
            bail!("{id:?} is reserved and cannot be a worker id");
        }
        let value = match key {
            WorkerKey::Secret(value) => value,
            WorkerKey::Limited(LimitedWorkerKey {
                secret,
                pools,
                previous_secret,
            }) => {
                if let Some(previous) = previous_secret {
                    previous_secrets.insert(
                        id.clone(),
                        self::secret(&format!("worker {id} (previous)"), previous)?,
                    );
                }
                if let Some(pools) = pools {
                    for pool in &pools {
                        names::validate("pool", pool)
                            .with_context(|| format!("in the key of worker {id}"))?;
                    }
                    worker_pools.insert(id.clone(), pools.into_iter().collect());
                }
                secret
            }
        };
        workers.insert(id.clone(), secret(&format!("worker {id}"), value)?);
    }
    let state_directory = std::env::var("STATE_DIRECTORY").ok();
    let data_dir_defaulted = flags.data_dir.is_none()
        && file.data_dir.is_none()
        && state_directory.as_deref().is_none_or(str::is_empty);
    let config = BrokerConfig {
        data_dir: flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| default_data_dir(state_directory.as_deref())),
        data_dir_defaulted,
        postgres: match (flags.postgres_url, file.postgres) {
            (Some(url), Some(section)) => Some(PostgresSection { url, ..section }),
            (Some(url), None) => Some(PostgresSection::with_url(url)),
            (None, section) => section,
        },
        router: flags
            .router
            .or(file.router)
            .unwrap_or_else(|| "tcp://127.0.0.1:5555".into()),
        publish: flags
            .publish
            .or(file.publish)
            .unwrap_or_else(|| "tcp://127.0.0.1:5556".into()),
        jobs: flags.jobs.or(file.jobs),
        log_level: checked_log_level(flags.log_level.or(file.log_level))?,
        log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
        heartbeat_interval: flags
            .heartbeat_interval
            .or(file.heartbeat_interval)
            .unwrap_or(Duration::from_secs(1)),
        worker_timeout: flags
            .worker_timeout
            .or(file.worker_timeout)
            .unwrap_or(Duration::from_secs(10)),
        unstarted_grant_hold: file
            .unstarted_grant_hold
            .unwrap_or(Duration::from_secs(600)),
        max_clock_skew: file.max_clock_skew.unwrap_or(Duration::from_secs(30)),
        peer_timeout: file.peer_timeout.unwrap_or(Duration::from_secs(20)),
        max_frame_bytes: file.max_frame_bytes.unwrap_or(1 << 20),
        max_log_bytes: file.max_log_bytes.unwrap_or(1 << 20),
        min_free_bytes: file.min_free_bytes.unwrap_or(64 << 20),
        cache_size: file.cache_size.unwrap_or(crate::store::DEFAULT_CACHE_BYTES),
        keys: Keys {
            admin: secret("admin", admin)?,
            workers,
            worker_pools,
            previous: previous_secrets,
            revoked: HashMap::new(),
        },
        webhooks: file.webhooks,
        http_listen: match flags.http.or(file.http.listen) {
            Some(off) if off == "off" => None,
            Some(addr) => Some(addr),
            None => Some("127.0.0.1:5000".into()),
        },
        api_tokens: file.http.tokens,
        public_origins: file
            .http
            .public_origins
            .into_iter()
            .map(|o| o.trim_end_matches('/').to_string())
            .collect(),
        retention: file.retention.resolve()?,
        pool_limits: pool_limits(file.pools)?,
    };
    if config.heartbeat_interval.is_zero() {
        bail!("heartbeat_interval must be longer than zero");
    }
    if config.worker_timeout < config.heartbeat_interval * 3 {
        bail!(
            "worker_timeout ({:?}) must be at least three heartbeat intervals ({:?})",
            config.worker_timeout,
            config.heartbeat_interval * 3
        );
    }
    if config.peer_timeout < Duration::from_secs(4) {
        bail!("peer_timeout must be at least 4s");
    }
    if let Some(lease) = config.postgres.as_ref().and_then(|pg| pg.lease) {
        if lease < Duration::from_secs(1) {
            bail!("[postgres] lease must be at least 1s (it is renewed three times a lease)");
        }
    }
    if config.max_log_bytes < jobcast_protocol::logcap::MIN_CAP as u64 {
        bail!(
            "max_log_bytes must be at least {}",
            jobcast_protocol::logcap::MIN_CAP
        );
    }
    if config.cache_size < 1 << 20 {
        bail!("cache_size must be at least 1048576 (1 MiB)");
    }
    if config.max_frame_bytes < 4096 {
        bail!("max_frame_bytes must be at least 4096");
    }
    for token in &config.api_tokens {
        if token.token.len() < MIN_SECRET_LEN {
            bail!(
                "the API token {:?} is shorter than {MIN_SECRET_LEN} characters",
                token.name
            );
        }
    }
    for origin in &config.public_origins {
        let Some((scheme, host)) = origin.split_once("://") else {
            bail!("public origin {origin:?} must look like https://jobs.example.com");
        };
        if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
            bail!("public origin {origin:?} must look like https://jobs.example.com (scheme and host, no path)");
        }
    }
    if let Some(addr) = &config.http_listen {
        addr.parse::<std::net::SocketAddr>().with_context(|| {
            format!("http listen address {addr:?} must look like 127.0.0.1:5000 (or \"off\")")
        })?;
    }
    for hook in &config.webhooks {
        if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
            bail!(
                "webhook url {:?} must start with http:// or https://",
                hook.url
            );
        }
    }
    for (what, endpoint) in [("router", &config.router), ("publish", &config.publish)] {
        parse_tcp_endpoint(endpoint).with_context(|| format!("invalid {what} endpoint"))?;
    }
    Ok(config)
}

/// `tcp://host:port` → (host, port).
pub fn parse_tcp_endpoint(endpoint: &str) -> Result<(String, u16)> {
    let rest = endpoint
        .strip_prefix("tcp://")
        .with_context(|| format!("{endpoint:?} must look like tcp://127.0.0.1:5555"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("{endpoint:?} has no port"))?;
    let port = port
        .parse()
        .with_context(|| format!("{endpoint:?} has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{endpoint:?} has no host");
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    const KEYS: &str =
        "[keys]\nadmin = \"0123456789abcdef0\"\n[keys.workers]\nw1 = \"0123456789abcdef1\"\n";

    #[test]
    fn defaults_and_overrides() {
        let config = resolve(
            file(&format!("worker_timeout = \"30s\"\n{KEYS}")),
            Overrides {
                router: Some("tcp://127.0.0.1:7000".into()),
                data_dir: Some("/srv/jobcast".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(config.router, "tcp://127.0.0.1:7000");
        assert_eq!(config.publish, "tcp://127.0.0.1:5556");
        assert_eq!(config.worker_timeout, Duration::from_secs(30));
        assert!(config.keys.for_sender("w1").is_some());
        assert!(config.keys.for_sender("w2").is_none());
        assert!(config.keys.worker_pools.is_empty());
        assert_eq!(config.max_log_bytes, 1 << 20);
        assert!(config.warnings().is_empty());
        let keyless = resolve(
            file("[keys]\nadmin = \"0123456789abcdef0\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert!(keyless.warnings()[0].contains("[keys.workers]"));
    }

    #[test]
    fn retention_has_defaults_can_be_turned_off_and_explains_mistakes() {
        let retention = |section: &str| {
            resolve(file(&format!("{KEYS}{section}")), Overrides::default())
                .map(|c| c.retention)
                .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(
            retention(""),
            Ok(jobcast_core::Retention {
                max_age_ms: Some(30 * 86_400_000),
                max_runs: Some(1_000_000)
            })
        );
        assert_eq!(
            retention("[retention]\nmax_age = \"off\"\nmax_runs = 0\n"),
            Ok(jobcast_core::Retention::default())
        );
        assert_eq!(
            retention("[retention]\nmax_age = \"12h\"\n").map(|r| r.max_age_ms),
            Ok(Some(12 * 3_600_000))
        );
        let bad = retention("[retention]\nmax_age = \"a month\"\n").unwrap_err();
        assert!(bad.contains("max_age") && bad.contains("off"), "{bad}");
        assert!(retention("[retention]\nmax_age = \"0s\"\n").is_err());
    }

    #[test]
    fn a_worker_key_can_be_limited_to_pools() {
        let config = resolve(
            file(
                "[keys]\nadmin = \"0123456789abcdef0\"\n[keys.workers]\n\
                  w1 = \"0123456789abcdef1\"\n\
                  w2 = { secret = \"0123456789abcdef2\", pools = [\"etl\", \"reports\"] }\n",
            ),
            Overrides::default(),
        )
        .unwrap();
        assert!(config.keys.for_sender("w2").is_some());
        assert!(!config.keys.worker_pools.contains_key("w1"));
        assert_eq!(
            config.keys.worker_pools["w2"],
            BTreeSet::from(["etl".to_string(), "reports".to_string()])
        );
        let err = resolve(
            file(
                "[keys]\nadmin = \"0123456789abcdef0\"\n[keys.workers]\n\
                  w2 = { secret = \"0123456789abcdef2\", pools = [\"no spaces\"] }\n",
            ),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("worker w2"), "{err:#}");
        assert!(toml::from_str::<FileConfig>(
            "[keys.workers]\nw2 = { secret = \"0123456789abcdef2\", pool = [\"x\"] }\n"
        )
        .is_err());
    }

    #[test]
    fn pools_may_limit_their_runs_at_once() {
        let keys = "[keys]\nadmin = \"0123456789abcdef0\"\n";
        let config = resolve(
            file(&format!(
                "{keys}[pools.gpu]\nmax_concurrent = 2\n[pools.cpu]\n"
            )),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.pool_limits, BTreeMap::from([("gpu".to_string(), 2)]));
        for (text, said) in [
            ("[pools.gpu]\nmax_concurrent = 0\n", "at least 1"),
            ("[pools.\"a b\"]\nmax_concurrent = 1\n", "[pools.a b]"),
        ] {
            let err = resolve(file(&format!("{keys}{text}")), Overrides::default()).unwrap_err();
            assert!(format!("{err:#}").contains(said), "{err:#}");
        }
        assert!(toml::from_str::<FileConfig>("[pools.gpu]\nmax = 1\n").is_err());
    }

    #[test]
    fn bad_settings_are_explained() {
        let err = |text: &str| resolve(file(text), Overrides::default()).unwrap_err();
        assert!(format!("{:#}", err("")).contains("no admin key"));
        assert!(format!("{:#}", err("[keys]\nadmin = \"short\"")).contains("shorter than"));
        assert!(
            format!("{:#}", err(&format!("router = \"127.0.0.1:1\"\n{KEYS}"))).contains("tcp://")
        );
        assert!(
            format!("{:#}", err(&format!("heartbeat_interval = \"5s\"\n{KEYS}")))
                .contains("three heartbeat")
        );
        assert!(toml::from_str::<FileConfig>("worker_timeout = \"soon\"").is_err());
        assert!(toml::from_str::<FileConfig>("routre = \"x\"").is_err());
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let example = file(include_str!("../../../examples/broker.toml"));
        let config = resolve(example, Overrides::default()).unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        let json = file("log_format = \"json\"");
        assert_eq!(json.log_format, Some(LogFormat::Json));
        assert!(toml::from_str::<FileConfig>("log_format = \"xml\"").is_err());
    }

    #[test]
    fn the_data_dir_defaults_to_systemds_state_directory() {
        assert_eq!(
            default_data_dir(Some("/var/lib/jobcast")),
            PathBuf::from("/var/lib/jobcast")
        );
        assert_eq!(
            default_data_dir(Some("/var/lib/jobcast:/var/lib/other")),
            PathBuf::from("/var/lib/jobcast")
        );
        assert_eq!(default_data_dir(Some("")), PathBuf::from("jobcast-data"));
        assert_eq!(default_data_dir(None), PathBuf::from("jobcast-data"));
    }

    #[test]
    fn a_data_dir_taken_by_default_is_warned_about() {
        let warned = |config: &BrokerConfig| {
            config
                .warnings()
                .iter()
                .any(|w| w.starts_with("no data_dir set"))
        };
        let named = resolve(
            file(&format!("data_dir = \"/srv/jobcast\"\n{KEYS}")),
            Overrides::default(),
        )
        .unwrap();
        assert!(!named.data_dir_defaulted && !warned(&named));
        if std::env::var_os("STATE_DIRECTORY").is_none() {
            let defaulted = resolve(file(KEYS), Overrides::default()).unwrap();
            assert_eq!(defaulted.data_dir, PathBuf::from("jobcast-data"));
            assert!(warned(&defaulted));
        }
    }

    #[test]
    fn a_rotated_key_accepts_both_secrets_and_a_reload_revokes_what_it_stops_accepting() {
        let rotating = resolve(
            toml::from_str(
                "[keys]\nadmin = \"0123456789abcdef0\"\n[keys.workers]\n\
                 w1 = { secret = \"new-secret-0123456789\", previous_secret = \"old-secret-0123456789\" }\n\
                 w2 = \"w2-secret-0123456789\"\n",
            )
            .unwrap(),
            Overrides::default(),
        )
        .unwrap();
        let (current, previous) = rotating.keys.secrets_of("w1");
        assert_eq!(current, Some(&Secret::new("new-secret-0123456789")));
        assert_eq!(previous, Some(&Secret::new("old-secret-0123456789")));
        let old = Secret::new("old-secret-0123456789");
        assert!(rotating.keys.accepts_password(
            "w1",
            jobcast_protocol::envelope::connection_password(&old).as_bytes()
        ));

        // The old secret alone was in force: moving to the rotation revokes nothing.
        let mut before = rotating.keys.clone();
        before.workers.insert("w1".into(), old.clone());
        before.previous.clear();
        let (_, revoked) = rotating.keys.clone().replacing(&before);
        assert!(revoked.is_empty(), "{revoked:?}");
        // Dropping the previous secret revokes nothing either (the new one was in force).
        let mut finished = rotating.keys.clone();
        finished.previous.clear();
        let (_, revoked) = finished.clone().replacing(&rotating.keys);
        assert!(revoked.is_empty(), "{revoked:?}");
        // Removing w2 and replacing w1's secret outright revoke both.
        let mut hard = finished.clone();
        hard.workers.remove("w2");
        hard.workers
            .insert("w1".into(), Secret::new("another-secret-0123456789"));
        let (keys, revoked) = hard.replacing(&finished);
        assert_eq!(revoked, ["w1", "w2"]);
        assert_eq!(
            keys.secrets_of("w2"),
            (None, Some(&Secret::new("w2-secret-0123456789")))
        );
        // A revoked worker given a key again is no longer revoked at the next reload.
        let mut back = keys.clone();
        back.revoked.clear();
        back.workers
            .insert("w2".into(), Secret::new("w2-secret-0123456789"));
        let (keys, revoked) = back.replacing(&keys);
        assert!(revoked.is_empty());
        assert!(!keys.revoked.contains_key("w2"));
    }
}
