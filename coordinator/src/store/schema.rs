//! The database schema as an ordered list of migrations, and the code that applies them.
//!
//! The `schema_version` table holds one row per applied migration. Opening a database applies,
//! in order and each in its own transaction, every migration whose version is not recorded yet;
//! a database recording a version newer than [`LATEST_VERSION`] is refused, because this code
//! cannot know what the newer one changed.
//!
//! Migrations are append-only: a released migration is never edited, a change is a new entry.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// 1, 2, 3, ... without gaps.
    pub(crate) version: u32,
    /// A short name for errors and logs.
    pub(crate) name: &'static str,
    /// The statements, run in one transaction.
    pub(crate) sql: &'static str,
}

/// Every migration, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "nodes and enrollment tokens",
        sql: "
            CREATE TABLE nodes (
                id                TEXT PRIMARY KEY NOT NULL,
                hostname          TEXT NOT NULL,
                agent_version     TEXT NOT NULL,
                inventory_json    TEXT,
                enrolled_at_ms    INTEGER NOT NULL,
                last_seen_at_ms   INTEGER,
                clock_skew_ms     INTEGER,
                cert_serial       BLOB NOT NULL,
                cert_not_after_ms INTEGER NOT NULL,
                deleted_at_ms     INTEGER
            ) STRICT;
            CREATE INDEX nodes_deleted ON nodes (deleted_at_ms) WHERE deleted_at_ms IS NOT NULL;
            CREATE TABLE enrollment_tokens (
                id            TEXT PRIMARY KEY NOT NULL,
                secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
                description   TEXT NOT NULL,
                created_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                used_at_ms    INTEGER,
                used_by_node  TEXT REFERENCES nodes (id),
                CHECK ((used_at_ms IS NULL) = (used_by_node IS NULL))
            ) STRICT;
        ",
    },
    Migration {
        version: 2,
        name: "api tokens",
        sql: "
            CREATE TABLE api_tokens (
                sha256        BLOB PRIMARY KEY NOT NULL CHECK (length(sha256) = 32),
                name          TEXT NOT NULL UNIQUE,
                role          TEXT NOT NULL,
                created_at_ms INTEGER NOT NULL
            ) STRICT;
        ",
    },
];

/// The schema version this code creates and understands.
pub const LATEST_VERSION: u32 = match MIGRATIONS.last() {
    Some(m) => m.version,
    None => 0,
};

/// Brings the database up to `target` (normally [`LATEST_VERSION`]); returns the version it
/// is at afterwards.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, target: u32) -> Result<u32, StoreError> {
    let version_error = |source| StoreError::SchemaVersion {
        path: path.to_path_buf(),
        source,
    };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY NOT NULL) STRICT",
    )
    .map_err(version_error)?;
    let found = current_version(conn).map_err(version_error)?;
    if found > LATEST_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: LATEST_VERSION,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version <= target) {
        apply_one(conn, path, migration)?;
    }
    current_version(conn).map_err(version_error)
}

/// Applies `migration` in its own transaction unless it is already recorded.
fn apply_one(conn: &mut Connection, path: &Path, migration: &Migration) -> Result<(), StoreError> {
    let failed = |source| StoreError::Migrate {
        path: path.to_path_buf(),
        version: migration.version,
        name: migration.name,
        source,
    };
    // IMMEDIATE: take the write lock before checking, so two processes opening the same file
    // cannot both decide to apply the same migration.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let applied: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_version WHERE version = ?1)",
            [migration.version],
            |row| row.get(0),
        )
        .map_err(failed)?;
    if applied {
        return Ok(());
    }
    tx.execute_batch(migration.sql).map_err(failed)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [migration.version],
    )
    .map_err(failed)?;
    tx.commit().map_err(failed)?;
    tracing::info!(
        path = %path.display(),
        version = migration.version,
        name = migration.name,
        "applied schema migration"
    );
    Ok(())
}

/// The highest version recorded in `schema_version`, 0 for a fresh database.
pub(crate) fn current_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_without_gaps() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(migration.version).unwrap(), i + 1);
        }
        assert_eq!(LATEST_VERSION, MIGRATIONS.last().unwrap().version);
    }
}
