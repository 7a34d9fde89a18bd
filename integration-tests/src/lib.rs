//! Harness for end-to-end tests: starts the real binaries on loopback, waits on
//! conditions with deadlines, and cleans up every process it started (including the
//! scripts of runs, found by a tag in their environment).

pub mod relay;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_SECRET: &str = "integration-admin-secret";
pub const VIEWER_TOKEN: &str = "integration-viewer-token";
/// Says that a test did not run here, and why, where the test runner shows it even for a
/// test that passes: straight to the standard error, which `eprintln!` inside a test is
/// not (the runner keeps what tests print to show only for failures).
pub fn say_skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {why}");
}

pub const OPERATOR_TOKEN: &str = "integration-operator-token";

/// A number from the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The moments chaos tests kill something at: a small deterministic generator seeded
/// from `JOBCAST_CHAOS_SEED` (or `default`), so a failure's moments can be replayed.
pub struct Chaos {
    seed: u64,
}

impl Chaos {
    pub fn from_env(default: u64) -> Chaos {
        let seed = env_number("JOBCAST_CHAOS_SEED", default);
        eprintln!("chaos seed {seed}");
        Chaos { seed }
    }

    /// The next pause, between `min` and `min + spread`.
    pub fn next_pause(&mut self, min: Duration, spread: Duration) -> Duration {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let spread_ms = (spread.as_millis() as u64).max(1);
        min + Duration::from_millis((self.seed >> 33) % spread_ms)
    }
}

/// Runs `work` on a thread of its own with an admin client of `router` that connects in
/// the background (and again after a broker restart): load generators beside a test.
pub fn with_admin_client_on_a_thread<T, F>(
    router: &str,
    work: impl FnOnce(jobcast_client::Client) -> F + Send + 'static,
) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    let config = admin_client_config(router, Duration::from_secs(2));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            work(jobcast_client::Client::connect_in_background(config)).await
        })
    })
}

/// Every file under `dir`, in its subdirectories too (none if it cannot be read).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// How a test's client speaks to `router` with the admin key.
pub fn admin_client_config(
    router: &str,
    connect_timeout: Duration,
) -> jobcast_client::ClientConfig {
    jobcast_client::ClientConfig {
        endpoint: router.to_string(),
        name: "admin".into(),
        secret: jobcast_protocol::Secret::new(ADMIN_SECRET),
        connect_timeout,
        max_clock_skew: Duration::from_secs(30),
    }
}

pub fn worker_secret(id: &str) -> String {
    format!("integration-secret-for-{id}")
}

/// Path of a workspace binary, built by `cargo build --workspace`.
/// A loopback endpoint nothing listens on (its port was free a moment ago).
pub fn unused_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    format!("tcp://127.0.0.1:{port}")
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` every 25 ms until it returns `Some`; `None` after `timeout` (for a
/// caller that explains a timeout itself, with logs).
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A child process a test started, killed and reaped if the test ends (or fails) before
/// it is waited for.
pub struct KilledOnDrop(Option<Child>);

impl KilledOnDrop {
    pub fn new(child: Child) -> KilledOnDrop {
        KilledOnDrop(Some(child))
    }

    /// Waits for it to end on its own, with what it printed.
    pub fn wait_with_output(mut self) -> Output {
        self.0
            .take()
            .expect("not waited for yet")
            .wait_with_output()
            .expect("wait for the child")
    }

    /// Stops it as a supervisor does (SIGTERM) and waits for it; panics unless it exits
    /// with success within 20 s.
    pub fn stop(mut self) {
        let mut child = self.0.take().expect("not waited for yet");
        // SAFETY: a signal to a child this test started and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let stopped = poll_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
        match stopped {
            Some(status) => assert!(status.success(), "it stopped with {status}"),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("it did not stop within 20 s of SIGTERM");
            }
        }
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `jobcastctl` with the admin key, asking `brokers` (a comma-separated list), and
/// leaves it running (`wait`, `logs -f`); its output is kept for `wait_with_output`.
pub fn spawn_ctl(brokers: &str, args: &[&str]) -> KilledOnDrop {
    KilledOnDrop::new(
        Command::new(bin("jobcastctl"))
            .args(["--broker", brokers])
            .args(args)
            .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start jobcastctl"),
    )
}

pub struct Worker {
    pub id: String,
    pub child: Child,
}

impl Worker {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the worker to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = &mut self.child;
        wait_for("the worker to exit", timeout, || {
            child.try_wait().ok().flatten().map(|s| s.code())
        })
    }
}

/// A broker with its workers, in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Marks the environment of every run started by this cluster.
    pub tag: String,
    pub broker: Option<Child>,
    pub router: String,
    pub publish: String,
    /// The HTTP API, e.g. `http://127.0.0.1:40123`.
    pub http: String,
    pub workers: Vec<Worker>,
    worker_ids: Vec<String>,
    broker_starts: u32,
    extra_broker_args: Vec<String>,
    /// Set in the environment of every process the cluster starts (broker, workers,
    /// jobcastctl): what the host they share has in common (a faked clock).
    host_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a broker that knows workers `w1..=wN` (none started yet).
    pub fn start(known_workers: usize) -> Cluster {
        Self::start_with(known_workers, &[])
    }

    pub fn start_with(known_workers: usize, broker_args: &[&str]) -> Cluster {
        Self::start_restricted(known_workers, broker_args, &[])
    }

    /// Like [`Cluster::start_with`], with the keys of some workers limited to pools.
    pub fn start_restricted(
        known_workers: usize,
        broker_args: &[&str],
        pools_of: &[(&str, &[&str])],
    ) -> Cluster {
        Self::start_configured(known_workers, broker_args, pools_of, "")
    }

    /// The most general start: `settings` are extra top-level lines of the broker's
    /// config file (e.g. `min_free_bytes = 0`).
    pub fn start_configured(
        known_workers: usize,
        broker_args: &[&str],
        pools_of: &[(&str, &[&str])],
        settings: &str,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("jobcast-it-")
            .tempdir()
            .expect("temp dir");
        let tag = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let worker_ids: Vec<String> = (1..=known_workers).map(|n| format!("w{n}")).collect();
        let mut config = format!(
            "data_dir = \"{}\"\nworker_timeout = \"5s\"\nheartbeat_interval = \"500ms\"\n{settings}\n\
             [[http.tokens]]\nname = \"viewer\"\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n\
             [[http.tokens]]\nname = \"operator\"\ntoken = \"{OPERATOR_TOKEN}\"\nrole = \"operator\"\n\
             [keys]\nadmin = \"{ADMIN_SECRET}\"\n[keys.workers]\n",
            dir.path().join("data").display()
        );
        for id in &worker_ids {
            let secret = worker_secret(id);
            match pools_of.iter().find(|(w, _)| w == id) {
                Some((_, pools)) => config.push_str(&format!(
                    "{id} = {{ secret = \"{secret}\", pools = {pools:?} }}\n"
                )),
                None => config.push_str(&format!("{id} = \"{secret}\"\n")),
            }
        }
        std::fs::write(dir.path().join("broker.toml"), config).expect("write config");
        let mut cluster = Cluster {
            dir,
            tag,
            broker: None,
            router: "tcp://127.0.0.1:0".into(),
            publish: "tcp://127.0.0.1:0".into(),
            http: "127.0.0.1:0".into(),
            workers: Vec::new(),
            worker_ids,
            broker_starts: 0,
            extra_broker_args: broker_args.iter().map(|s| s.to_string()).collect(),
            host_env: Vec::new(),
        };
        cluster.start_broker();
        cluster
    }

    /// Sets `key` in the environment of every process started from now on (restart the
    /// broker to give it to the broker too).
    pub fn set_host_env(&mut self, key: &str, value: &str) {
        self.host_env.push((key.to_string(), value.to_string()));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) the broker on the same endpoints and waits until it listens.
    pub fn start_broker(&mut self) {
        self.broker_starts += 1;
        let ready = self.path("broker.ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(self.path(&format!("broker-{}.log", self.broker_starts)))
            .expect("broker log");
        let child = Command::new(bin("jobcast-broker"))
            .envs(self.host_env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(self.path("broker.toml"))
            .args(["--router", &self.router, "--publish", &self.publish])
            .args(["--http", self.http.trim_start_matches("http://")])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--log-level", "info"])
            .args(&self.extra_broker_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start broker");
        self.broker = Some(child);
        let text = wait_for("the broker to listen", Duration::from_secs(20), || {
            if let Some(status) = self
                .broker
                .as_mut()
                .and_then(|b| b.try_wait().ok().flatten())
            {
                panic!("broker exited: {status}; log:\n{}", self.broker_log());
            }
            std::fs::read_to_string(&ready).ok()
        });
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(" = ") {
                let value = value.trim_matches('"').to_string();
                match key {
                    "router" => self.router = value,
                    "publish" => self.publish = value,
                    "http" => self.http = format!("http://{value}"),
                    _ => {}
                }
            }
        }
    }

    /// A request client with the admin key, connected to this cluster's broker.
    pub async fn admin_client(&self) -> jobcast_client::Client {
        jobcast_client::Client::connect(admin_client_config(&self.router, Duration::from_secs(5)))
            .await
            .expect("connect to the broker")
    }

    pub fn broker_log(&self) -> String {
        std::fs::read_to_string(self.path(&format!("broker-{}.log", self.broker_starts)))
            .unwrap_or_default()
    }

    pub fn broker_pid(&self) -> i32 {
        self.broker.as_ref().map(|b| b.id() as i32).unwrap_or(0)
    }

    /// Sends `signal` to the broker (it stays this cluster's: `kill_broker` reaps it).
    pub fn signal_broker(&self, signal: i32) {
        if let Some(broker) = &self.broker {
            // SAFETY: a signal to a child process this cluster started and has not reaped.
            unsafe {
                libc::kill(broker.id() as i32, signal);
            }
        }
    }

    /// Stops the broker as a supervisor does (SIGTERM) and waits for it to exit.
    pub fn stop_broker(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            // SAFETY: a signal to a child process this cluster started and has not reaped.
            unsafe {
                libc::kill(broker.id() as i32, libc::SIGTERM);
            }
            let stopped = poll_until(Duration::from_secs(20), || broker.try_wait().ok().flatten());
            if stopped.is_none() {
                let _ = broker.kill();
                let _ = broker.wait();
                panic!("the broker did not stop within 20 s of SIGTERM");
            }
        }
    }

    pub fn kill_broker(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            let _ = broker.kill();
            let _ = broker.wait();
        }
    }

    /// Starts worker `id` with the given extra flags, and waits until the broker lists it
    /// as online.
    pub fn start_worker(&mut self, id: &str, extra: &[&str]) -> usize {
        let index = self.spawn_worker(id, extra);
        self.wait_online(id);
        index
    }

    pub fn spawn_worker(&mut self, id: &str, extra: &[&str]) -> usize {
        assert!(
            self.worker_ids.iter().any(|w| w == id),
            "worker {id} has no key"
        );
        self.spawn_worker_unchecked(id, extra)
    }

    /// Starts worker `id` whether or not the broker has a key for it (to see a refusal).
    pub fn spawn_worker_unchecked(&mut self, id: &str, extra: &[&str]) -> usize {
        let (router, publish) = (self.router.clone(), self.publish.clone());
        self.spawn_worker_to(id, &router, &publish, &worker_secret(id), extra)
    }

    /// Starts worker `id` with a secret of the test's choosing (a rotated key).
    pub fn spawn_worker_with_secret(&mut self, id: &str, secret: &str, extra: &[&str]) -> usize {
        let (router, publish) = (self.router.clone(), self.publish.clone());
        self.spawn_worker_to(id, &router, &publish, secret, extra)
    }

    /// Starts worker `id` connecting to the broker through other endpoints (a relay).
    pub fn spawn_worker_to(
        &mut self,
        id: &str,
        router: &str,
        publish: &str,
        secret: &str,
        extra: &[&str],
    ) -> usize {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{id}.log")))
            .expect("worker log");
        let child = Command::new(bin("jobcast-worker"))
            .envs(self.host_env.iter().map(|(k, v)| (k, v)))
            .args(["--id", id, "--broker", router, "--events", publish])
            .args(["--secret", secret])
            .arg("--script-temp-path")
            .arg(self.path(&format!("{id}-scripts")))
            .args(["--reconnect-after-inactivity", "3s", "--kill-grace", "2s"])
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start worker");
        self.workers.push(Worker {
            id: id.to_string(),
            child,
        });
        self.workers.len() - 1
    }

    pub fn worker_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{id}.log"))).unwrap_or_default()
    }

    pub fn wait_online(&self, id: &str) {
        wait_for(
            &format!("worker {id} online"),
            Duration::from_secs(20),
            || {
                let status = self.ctl_json(&["status"])?;
                status["workers"]
                    .as_array()?
                    .iter()
                    .any(|w| w["id"] == id && w["online"] == true)
                    .then_some(())
            },
        );
    }

    /// Runs jobcastctl against this cluster.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("jobcastctl"))
            .envs(self.host_env.iter().map(|(k, v)| (k, v)))
            .args(["--broker", &self.router, "--timeout", "5s"])
            .args(args)
            .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
            .stdin(Stdio::null())
            .output()
            .expect("run jobcastctl")
    }

    /// Runs jobcastctl and parses its `--json` output; `None` if it failed.
    pub fn ctl_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Like `ctl`, but panics unless it succeeds; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "jobcastctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a jobs file whose jobs all carry this cluster's tag, and applies it.
    pub fn apply_jobs(&self, toml: &str) {
        let mut text = String::new();
        for line in toml.lines() {
            text.push_str(line);
            text.push('\n');
            if line.starts_with("[jobs.") {
                text.push_str(&format!("env.JOBCAST_TEST_TAG = \"{}\"\n", self.tag));
            }
        }
        let path = self.path("jobs.toml");
        std::fs::write(&path, text).expect("write jobs");
        self.ctl_ok(&["apply", &path.to_string_lossy()]);
    }

    pub fn enqueue(&self, job: &str) -> String {
        let run = self.ctl_json(&["enqueue", job]).expect("enqueue");
        run["id"].as_str().expect("run id").to_string()
    }

    /// The run with this id, if the broker has it.
    pub fn run(&self, id: &str) -> Option<Value> {
        self.runs().into_iter().find(|r| r["id"] == id)
    }

    /// Every run, newest first. Panics if jobcastctl fails, so that an assertion about
    /// runs (none, one, unchanged) can never pass on an empty answer to a failed call.
    /// Every stored run, newest first, however many: pages through the HTTP API.
    pub fn all_runs(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before = String::new();
        loop {
            let (status, body) = self.api(
                "GET",
                &format!("/api/v1/runs?limit=1000{before}"),
                Some(VIEWER_TOKEN),
            );
            assert_eq!(status, 200, "{body}");
            let page: Vec<Value> = match serde_json::from_str(&body) {
                Ok(Value::Array(runs)) => runs,
                other => panic!("the runs API answered {other:?}"),
            };
            let Some(last) = page.last().and_then(|r| r["seq"].as_u64()) else {
                return all;
            };
            before = format!("&before={last}");
            all.extend(page);
        }
    }

    pub fn runs(&self) -> Vec<Value> {
        let out = self.ctl_ok(&["--json", "runs", "--limit", "10000"]);
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(runs)) => runs,
            other => panic!("jobcastctl runs printed {other:?}"),
        }
    }

    /// Waits until run `id` is in `state` and returns it.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        wait_for(&format!("run {id} to be {state}"), timeout, || {
            self.run(id).filter(|r| r["state"] == state)
        })
    }

    pub fn log(&self, id: &str) -> Vec<u8> {
        let out = self.ctl(&["logs", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Calls the HTTP API: returns the status and the body.
    pub fn api(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        self.api_with_body(method, path, token, None)
    }

    pub fn api_with_body(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        self.api_request(method, path, token, &[], body)
    }

    /// An API call with extra headers.
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let (status, _, text) = self.api_exchange(method, path, token, headers, body);
        (status, text)
    }

    /// An API call: its status, the response's headers (names lower-case) and body.
    pub fn api_exchange(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, Vec<(String, String)>, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let url = format!("{}{path}", self.http);
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" => {
                let mut request = agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.call()
            }
            "POST" => {
                let mut request = agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.send(body.unwrap_or_default())
            }
            other => panic!("method {other}"),
        };
        let mut response = response.expect("HTTP request");
        let status = response.status().as_u16();
        let returned = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    value.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, returned, text)
    }

    /// Pids of live processes started by this cluster's runs.
    pub fn tagged_processes(&self) -> Vec<i32> {
        jobcast_worker::procfs::processes_with_env("JOBCAST_TEST_TAG", &self.tag)
    }
}

pub use jobcast_worker::procfs::{is_alive, rss_bytes};

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What a failed test needs to be understood from CI's output alone.
            let log = self.broker_log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the broker's log (start {}, last 40 lines) ---\n{}",
                self.broker_starts,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
            for id in &self.worker_ids {
                let log = self.worker_log(id);
                let lines: Vec<&str> = log.lines().collect();
                if !lines.is_empty() {
                    eprintln!(
                        "--- worker {id}'s log (last 20 lines) ---\n{}",
                        lines[lines.len().saturating_sub(20)..].join("\n")
                    );
                }
            }
        }
        for worker in &mut self.workers {
            // A stopped worker must be continued before it can die.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(worker.child.id() as i32, libc::SIGCONT);
            }
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
        self.kill_broker();
        // Run cgroups a killed worker left (where it made them): emptied, then removed.
        if let Some(mount) = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|info| jobcast_worker::cgroup::v2_mount(&info))
        {
            for id in &self.worker_ids {
                let scripts = self.path(&format!("{id}-scripts"));
                let dir = mount.join(jobcast_worker::cgroup::runs_dir_name(id, &scripts));
                // The cgroups are the subdirectories (beside the control files).
                let runs = std::fs::read_dir(&dir).into_iter().flatten().flatten();
                for run in runs.filter(|entry| entry.path().is_dir()) {
                    let _ = std::fs::write(run.path().join("cgroup.kill"), "1");
                    for _ in 0..100 {
                        if std::fs::remove_dir(run.path()).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        for pid in self.tagged_processes() {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if std::env::var_os("JOBCAST_KEEP_TEST_DIRS").is_some() {
            let path = self.dir.path().to_path_buf();
            eprintln!("keeping {}", path.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temp dir"),
            ));
        }
    }
}

/// A broker process beside the cluster's own, on the same settings (and database), on
/// ports of its own; killed when dropped.
pub struct ExtraBroker {
    child: Child,
    pub router: String,
    pub publish: String,
    /// `http://host:port`.
    pub http: String,
    log: PathBuf,
}

impl ExtraBroker {
    /// On ports the system picks.
    pub fn start(cluster: &Cluster, name: &str) -> ExtraBroker {
        Self::start_at(
            cluster,
            name,
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:0",
            "127.0.0.1:0",
        )
    }

    /// On the endpoints given (a broker started again where it was).
    pub fn start_at(
        cluster: &Cluster,
        name: &str,
        router: &str,
        publish: &str,
        http: &str,
    ) -> ExtraBroker {
        Self::start_with(cluster, name, [router, publish, http], &[])
    }

    /// On ports the system picks, with `args` after the cluster's settings (e.g. another
    /// `--postgres-url`).
    pub fn start_with_args(cluster: &Cluster, name: &str, args: &[&str]) -> ExtraBroker {
        Self::start_with(
            cluster,
            name,
            ["tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "127.0.0.1:0"],
            args,
        )
    }

    /// On the endpoints given, with `args` after the cluster's settings.
    pub fn start_with(
        cluster: &Cluster,
        name: &str,
        [router, publish, http]: [&str; 3],
        args: &[&str],
    ) -> ExtraBroker {
        let ready = cluster.path(&format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        // Appended to: a broker started again under the same name keeps one log.
        let log = cluster.path(&format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("a log file");
        let child = Command::new(bin("jobcast-broker"))
            .arg("--config")
            .arg(cluster.path("broker.toml"))
            .args(["--router", router, "--publish", publish])
            .args(["--http", http, "--log-level", "info"])
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start a broker");
        let mut broker = ExtraBroker {
            child,
            router: String::new(),
            publish: String::new(),
            http: String::new(),
            log,
        };
        let text = wait_for(
            &format!("broker {name} to listen"),
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    panic!("broker {name} exited: {status}\n{}", broker.log());
                }
                std::fs::read_to_string(&ready).ok()
            },
        );
        let value = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{key} = ")))
                .map(|value| value.trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("{key} in the ready file:\n{text}"))
        };
        broker.router = value("router");
        broker.publish = value("publish");
        broker.http = format!("http://{}", value("http"));
        broker
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: a signal to a child process this test started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExtraBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL with one database for a broker's store, and the settings line
/// that points a cluster's broker at it (`Cluster::start_configured`).
pub struct PostgresStore {
    pub server: jobcast_test_postgres::TestPostgres,
    pub url: String,
    password_file: tempfile::NamedTempFile,
}

impl PostgresStore {
    /// `None` only where the host has no PostgreSQL and the tests were told to skip it.
    pub fn start() -> Option<PostgresStore> {
        let server = jobcast_test_postgres::TestPostgres::start()?;
        let url = server.create_database("jobcast");
        let password_file = tempfile::NamedTempFile::new().expect("a password file");
        std::fs::write(password_file.path(), jobcast_test_postgres::PASSWORD)
            .expect("write the password file");
        Some(PostgresStore {
            server,
            url,
            password_file,
        })
    }

    /// The broker's `[postgres]` settings, as one top-level line. A short lease: a
    /// broker killed by a test is followed by the next within a second.
    pub fn settings(&self) -> String {
        format!(
            "postgres = {{ url = \"{}\", password_file = \"{}\", lease = \"1s\" }}",
            self.url,
            self.password_file.path().display()
        )
    }

    /// A relay in front of the database (that a test can cut), and the database's URL
    /// through it.
    pub fn relayed(&self) -> (relay::Relay, String) {
        let (before_port, rest) = self.url.rsplit_once(':').expect("the URL has a port");
        let (port, path) = rest.split_once('/').unwrap_or((rest, ""));
        let relay = relay::Relay::start(&format!("127.0.0.1:{port}"));
        let relay_port = relay.endpoint.rsplit(':').next().unwrap_or_default();
        let url = format!("{before_port}:{relay_port}/{path}");
        (relay, url)
    }

    /// Runs `sql` on the broker's database; its output.
    pub fn query(&self, sql: &str) -> String {
        self.server.psql("jobcast", sql)
    }
}
