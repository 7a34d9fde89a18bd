//! A throwaway PostgreSQL for tests, from the host's own packages (Debian's
//! `postgresql`): `initdb` in a temporary directory, `pg_ctl` on a free loopback port,
//! stopped (`-m immediate`) and removed when the [`TestPostgres`] is dropped. No
//! containers, nothing shared between tests.
//!
//! PostgreSQL refuses to run as root, so a test run as root starts it as the
//! unprivileged user `postgres` (which Debian's package creates).
//!
//! Without PostgreSQL on the host, [`TestPostgres::start`] panics with what to install;
//! `JOBCAST_TESTS_WITHOUT_POSTGRES=1` turns that into [`None`], and the test says it
//! skipped (on stderr) rather than passing silently.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The password of the cluster's superuser `postgres` (connections over TCP need it).
pub const PASSWORD: &str = "jobcast-test-password";

pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// (uid, gid) to run PostgreSQL's programs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
}

impl TestPostgres {
    /// A new cluster, started; `None` only when PostgreSQL is missing and
    /// `JOBCAST_TESTS_WITHOUT_POSTGRES=1` allows that.
    pub fn start() -> Option<TestPostgres> {
        let Some(bin) = find_bin_dir() else {
            if std::env::var_os("JOBCAST_TESTS_WITHOUT_POSTGRES").is_some_and(|v| v == "1") {
                {
                    // Straight to the standard error: the test runner keeps what a
                    // passing test prints with `eprintln!`, and the skip would go unseen.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "SKIPPED: no PostgreSQL on this host (JOBCAST_TESTS_WITHOUT_POSTGRES=1)"
                    );
                }
                return None;
            }
            panic!(
                "this test needs PostgreSQL's server programs (initdb, pg_ctl): install Debian's \
                 `postgresql` package, point JOBCAST_PG_BIN at their directory, or set \
                 JOBCAST_TESTS_WITHOUT_POSTGRES=1 to skip"
            );
        };
        let run_as = if is_root() {
            Some(postgres_user().expect(
                "tests run as root start PostgreSQL as the user `postgres`, which does not exist",
            ))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("jobcast-pg-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("the directory's mode");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let mut pg = TestPostgres {
            port: 0,
            dir,
            bin,
            run_as,
        };
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("the password file");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown");
        }
        pg.program(
            "initdb",
            &[
                "-D".as_ref(),
                pg.data().as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
            ],
        );
        pg.start_on_a_free_port();
        Some(pg)
    }

    /// Where its data lives.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL of `database` without the password (see [`PASSWORD`]).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new empty database; its URL (without the password).
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Runs `sql` with `psql` (over the Unix socket, as the superuser); its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self.program_output(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket_dir(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs one of PostgreSQL's client programs (`pgbench`, `psql`) on `database`,
    /// connected over the Unix socket as the superuser, with `args` after those.
    pub fn client(&self, program: &str, database: &str, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let socket = self.socket_dir();
        let mut all = vec!["-h", &socket, "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push(database);
        self.program_output(program, &all)
    }

    /// Turns TLS on with this certificate and key (PEM files, copied into the cluster's
    /// directory for the server to own) and reloads the server's settings.
    pub fn enable_tls(&self, certificate: &Path, key: &Path) {
        let data = self.data();
        for (from, name) in [(certificate, "server.crt"), (key, "server.key")] {
            let to = data.join(name);
            std::fs::copy(from, &to).expect("copy a TLS file into the cluster");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .expect("the TLS file's mode");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
        let mut tries = 0;
        while self.psql("postgres", "SHOW ssl") != "on" {
            tries += 1;
            assert!(tries < 100, "TLS did not come on");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`) and starts it again
    /// on the same port.
    pub fn restart_immediate(&self) {
        self.stop_immediate();
        self.start_on(self.port)
            .expect("PostgreSQL started again on its port");
    }

    /// Stops the server as a crash would; [`TestPostgres::start_again`] brings it back.
    pub fn stop_immediate(&self) {
        let output = self.immediate_stop();
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `pg_ctl stop -m immediate`, waiting for the server to be gone.
    fn immediate_stop(&self) -> Output {
        let data = self.data();
        self.program_output(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// Starts a stopped server again on its port.
    pub fn start_again(&self) {
        self.start_on(self.port)
            .expect("PostgreSQL started again on its port");
    }

    fn socket_dir(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    fn start_on_a_free_port(&mut self) {
        // A port can be taken between choosing and binding it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match self.start_on(port) {
                Ok(()) => {
                    self.port = port;
                    return;
                }
                Err(log) => last = log,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn start_on(&self, port: u16) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 \
             -c shared_buffers=32MB",
            self.socket_dir()
        );
        let output = self.program_output(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn program_output<S: AsRef<std::ffi::OsStr>>(&self, program: &str, args: &[S]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    fn program<S: AsRef<std::ffi::OsStr>>(&self, program: &str, args: &[S]) {
        let output = self.program_output(program, args);
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- PostgreSQL's log (last 30 lines) ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        if self.port != 0 {
            let _ = self.immediate_stop();
        }
    }
}

/// PostgreSQL's server programs: `JOBCAST_PG_BIN`, then Debian's newest
/// `/usr/lib/postgresql/N/bin`, then `initdb` on the PATH.
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("JOBCAST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    // `/proc/self` belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .expect("/proc/self")
}

/// The uid and gid of the user `postgres`, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string(Path::new("/etc/passwd")).ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_answers_restarts_and_is_removed() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        pg.create_database("probe");
        assert_eq!(pg.psql("probe", "SELECT 40 + 2"), "42");
        pg.psql("probe", "CREATE TABLE t (x int); INSERT INTO t VALUES (7)");
        pg.restart_immediate();
        assert_eq!(pg.psql("probe", "SELECT x FROM t"), "7");
        let dir = pg.data();
        drop(pg);
        assert!(!dir.exists(), "the cluster's directory is removed");
    }
}
