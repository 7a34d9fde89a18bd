//! Where the PostgreSQL store is and how to reach it: a connection URL (or libpq's
//! `key=value` form), the password from a file or `PGPASSWORD` when the URL has none, and
//! TLS as the URL's `sslmode` asks (`disable`, `prefer`, `require`), verified against the
//! CA file given or the Mozilla roots.

use crate::store::{StoreError, StoreResult};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

#[derive(Clone)]
pub struct PgSettings {
    config: Config,
    ca_file: Option<PathBuf>,
    /// How long a caller waits for a connection to open or answer, if bounded (a
    /// leader's: it must stop acting within its lease, whatever the database does).
    pub answer_within: Option<Duration>,
}

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// The longest data sent may stay unacknowledged before the connection counts as lost.
const UNACKNOWLEDGED: Duration = Duration::from_secs(20);

impl PgSettings {
    /// From the store's URL; `password_file` (or `PGPASSWORD`) when the URL carries no
    /// password. The password is never part of an error or a log line.
    pub fn new(
        url: &str,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> StoreResult<PgSettings> {
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::Engine(format!("the store's PostgreSQL URL cannot be read: {e}").into())
        })?;
        if config.get_password().is_none() {
            if let Some(path) = password_file {
                let password = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
                    what: "read the PostgreSQL password file",
                    path: path.to_path_buf(),
                    source,
                })?;
                config.password(password.trim_end_matches(['\n', '\r']));
            } else if let Some(password) = std::env::var_os("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database host that vanishes (no reset, no answer) is noticed in seconds rather
        // than when the kernel gives up on the connection (minutes): keepalives while
        // idle, and a bound on data left unacknowledged while a commit is sent.
        config.keepalives(true);
        if config.get_keepalives_idle() > KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(UNACKNOWLEDGED);
        }
        if config.get_application_name().is_none() {
            config.application_name("jobcast-broker");
        }
        Ok(PgSettings {
            config,
            ca_file: ca_file.map(Path::to_path_buf),
            answer_within: None,
        })
    }

    /// These settings, with connections that give up on an answer after `limit`.
    pub fn answering_within(&self, limit: Duration) -> PgSettings {
        PgSettings {
            answer_within: Some(limit),
            ..self.clone()
        }
    }

    /// Host, port, database and user, for logs and errors (never the password).
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}@{host}:{port}/{}",
            self.config.get_user().unwrap_or("?"),
            self.config.get_dbname().unwrap_or("?")
        )
    }

    /// Connects, and spawns the connection's driver on the current runtime.
    pub async fn connect(&self) -> StoreResult<Client> {
        let failed = |e: tokio_postgres::Error| {
            // The client's error names the step; its source says what went wrong.
            let cause = std::error::Error::source(&e)
                .map(|source| format!(": {source}"))
                .unwrap_or_default();
            StoreError::Engine(format!("cannot connect to {}: {e}{cause}", self.describe()).into())
        };
        if self.config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(failed)?;
            tokio::spawn(connection);
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?);
        let (client, connection) = self.config.connect(tls).await.map_err(failed)?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn tls_config(&self) -> StoreResult<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        StoreError::Engine(
                            format!("cannot read the CA file {}: {e}", path.display()).into(),
                        )
                    })?;
                for certificate in certificates {
                    roots.add(certificate).map_err(|e| {
                        StoreError::Engine(
                            format!("a certificate of {} is not usable: {e}", path.display())
                                .into(),
                        )
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Engine(Box::new(e)))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_comes_from_its_file_and_is_never_described() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let settings =
            PgSettings::new("postgres://jobcast@db.example:6543/jobs", Some(&file), None).unwrap();
        assert_eq!(settings.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(
            settings.describe(),
            "postgres://jobcast@db.example:6543/jobs"
        );
        let with_password = PgSettings::new(
            "postgres://jobcast:inline@db.example/jobs",
            Some(&file),
            None,
        )
        .unwrap();
        assert_eq!(with_password.config.get_password(), Some(&b"inline"[..]));
        assert!(!with_password.describe().contains("inline"));
    }

    #[test]
    fn a_vanished_database_host_is_noticed_in_seconds_unless_the_url_says_sooner() {
        let settings = PgSettings::new("postgres://jobcast@db/jobs", None, None).unwrap();
        assert!(settings.config.get_keepalives());
        assert_eq!(settings.config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(
            settings.config.get_tcp_user_timeout(),
            Some(&UNACKNOWLEDGED)
        );
        let sooner = PgSettings::new(
            "postgres://jobcast@db/jobs?keepalives_idle=3&tcp_user_timeout=5",
            None,
            None,
        )
        .unwrap();
        assert_eq!(sooner.config.get_keepalives_idle(), Duration::from_secs(3));
        assert_eq!(
            sooner.config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(5))
        );
    }

    #[test]
    fn a_bad_url_or_a_missing_password_file_is_an_error_that_says_so() {
        let error = PgSettings::new("postgres://[", None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("URL cannot be read"), "{error}");
        let error = PgSettings::new("postgres://a@b/c", Some(Path::new("/nonexistent/pw")), None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("password file"), "{error}");
    }
}
