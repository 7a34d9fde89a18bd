//! The schema's versions: files `broker/migrations/NNNN_name.sql`, built into the binary,
//! applied in order at open, each in one transaction with its row in `jobcast_schema`.
//! Brokers starting together take turns (a transaction-scoped advisory lock, released at
//! commit). A database at a version this binary does not know is refused by name: it was
//! migrated by a newer broker, and an older one must not write into it.

use super::connection::{engine_error, Connection};
use crate::store::StoreResult;

/// Every migration this binary knows, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "leader",
        include_str!("../../../migrations/0002_leader.sql"),
    ),
    (
        3,
        "brokers",
        include_str!("../../../migrations/0003_brokers.sql"),
    ),
    (
        4,
        "marked_runs",
        include_str!("../../../migrations/0004_marked_runs.sql"),
    ),
];

/// The schema version this binary writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

/// An arbitrary key for the advisory lock the migrations take turns on ("jobcast" in
/// ASCII).
const MIGRATION_LOCK: i64 = 0x006a_6f62_6361_7374;

/// Brings the database up to [`latest`]; the versions applied. An error if it is
/// already past it.
pub fn migrate(connection: &Connection) -> StoreResult<Vec<i32>> {
    let applied = connection.call(|session| {
        Box::pin(async move {
            let mut applied = Vec::new();
            let transaction = session.client.transaction().await?;
            transaction
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            transaction
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS jobcast_schema (
                         version    integer     PRIMARY KEY,
                         name       text        NOT NULL,
                         applied_at timestamptz NOT NULL DEFAULT now()
                     )",
                )
                .await?;
            let current: i32 = transaction
                .query_one("SELECT coalesce(max(version), 0) FROM jobcast_schema", &[])
                .await?
                .get(0);
            if current > latest() {
                return Ok(Err(current));
            }
            for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
                transaction.batch_execute(sql).await?;
                transaction
                    .execute(
                        "INSERT INTO jobcast_schema (version, name) VALUES ($1, $2)",
                        &[version, name],
                    )
                    .await?;
                applied.push(*version);
            }
            transaction.commit().await?;
            Ok(Ok(applied))
        })
    })?;
    applied.map_err(|current| {
        engine_error(&format!(
            "the database's schema is at version {current}, newer than this broker knows \
             (version {}): it was migrated by a newer jobcast-broker; run that version",
            latest()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps_and_named_as_their_files() {
        for (index, (version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, index as i32 + 1);
            assert!(!name.is_empty() && !sql.trim().is_empty());
        }
        let files: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        assert_eq!(
            files.len(),
            MIGRATIONS.len(),
            "every file is listed: {files:?}"
        );
        for (version, name, _) in MIGRATIONS {
            let file = format!("{version:04}_{name}.sql");
            assert!(files.contains(&file), "{file} is in broker/migrations");
        }
    }
}
