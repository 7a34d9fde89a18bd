//! The broker on PostgreSQL: a server of the host's own (started here, in a temporary
//! directory, stopped at the end), `pgbench -N -c 8 -j 2` on it for the yardstick, then
//! the capacity and dispatch-latency parts with the broker's records in it.

use crate::harness::{use_postgres, PostgresUnderTest};
use anyhow::{bail, Context, Result};
use std::time::Duration;

pub async fn postgres(runs: usize, latency_runs: usize, pgbench_time: Duration) -> Result<()> {
    let server = jobcast_test_postgres::TestPostgres::start()
        .context("no PostgreSQL on this host (Debian's `postgresql` package)")?;
    let url = server.create_database("jobcast");
    let password = tempfile::NamedTempFile::new()?;
    std::fs::write(password.path(), jobcast_test_postgres::PASSWORD)?;
    let version = server.psql("jobcast", "SHOW server_version");
    let fsync = server.psql("jobcast", "SHOW synchronous_commit");
    println!("PostgreSQL {version} on this host, synchronous_commit = {fsync}, one database for pgbench and the broker");

    let init = server.client("pgbench", "jobcast", &["-i", "-q"]);
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let seconds = pgbench_time.as_secs().max(1).to_string();
    let machine_before = crate::machine::busy();
    let run = server.client(
        "pgbench",
        "jobcast",
        &["-N", "-c", "8", "-j", "2", "-T", &seconds],
    );
    let machine_after = crate::machine::busy();
    let output = String::from_utf8_lossy(&run.stdout);
    let tps = output
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .with_context(|| {
            format!(
                "no tps in pgbench's output: {output}{}",
                String::from_utf8_lossy(&run.stderr)
            )
        })?;
    println!();
    println!("| pgbench -N -c 8 -j 2 -T {seconds} | {tps:.0} tps |");
    // What a transaction cost the machine in all: 3 × its rate asks a run to cost a
    // third of that, where both are limited by these cores.
    let transactions = tps * pgbench_time.as_secs().max(1) as f64;
    println!(
        "| machine CPU per pgbench transaction (every process and the kernel) | {} |",
        crate::machine::per_unit(machine_before, machine_after, transactions)
    );
    println!();
    use_postgres(PostgresUnderTest {
        settings: format!(
            "postgres = {{ url = \"{url}\", password_file = \"{}\" }}",
            password.path().display()
        ),
        pgbench_tps: tps,
    })?;
    crate::throughput::capacity(runs, 2).await?;
    // What the database did for those runs (statistics reach the view within a second of
    // the broker's connection going idle).
    let versions = server.psql(
        "jobcast",
        "SELECT n_tup_ins || ' inserted, ' || n_tup_upd || ' updated (' || n_tup_hot_upd || ' in place)' \
         FROM pg_stat_user_tables WHERE relname = 'jobcast_runs'",
    );
    println!("| row versions of jobcast_runs | {versions} |");
    println!();
    crate::latency::latency(latency_runs).await?;
    drop(server);
    Ok(())
}
