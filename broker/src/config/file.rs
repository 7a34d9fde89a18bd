//! The settings file as operators write it (TOML): every section's shape, read with serde
//! and checked by `resolve` (`mod.rs`).

use super::LogFormat;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The settings file as written by operators. Every field is optional except the keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    /// `[postgres]`: keep the broker's records in PostgreSQL instead of `data_dir`.
    pub postgres: Option<PostgresSection>,
    pub router: Option<String>,
    pub publish: Option<String>,
    pub jobs: Option<PathBuf>,
    pub log_level: Option<String>,
    /// `text` (default) or `json` (a JSON object per line).
    pub log_format: Option<LogFormat>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub worker_timeout: Option<Duration>,
    /// How long a run granted to a worker that went silent, never reported started, waits
    /// for that worker to come back and hand it back (queued again) before it is lost
    /// [default: 10m].
    #[serde(default, with = "humantime_serde")]
    pub unstarted_grant_hold: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_clock_skew: Option<Duration>,
    /// A peer whose host stops answering TCP keepalives for about this long is
    /// disconnected and what was queued for it is freed (the older name is still read).
    #[serde(
        default,
        with = "humantime_serde",
        alias = "stalled_subscriber_timeout"
    )]
    pub peer_timeout: Option<Duration>,
    pub max_frame_bytes: Option<usize>,
    /// The most log stored per run, whatever a worker declares [default: 1 MiB].
    pub max_log_bytes: Option<u64>,
    /// Free space kept in the data directory: under it the broker takes no new work
    /// until space is freed; 0 turns the check off [default: 64 MiB].
    pub min_free_bytes: Option<u64>,
    /// Bytes of the store's block cache: with the write buffers, what bounds the
    /// broker's memory for its store [default: 64 MiB].
    pub cache_size: Option<u64>,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub webhooks: Vec<crate::notify::Webhook>,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[pools.NAME]`: settings of a pool.
    #[serde(default)]
    pub pools: std::collections::BTreeMap<String, PoolSection>,
}

/// `[postgres]`: where the PostgreSQL store is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// A connection URL (`postgres://user@host:port/database?sslmode=require`) or
    /// libpq's `key=value` form. Better without the password: see `password_file`.
    pub url: String,
    /// A file holding the password (its first line); else `PGPASSWORD`, else none.
    pub password_file: Option<PathBuf>,
    /// PEM certificates of the CA that signed the server's certificate, for TLS
    /// (`sslmode=require`); without it, the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// How long the leader's lease lasts: of the brokers on this database one acts, and
    /// one that dies is replaced within about this long [default: 5s].
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// Where workers reach this broker's request socket, as written with the lease for
    /// the other brokers to name [default: the address it is bound to].
    pub advertise_router: Option<String>,
    /// Likewise its event socket.
    pub advertise_publish: Option<String>,
    /// Likewise its HTTP address.
    pub advertise_http: Option<String>,
}

impl PostgresSection {
    /// The lease's length when not set.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

    /// With only a URL: every other setting at its default.
    pub fn with_url(url: String) -> PostgresSection {
        PostgresSection {
            url,
            password_file: None,
            ca_file: None,
            lease: None,
            advertise_router: None,
            advertise_publish: None,
            advertise_http: None,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease.unwrap_or(Self::DEFAULT_LEASE)
    }
}

/// `[pools.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// The most runs of the pool assigned or running at once, across all its workers.
    pub max_concurrent: Option<u32>,
}

/// `[retention]`: how long finished runs and their logs are kept, and how many.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// A duration like "30d", or "off" to keep runs whatever their age [default: 30d].
    pub max_age: Option<String>,
    /// The most finished runs kept, or 0 for no limit [default: 1000000].
    pub max_runs: Option<u64>,
}

impl RetentionSection {
    pub(super) fn resolve(self) -> Result<jobcast_core::Retention> {
        let max_age_ms = match self.max_age.as_deref() {
            None => Some(30 * 86_400_000),
            Some("off") => None,
            Some(text) => {
                let age = humantime::parse_duration(text).with_context(|| {
                    format!(
                        "[retention] max_age {text:?} is not a duration like \"30d\" (or \"off\")"
                    )
                })?;
                if age.is_zero() {
                    anyhow::bail!("[retention] max_age must be longer than zero (or \"off\")");
                }
                Some(age.as_millis() as u64)
            }
        };
        let max_runs = match self.max_runs {
            None => Some(1_000_000),
            Some(0) => None,
            Some(n) => Some(n),
        };
        Ok(jobcast_core::Retention {
            max_age_ms,
            max_runs,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the dashboard and JSON API [default: 127.0.0.1:5000].
    pub listen: Option<String>,
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
    /// Where the dashboard is served from as browsers see it, e.g.
    /// `["https://jobs.example.com"]`: the live feed accepts pages of these origins only
    /// [default: the listen address, as `http://`].
    #[serde(default)]
    pub public_origins: Vec<String>,
}

/// Who may use the HTTP API, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it, for logs (the token itself is never logged).
    pub name: String,
    pub token: String,
    pub role: Role,
    /// The teams whose jobs and runs it may see and act on; none: all (an admin token
    /// sees all whatever it lists).
    #[serde(default)]
    pub teams: Vec<String>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({}, {})", self.name, self.role.as_str())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// The secret `jobcastctl` signs with.
    pub admin: Option<String>,
    /// One entry per worker id: its secret, or a table with the secret and the pools it
    /// may serve.
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerKey>,
}

/// A worker's key: `w1 = "secret"` (any pool), or
/// `w1 = { secret = "…", pools = ["etl", "reports"] }`, and while a secret is rotated
/// `w1 = { secret = "new…", previous_secret = "old…" }` (both accepted).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WorkerKey {
    Secret(String),
    Limited(LimitedWorkerKey),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitedWorkerKey {
    pub secret: String,
    /// The pools this key may register for; absent means any.
    pub pools: Option<Vec<String>>,
    /// The secret being replaced, still accepted (and answered with) until it is removed
    /// from here: workers move to `secret` one by one without a refused request.
    pub previous_secret: Option<String>,
}
