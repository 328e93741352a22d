//! The coordinator's durable state: one SQLite file, written only through [`Command`]s.
//!
//! This module owns the database file, its schema and every mutation of it:
//!
//! - `schema`: the ordered list of migrations and the `schema_version` table;
//! - [`command`]: the [`Command`] values and [`apply`], the one deterministic function that
//!   turns a command into row changes;
//! - `writer`: the single thread that owns the write connection and group-commits commands;
//! - [`read`]: the queries, run on their own read-only connections, never through the writer.
//!
//! # Design
//! One writer thread, one transaction per batch of queued commands, one SAVEPOINT per command,
//! and a reply to each caller only after the batch's COMMIT returned (with `synchronous=FULL`,
//! so an acknowledged command survives power loss). `apply` reads no clock and no randomness, so
//! the same command sequence gives the same database on every replica. The reasons are written
//! down in `DESIGN.md` beside this file.
//!
//! # Limitations
//! One process per database file: the writer assumes nobody else writes (another writer only
//! makes it wait, up to [`BUSY_TIMEOUT`]). Dropping the future returned by [`Store::execute`]
//! after it was polled does not cancel the command: it may still be committed.

pub mod command;
pub mod read;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::Value;
use tokio::sync::{mpsc, oneshot};

pub use command::{ApplyError, Command, CommandKind, Outcome, Subject, apply};
pub use read::{ApiTokenRecord, NodeRecord, ReadQuery, TokenRecord};
pub use schema::LATEST_VERSION as SCHEMA_VERSION;

use read::ReadPool;
use writer::{Counters, Job};

/// How long any connection waits for a lock held by another connection before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything that can go wrong in the store, naming the file, query or command involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened.
    #[error("opening database {}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A connection setting could not be applied.
    #[error("setting pragma {pragma} on {}", .path.display())]
    Configure {
        /// The database file.
        path: PathBuf,
        /// The pragma being set.
        pragma: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// SQLite accepted a setting but reads back another value (e.g. no WAL on this filesystem).
    #[error("pragma {pragma} on {} reads {found:?} after setting it, expected {wanted:?}", .path.display())]
    PragmaNotApplied {
        /// The database file.
        path: PathBuf,
        /// The pragma.
        pragma: &'static str,
        /// The value required.
        wanted: &'static str,
        /// The value SQLite reports.
        found: String,
    },
    /// The `schema_version` table could not be created or read.
    #[error("reading the schema version of {}", .path.display())]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A migration failed; its transaction was rolled back.
    #[error("applying schema migration {version} ({name}) to {}", .path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer coordinator; opening it could corrupt it.
    #[error(
        "database {} has schema version {found}, newer than version {supported}, the latest this coordinator knows",
        .path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version recorded in the file.
        found: u32,
        /// The latest version this code knows.
        supported: u32,
    },
    /// The writer thread could not be started.
    #[error("starting the store writer thread")]
    SpawnWriter {
        /// What the OS said.
        source: std::io::Error,
    },
    /// The writer thread is gone, so the command's fate is unknown to this caller.
    #[error("the store writer thread has stopped")]
    WriterGone,
    /// The writer thread panicked.
    #[error("the store writer thread panicked")]
    WriterPanicked,
    /// The command was refused by the domain rules or failed alone (its savepoint rolled back);
    /// the rest of its batch was committed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The batch transaction could not be committed: no command of the batch was applied.
    #[error("group commit of {commands} commands failed while {stage}; none was applied")]
    BatchFailed {
        /// The step that failed.
        stage: BatchStage,
        /// How many commands the batch held.
        commands: usize,
        /// What SQLite said (shared by every command of the batch).
        source: Arc<rusqlite::Error>,
    },
    /// A read query failed.
    #[error("reading {query}")]
    Read {
        /// The query, with the id it was about.
        query: ReadQuery,
        /// What SQLite said (a malformed stored id or inventory shows up here as a conversion
        /// failure).
        source: rusqlite::Error,
    },
    /// The blocking task running a read did not finish (runtime shutting down).
    #[error("read task did not finish")]
    ReadTask {
        /// What tokio said.
        source: tokio::task::JoinError,
    },
}

/// The step of a group commit that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStage {
    /// `BEGIN IMMEDIATE`.
    Begin,
    /// Opening a command's savepoint.
    Savepoint,
    /// Releasing a command's savepoint after it applied.
    Release,
    /// Rolling back a refused command's savepoint.
    Rollback,
    /// Applying a command (SQLite rolled back the whole transaction).
    Apply,
    /// `COMMIT`.
    Commit,
}

impl fmt::Display for BatchStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BatchStage::Begin => "beginning the transaction",
            BatchStage::Savepoint => "opening a command savepoint",
            BatchStage::Release => "releasing a command savepoint",
            BatchStage::Rollback => "rolling back a refused command",
            BatchStage::Apply => "applying a command",
            BatchStage::Commit => "committing",
        })
    }
}

/// Counters of the writer, since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (one per batch).
    pub commits: u64,
    /// Commands applied and acknowledged as committed.
    pub commands: u64,
    /// Commands answered with an [`ApplyError`] (their batch-mates were still committed).
    pub refused: u64,
    /// Batches that failed as a whole (every command got [`StoreError::BatchFailed`]).
    pub failed_batches: u64,
}

/// The settings in force on the live write connection, as SQLite reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSettings {
    /// `PRAGMA journal_mode` (`wal`).
    pub journal_mode: String,
    /// `PRAGMA synchronous` (2 is FULL).
    pub synchronous: i64,
    /// `PRAGMA foreign_keys`.
    pub foreign_keys: bool,
    /// `PRAGMA busy_timeout`, in milliseconds.
    pub busy_timeout_ms: i64,
}

/// The store: a writer thread for [`Command`]s and a pool of read connections.
///
/// Dropping it closes the command queue; the writer thread finishes the commands already
/// queued and exits. [`Store::close`] does the same and waits for it.
pub struct Store {
    path: PathBuf,
    queue: mpsc::Sender<Job>,
    writer: JoinHandle<()>,
    reads: Arc<ReadPool>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and starts
    /// the writer thread.
    ///
    /// Blocking (file I/O and migrations): call it before starting the runtime or from
    /// `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = writer::open_write_connection(&path)?;
        schema::migrate(&mut conn, &path, SCHEMA_VERSION)?;
        let (queue, jobs) = mpsc::channel(writer::QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let writer = writer::spawn(conn, jobs, Arc::clone(&counters))
            .map_err(|source| StoreError::SpawnWriter { source })?;
        let reads = Arc::new(ReadPool::new(path.clone()));
        Ok(Store {
            path,
            queue,
            writer,
            reads,
            counters,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `cmd` for the writer and resolves once its batch is committed (or refused).
    ///
    /// An `Ok` means the command is durable. The future owns what it needs, so it can be
    /// spawned; once polled, dropping it does not cancel the command.
    pub fn execute(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send + 'static {
        let queue = self.queue.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            queue
                .send(Job::Command { cmd, reply })
                .await
                .map_err(|_| StoreError::WriterGone)?;
            drop(queue);
            answer.await.map_err(|_| StoreError::WriterGone)?
        }
    }

    /// Counters of committed transactions and commands.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            commands: c.commands.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Asks the writer thread for the settings of its live connection.
    pub async fn write_settings(&self) -> Result<WriteSettings, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Settings { reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `f` on a pooled read connection in `spawn_blocking`; the functions of [`read`] fit.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let reads = Arc::clone(&self.reads);
        tokio::task::spawn_blocking(move || reads.with(f))
            .await
            .map_err(|source| StoreError::ReadTask { source })?
    }

    /// Runs `f` on a pooled read connection on this thread (blocking).
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.reads.with(f)
    }

    /// Closes the queue and waits until the writer has answered every queued command and
    /// closed the write connection.
    pub async fn close(self) -> Result<(), StoreError> {
        let Store { queue, writer, .. } = self;
        drop(queue);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|_| StoreError::WriterPanicked)?
            .map_err(|_| StoreError::WriterPanicked)
    }
}

/// Sets `pragma = value` on `conn` and checks that it reads back as `wanted`.
fn ensure_pragma(
    conn: &Connection,
    path: &Path,
    pragma: &'static str,
    value: &'static str,
    wanted: &'static str,
) -> Result<(), StoreError> {
    let configure = |source| StoreError::Configure {
        path: path.to_path_buf(),
        pragma,
        source,
    };
    conn.pragma_update(None, pragma, value).map_err(configure)?;
    let found = pragma_text(conn, pragma).map_err(configure)?;
    if found.eq_ignore_ascii_case(wanted) {
        Ok(())
    } else {
        Err(StoreError::PragmaNotApplied {
            path: path.to_path_buf(),
            pragma,
            wanted,
            found,
        })
    }
}

/// The current value of `pragma` as text, whatever its SQLite type.
fn pragma_text(conn: &Connection, pragma: &str) -> rusqlite::Result<String> {
    let value: Value = conn.pragma_query_value(None, pragma, |row| row.get(0))?;
    Ok(match value {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t,
        Value::Blob(b) => format!("{b:?}"),
    })
}
