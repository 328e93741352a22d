//! The single writer: one thread that owns the write connection and group-commits commands.
//!
//! The thread blocks for the first queued job, takes whatever else is queued (up to
//! [`MAX_BATCH`]), applies every command inside its own SAVEPOINT of ONE `BEGIN IMMEDIATE`
//! transaction, COMMITs once, and only then answers every caller. A refused command rolls back
//! its savepoint and gets its [`ApplyError`]; its batch-mates are still committed. When the
//! batch as a whole cannot be committed, every command gets [`StoreError::BatchFailed`] and
//! nothing is acknowledged. The thread exits when the queue is closed and drained.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior, ffi};
use tokio::sync::{mpsc, oneshot};

use super::command::{self, ApplyError, Command, Outcome};
use super::{BUSY_TIMEOUT, BatchStage, StoreError, WriteSettings, ensure_pragma, pragma_text};

/// The most commands in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// The most jobs waiting in the queue; senders wait (asynchronously) beyond that.
pub(crate) const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// What the writer thread is asked to do.
pub(crate) enum Job {
    /// Apply a command; answer after commit.
    Command {
        cmd: Command,
        reply: oneshot::Sender<Result<Outcome, StoreError>>,
    },
    /// Report the live connection's settings.
    Settings {
        reply: oneshot::Sender<Result<WriteSettings, StoreError>>,
    },
}

/// Counters the writer updates and [`super::Store::stats`] reads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) commands: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
}

/// A command waiting for its batch to commit.
struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Why a batch failed as a whole.
struct BatchAbort {
    stage: BatchStage,
    source: rusqlite::Error,
}

/// Opens the write connection: WAL, `synchronous=FULL` (an acknowledged commit is on disk),
/// foreign keys, busy timeout; each setting checked by reading it back.
pub(crate) fn open_write_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| StoreError::Configure {
            path: path.to_path_buf(),
            pragma: "busy_timeout",
            source,
        })?;
    ensure_pragma(&conn, path, "journal_mode", "WAL", "wal")?;
    ensure_pragma(&conn, path, "synchronous", "FULL", "2")?;
    ensure_pragma(&conn, path, "foreign_keys", "ON", "1")?;
    Ok(conn)
}

/// Starts the writer thread; it owns `conn` until the queue closes.
pub(crate) fn spawn(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || run(conn, jobs, &counters))
}

fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Job>, counters: &Counters) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Blocks for the first job, then takes what else is queued, without waiting for more.
    while jobs.blocking_recv_many(&mut received, MAX_BATCH) > 0 {
        for job in received.drain(..) {
            match job {
                Job::Command { cmd, reply } => batch.push(Pending { cmd, reply }),
                Job::Settings { reply } => {
                    // Ignored send error: the caller stopped waiting.
                    let _ = reply.send(settings(&conn));
                }
            }
        }
        if !batch.is_empty() {
            commit_batch(&mut conn, &mut batch, counters);
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::error!(error = %e, "closing the store write connection");
    }
}

/// Applies and commits `batch`, then answers every command in it.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Pending>, counters: &Counters) {
    let commands = batch.len();
    match apply_batch(conn, batch) {
        Ok(results) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            for (pending, result) in batch.drain(..).zip(results) {
                let counter = match result {
                    Ok(_) => &counters.commands,
                    Err(_) => &counters.refused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // Ignored send error: the caller stopped waiting; the command is committed.
                let _ = pending.reply.send(result.map_err(StoreError::from));
            }
        }
        Err(BatchAbort { stage, source }) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%stage, commands, error = %source, "store batch failed, nothing applied");
            let source = Arc::new(source);
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(StoreError::BatchFailed {
                    stage,
                    commands,
                    source: Arc::clone(&source),
                }));
            }
        }
    }
}

/// One transaction, one savepoint per command, one COMMIT. Returns each command's result
/// only once the COMMIT succeeded.
fn apply_batch(
    conn: &mut Connection,
    batch: &[Pending],
) -> Result<Vec<Result<Outcome, ApplyError>>, BatchAbort> {
    let abort = |stage| move |source| BatchAbort { stage, source };
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(abort(BatchStage::Begin))?;
    let mut results = Vec::with_capacity(batch.len());
    for pending in batch {
        let sp = tx
            .savepoint_with_name("command")
            .map_err(abort(BatchStage::Savepoint))?;
        match command::apply(&sp, &pending.cmd) {
            Ok(outcome) => {
                sp.commit().map_err(abort(BatchStage::Release))?;
                results.push(Ok(outcome));
            }
            Err(err) => {
                // Some errors (I/O, disk full) make SQLite roll back the whole transaction;
                // then the batch-mates applied so far are gone too and nobody may be acked.
                if sp.is_autocommit() {
                    return Err(BatchAbort {
                        stage: BatchStage::Apply,
                        source: match err {
                            ApplyError::Sqlite { source, .. } => source,
                            other => transaction_lost(&other),
                        },
                    });
                }
                // ROLLBACK TO the savepoint, then RELEASE it.
                sp.finish().map_err(abort(BatchStage::Rollback))?;
                results.push(Err(err));
            }
        }
    }
    tx.commit().map_err(abort(BatchStage::Commit))?;
    Ok(results)
}

/// An SQLite error standing for "the transaction was rolled back under us" after `cause`.
fn transaction_lost(cause: &ApplyError) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_ABORT),
        Some(format!("transaction rolled back after: {cause}")),
    )
}

fn settings(conn: &Connection) -> Result<WriteSettings, StoreError> {
    let read = || -> rusqlite::Result<WriteSettings> {
        Ok(WriteSettings {
            journal_mode: pragma_text(conn, "journal_mode")?,
            synchronous: conn.pragma_query_value(None, "synchronous", |r| r.get(0))?,
            foreign_keys: conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?,
            busy_timeout_ms: conn.pragma_query_value(None, "busy_timeout", |r| r.get(0))?,
        })
    };
    read().map_err(|source| StoreError::Read {
        query: super::ReadQuery::WriteSettings,
        source,
    })
}
