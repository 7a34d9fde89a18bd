//! Failover under load: three brokers on one PostgreSQL (started by the test), workers
//! that know all three, jobs firing every second and an enqueue storm, while the leader
//! is killed (SIGKILL), stalled past its lease (SIGSTOP), cut from the database by a
//! relay that holds its bytes (then lets them through), and the database restarted as a
//! crash would. Then, from the database's answers and the runs' own ledger: every fire
//! time of every job is exactly one run (the jobs say `misfire = "all"`: ticks that fell
//! while no broker acted are caught up, once), no run executed twice, every acknowledged
//! enqueue one run.
//!
//! Short by default (CI); `JOBCAST_FAILOVER_FULL=1` runs the full length: 100 jobs,
//! 10 workers, 20 kills, 5 stalls, 3 database restarts (docs/RELIABILITY.md); both cut
//! the leader from the database once.

use jobcast_integration_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// A place for a broker: fixed endpoints, so that one started again is where the
/// workers' lists say it is.
struct Slot {
    name: String,
    router: String,
    publish: String,
    http: String,
    /// Flags after the cluster's settings (another way to the database).
    args: Vec<String>,
    process: Option<ExtraBroker>,
}

impl Slot {
    fn start(&mut self, cluster: &Cluster) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = Some(ExtraBroker::start_with(
            cluster,
            &self.name,
            [&self.router, &self.publish, &self.http],
            &args,
        ));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The lease row: (epoch, router of the holder, whether it is held now).
fn lease(postgres: &PostgresStore) -> (u64, String, bool) {
    let row = postgres.query(
        "SELECT epoch || ' ' || router || ' ' || (holder <> '' AND expires_at > clock_timestamp()) FROM jobcast_leader",
    );
    let mut parts = row.split_whitespace();
    let epoch = parts.next().and_then(|e| e.parse().ok()).unwrap_or(0);
    let router = parts.next().unwrap_or_default().to_string();
    let held = matches!(parts.next(), Some("t" | "true"));
    (epoch, router, held)
}

/// Waits until a broker holds a lease of an epoch above `above`; that epoch and the
/// holder's router.
fn until_led(postgres: &PostgresStore, above: u64) -> (u64, String) {
    wait_for("a broker to lead", LONG, || {
        let (epoch, router, held) = lease(postgres);
        (held && epoch > above).then_some((epoch, router))
    })
}

#[test]
fn failover_under_load_loses_and_repeats_nothing() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let full = std::env::var("JOBCAST_FAILOVER_FULL").is_ok_and(|v| v == "1");
    let (jobs, workers, kills, stalls, restarts) = if full {
        (100, 10, 20, 5, 3)
    } else {
        (10, 3, 3, 1, 1)
    };
    let mut chaos = Chaos::from_env(0xfa11);
    let mut cluster = Cluster::start_configured(workers, &[], &[], &postgres.settings());
    let ledger = cluster.path("ledger");
    let script = format!(
        "script = \"\"\"#!/bin/sh\necho \"$JOBCAST_RUN_ID\" >> {}\n\"\"\"\n",
        ledger.display()
    );
    let mut jobs_file = format!("[jobs.storm]\noverlap = \"allow\"\n{script}");
    for n in 0..jobs {
        jobs_file.push_str(&format!(
            "[jobs.tick-{n}]\nevery = \"1s\"\npool = \"ticks\"\nmisfire = \"all\"\noverlap = \"allow\"\n{script}"
        ));
    }
    cluster.apply_jobs(&jobs_file);
    // The cluster's own broker hands over to the three that stay.
    cluster.signal_broker(libc::SIGTERM);
    // b3 reaches the database through a relay the test cuts.
    let (relay, through_relay) = postgres.relayed();
    let mut slots: Vec<Slot> = ["b1", "b2", "b3"]
        .into_iter()
        .map(|name| Slot {
            name: name.to_string(),
            router: format!("tcp://127.0.0.1:{}", free_port()),
            publish: format!("tcp://127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            args: match name {
                "b3" => vec!["--postgres-url".into(), through_relay.clone()],
                _ => Vec::new(),
            },
            process: None,
        })
        .collect();
    const RELAYED: usize = 2;
    for slot in &mut slots {
        slot.start(&cluster);
    }
    let routers: Vec<String> = slots.iter().map(|s| s.router.clone()).collect();
    let events: Vec<String> = slots.iter().map(|s| s.publish.clone()).collect();
    let (routers, events) = (routers.join(","), events.join(","));
    // jobcastctl asks the three; the leader answers.
    cluster.router = routers.clone();
    for n in 1..=workers {
        let id = format!("w{n}");
        cluster.spawn_worker_to(
            &id,
            &routers,
            &events,
            &worker_secret(&id),
            &["--concurrency", "8", "--pools", "default,ticks"],
        );
        cluster.wait_online(&id);
    }

    // The storm: one enqueue after another, each under its own key, asked again with the
    // same key until it is acknowledged.
    let storming = Arc::new(AtomicBool::new(true));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let storm = std::thread::spawn({
        let (storming, acknowledged) = (storming.clone(), acknowledged.clone());
        let routers = routers.clone();
        move || {
            let mut n = 0;
            let mut asked_again = 0;
            while storming.load(Ordering::Relaxed) {
                let key = format!("storm-{n}");
                let out = Command::new(bin("jobcastctl"))
                    .args(["--broker", &routers, "--timeout", "3s"])
                    .args(["enqueue", "storm", "--key", &key])
                    .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
                    .stdin(Stdio::null())
                    .output()
                    .expect("run jobcastctl");
                if out.status.success() {
                    acknowledged.lock().expect("the keys").push(key);
                    n += 1;
                } else {
                    asked_again += 1;
                }
            }
            asked_again
        }
    });

    let (mut epoch, _) = until_led(&postgres, 0);
    let started = Instant::now();
    let mut takeovers = Vec::new();
    let leader_slot = |slots: &[Slot], router: &str| {
        slots
            .iter()
            .position(|slot| slot.router == router)
            .expect("the leader is one of the three")
    };
    for round in 0..kills {
        std::thread::sleep(chaos.next_pause(Duration::from_millis(500), Duration::from_secs(2)));
        let (_, router) = until_led(&postgres, epoch - 1);
        let index = leader_slot(&slots, &router);
        let killed = Instant::now();
        if let Some(process) = &slots[index].process {
            process.signal(libc::SIGKILL);
        }
        slots[index].process = None;
        slots[index].start(&cluster);
        let (next, _) = until_led(&postgres, epoch);
        takeovers.push(killed.elapsed());
        eprintln!(
            "kill {round}: {} killed, epoch {next} after {:?}",
            slots[index].name,
            killed.elapsed()
        );
        epoch = next;
    }
    for round in 0..stalls {
        std::thread::sleep(chaos.next_pause(Duration::from_millis(500), Duration::from_secs(2)));
        let (_, router) = until_led(&postgres, epoch - 1);
        let index = leader_slot(&slots, &router);
        let process = slots[index].process.as_ref().expect("the leader runs");
        let stalled = Instant::now();
        process.signal(libc::SIGSTOP);
        let (next, _) = until_led(&postgres, epoch);
        takeovers.push(stalled.elapsed());
        process.signal(libc::SIGCONT);
        eprintln!(
            "stall {round}: {} stopped, epoch {next} after {:?}",
            slots[index].name,
            stalled.elapsed()
        );
        epoch = next;
    }
    // The cut: b3 is made the leader (the other standby held still while the leader
    // hands over), then cut from the database. It stops acting by its own clock, another
    // takes over, and what the relay held reaches the database once healed, where the
    // fence refuses it.
    {
        std::thread::sleep(chaos.next_pause(Duration::from_millis(500), Duration::from_secs(2)));
        let (_, router) = until_led(&postgres, epoch - 1);
        let index = leader_slot(&slots, &router);
        if index != RELAYED {
            let other = 3 - index - RELAYED;
            let held = slots[other].process.as_ref().expect("the standby runs");
            held.signal(libc::SIGSTOP);
            if let Some(process) = &slots[index].process {
                process.signal(libc::SIGTERM);
            }
            let (next, router) = until_led(&postgres, epoch);
            slots[other]
                .process
                .as_ref()
                .expect("the standby runs")
                .signal(libc::SIGCONT);
            assert_eq!(router, slots[RELAYED].router, "b3 took over");
            slots[index].process = None;
            slots[index].start(&cluster);
            epoch = next;
        }
        let cut = Instant::now();
        relay.cut();
        let (next, router) = until_led(&postgres, epoch);
        assert_ne!(router, slots[RELAYED].router, "another broker took over");
        takeovers.push(cut.elapsed());
        // It says so: its /healthz stops answering 200 (load balancers move away).
        let healthz = format!("http://{}/healthz", slots[RELAYED].http);
        wait_for("b3 to say it no longer acts", LONG, || {
            let answer = ureq::get(&healthz)
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .ok()?;
            (answer.status().as_u16() == 503).then_some(())
        });
        relay.heal();
        eprintln!(
            "cut: b3 cut from the database, epoch {next} after {:?}",
            cut.elapsed()
        );
        epoch = next;
    }
    for round in 0..restarts {
        std::thread::sleep(chaos.next_pause(Duration::from_millis(500), Duration::from_secs(2)));
        postgres.server.stop_immediate();
        std::thread::sleep(chaos.next_pause(Duration::from_millis(200), Duration::from_secs(1)));
        postgres.server.start_again();
        let (next, _) = until_led(&postgres, epoch.saturating_sub(1));
        eprintln!("database restart {round}: epoch {next}");
        epoch = next;
    }
    storming.store(false, Ordering::Relaxed);
    let asked_again = storm.join().expect("the storm");
    // The ticks stop; everything already there ends.
    cluster.ctl_ok(&["disable", "--pool", "ticks"]);
    wait_for("every run to end", LONG, || {
        let status = cluster.ctl_json(&["status"])?;
        status["active"].as_object()?.is_empty().then_some(())
    });
    let (_, router) = until_led(&postgres, 0);
    let leader = &slots[leader_slot(&slots, &router)];
    cluster.http = format!("http://{}", leader.http);
    let runs = cluster.all_runs();
    let acknowledged = acknowledged.lock().expect("the keys").clone();
    eprintln!(
        "{:?} of chaos: {} runs, {} enqueues acknowledged ({asked_again} asked again), takeovers {:?}",
        started.elapsed(),
        runs.len(),
        acknowledged.len(),
        takeovers
    );

    // Every fire time of every job once, none missing between its first and last.
    let mut fired: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for run in &runs {
        let job = run["job"].as_str().unwrap_or_default();
        if job.starts_with("tick-") {
            fired
                .entry(job.to_string())
                .or_default()
                .push(run["scheduled_at_ms"].as_u64().expect("a scheduled time"));
        }
    }
    assert_eq!(fired.len(), jobs, "every job fired");
    for (job, mut times) in fired {
        times.sort_unstable();
        for pair in times.windows(2) {
            assert_ne!(pair[0], pair[1], "{job} fired twice for {}", pair[0]);
            assert_eq!(
                pair[1] - pair[0],
                1_000,
                "{job}: no run for the ticks between {} and {}",
                pair[0],
                pair[1]
            );
        }
    }
    // Every acknowledged enqueue one run.
    let storm_runs = runs.iter().filter(|run| run["job"] == "storm").count();
    assert_eq!(
        storm_runs,
        acknowledged.len(),
        "one run per acknowledged enqueue"
    );
    // No run executed twice, and every run that succeeded executed.
    let text = std::fs::read_to_string(&ledger).expect("the ledger");
    let mut executed = BTreeSet::new();
    for line in text.lines() {
        assert!(
            executed.insert(line.to_string()),
            "run {line} executed twice"
        );
    }
    let states: BTreeMap<&str, usize> = runs.iter().fold(BTreeMap::new(), |mut m, run| {
        *m.entry(run["state"].as_str().unwrap_or("?")).or_default() += 1;
        m
    });
    for run in &runs {
        if run["state"] == "succeeded" {
            let id = run["id"].as_str().unwrap_or_default();
            assert!(
                executed.contains(id),
                "run {id} succeeded but never ran: {states:?}"
            );
        }
    }
    eprintln!("runs by state: {states:?}");
}
