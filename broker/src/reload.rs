//! Taking new keys, API tokens and webhooks while the broker runs (SIGHUP or
//! `jobcastctl reload`): the settings file is read again, what may change live is handed
//! to whoever uses it, and what needs a restart is reported.

use crate::config::{ApiToken, BrokerConfig, Keys};
use anyhow::Result;
use jobcast_protocol::ReloadReport;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::signal::unix::Signal;
use tokio::sync::watch;

/// Builds the settings again as a start would (file, then flags).
pub type ReadSettings = Box<dyn FnMut() -> Result<BrokerConfig> + Send>;

/// What the server needs to reload: how to read the settings, and the SIGHUPs.
pub struct Reloading {
    pub read: ReadSettings,
    /// SIGHUPs; several sent before the loop looks are one reload. Listening must start
    /// before the broker says it is ready: SIGHUP's default action would end it.
    pub hangups: Signal,
}

/// The settings that change while the broker runs, where their users read them.
pub struct LiveSettings {
    /// The ZAP handler checks connections against these.
    pub keys: watch::Sender<Keys>,
    /// The HTTP API and the live feed check bearer tokens against these.
    pub api_tokens: watch::Sender<Arc<Vec<ApiToken>>>,
}

impl LiveSettings {
    pub fn new(config: &BrokerConfig) -> LiveSettings {
        LiveSettings {
            keys: watch::Sender::new(config.keys.clone()),
            api_tokens: watch::Sender::new(Arc::new(config.api_tokens.clone())),
        }
    }
}

/// What changed from `running` to `new`, as the operator is told.
pub fn compare(running: &BrokerConfig, new: &BrokerConfig) -> ReloadReport {
    let old_ids: BTreeSet<&String> = running.keys.workers.keys().collect();
    let new_ids: BTreeSet<&String> = new.keys.workers.keys().collect();
    let changed = |id: &String| {
        running.keys.workers.get(id) != new.keys.workers.get(id)
            || running.keys.previous.get(id) != new.keys.previous.get(id)
            || running.keys.worker_pools.get(id) != new.keys.worker_pools.get(id)
    };
    ReloadReport {
        workers_added: new_ids
            .difference(&old_ids)
            .map(|s| s.to_string())
            .collect(),
        workers_removed: old_ids
            .difference(&new_ids)
            .map(|s| s.to_string())
            .collect(),
        workers_changed: old_ids
            .intersection(&new_ids)
            .filter(|id| changed(id))
            .map(|s| s.to_string())
            .collect(),
        admin_changed: running.keys.admin != new.keys.admin,
        api_tokens: new.api_tokens.len() as u64,
        webhooks: new.webhooks.len() as u64,
        needs_restart: needs_restart(running, new),
    }
}

/// The settings that differ but are only read at start.
fn needs_restart(running: &BrokerConfig, new: &BrokerConfig) -> Vec<String> {
    let (a, b) = (running, new);
    [
        ("data_dir", a.data_dir != b.data_dir),
        ("postgres", a.postgres != b.postgres),
        ("router", a.router != b.router),
        ("publish", a.publish != b.publish),
        ("jobs", a.jobs != b.jobs),
        ("log_level", a.log_level != b.log_level),
        ("log_format", a.log_format != b.log_format),
        (
            "heartbeat_interval",
            a.heartbeat_interval != b.heartbeat_interval,
        ),
        ("worker_timeout", a.worker_timeout != b.worker_timeout),
        ("max_clock_skew", a.max_clock_skew != b.max_clock_skew),
        ("peer_timeout", a.peer_timeout != b.peer_timeout),
        ("max_frame_bytes", a.max_frame_bytes != b.max_frame_bytes),
        ("max_log_bytes", a.max_log_bytes != b.max_log_bytes),
        ("min_free_bytes", a.min_free_bytes != b.min_free_bytes),
        ("cache_size", a.cache_size != b.cache_size),
        ("http.listen", a.http_listen != b.http_listen),
        ("http.public_origins", a.public_origins != b.public_origins),
        ("retention", a.retention != b.retention),
        ("pools", a.pool_limits != b.pool_limits),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(name, _)| name.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, FileConfig, Overrides};

    fn config(text: &str) -> BrokerConfig {
        let file: FileConfig = toml::from_str(text).unwrap();
        resolve(file, Overrides::default()).unwrap()
    }

    const BASE: &str = "[keys]\nadmin = \"0123456789abcdef0\"\n[keys.workers]\n\
        w1 = \"0123456789abcdef1\"\n\
        w2 = { secret = \"0123456789abcdef2\", pools = [\"etl\"] }\n\
        w3 = \"0123456789abcdef3\"\n";

    #[test]
    fn nothing_changed_reports_nothing() {
        let report = compare(&config(BASE), &config(BASE));
        assert_eq!(report, ReloadReport::default());
    }

    #[test]
    fn worker_keys_added_removed_and_changed_are_named() {
        let new = "[keys]\nadmin = \"0123456789abcdef0\"\n[keys.workers]\n\
            w1 = \"0123456789abcdef1\"\n\
            w2 = { secret = \"0123456789abcdef2\", pools = [\"etl\", \"reports\"] }\n\
            w4 = \"0123456789abcdef4\"\n\
            [[http.tokens]]\nname = \"ci\"\ntoken = \"0123456789abcdefX\"\nrole = \"viewer\"\n\
            [[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\n";
        let report = compare(&config(BASE), &config(new));
        assert_eq!(report.workers_added, ["w4"]);
        assert_eq!(report.workers_removed, ["w3"]);
        assert_eq!(report.workers_changed, ["w2"]);
        assert!(!report.admin_changed);
        assert_eq!((report.api_tokens, report.webhooks), (1, 1));
        assert!(report.needs_restart.is_empty());
    }

    #[test]
    fn a_new_secret_or_admin_key_is_a_change() {
        let new = BASE
            .replace("abcdef1", "abcdefZ")
            .replace("abcdef0", "abcdefA");
        let report = compare(&config(BASE), &config(&new));
        assert_eq!(report.workers_changed, ["w1"]);
        assert!(report.admin_changed);
    }

    #[test]
    fn settings_read_only_at_start_are_reported() {
        let new = format!("router = \"tcp://127.0.0.1:7000\"\ncache_size = 2097152\n{BASE}");
        let report = compare(&config(BASE), &config(&new));
        assert_eq!(report.needs_restart, ["router", "cache_size"]);
    }
}
