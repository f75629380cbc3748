//! SQLite's writer thread, beside sqlx's pool, for the hot path of a SQLite file: group
//! commits of appends, job claims, filings, the sealer's transactions and the checkpoint that
//! restarts the WAL.
//!
//! Through sqlx every statement, `BEGIN` and `COMMIT` is a round trip to the connection's own
//! thread, and a connection returned to the pool is pinged (one more): a command took about
//! five hand-offs between threads, and the durable path spent most of its time switching
//! threads rather than in SQLite (docs/performance.md). Here a whole group commit is one
//! hand-off: the work goes to the writer's thread, runs there start to end on a plain
//! connection (rusqlite, sharing sqlx's SQLite library) with its statements kept prepared,
//! and its answer comes back. Group commits, job claims, filings and seals hold the store's
//! write turn like every other writer of the process; the checkpointer's restart runs between
//! them without it (see `Checkpointer` in writer.rs).
//!
//! Reads stay on sqlx's pool. Reading a dossier's newest events on the caller's thread, from
//! connections of this module, was measured (+15% on the durable row) and taken back: under
//! the HTTP benchmark a hook outcome then sometimes failed its eight conflict retries, each
//! decided on the same older state (docs/performance.md, target 2).

use std::path::Path;
use std::sync::mpsc;

use rusqlite::types::{ToSql, ToSqlOutput};
use rusqlite::{Connection, OpenFlags};

use super::{Arg, StoreError};

type Work = Box<dyn FnOnce(&mut Connection) + Send>;

/// The handle to the writer thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub(super) struct Writer {
    work: mpsc::Sender<Work>,
}

/// Statements kept prepared on the writer's connection: an append uses a handful, the
/// multi-row event inserts one per row count.
const PREPARED_STATEMENTS: usize = 128;

impl Writer {
    /// Opens the database file (created and migrated already) and starts the thread.
    /// `extra` are settings of this database beyond [`SETTINGS`] (its page cap).
    pub(super) fn start(path: &Path, extra: &str) -> Result<Writer, StoreError> {
        let conn = open(path)?;
        conn.execute_batch(extra)?;
        let (work, queue) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("tthc-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                for w in queue {
                    // A filing's decision runs here: a panic in it must not stop every later
                    // write. Its transaction rolls back as it unwinds, and its caller is told.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        w(&mut conn);
                    }));
                    if ran.is_err() {
                        tracing::error!(
                            "a write panicked on the SQLite writer thread; rolled back"
                        );
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Writer { work })
    }

    /// Runs `f` on the writer's connection and returns its result. Once sent, the work runs to
    /// its end even if the caller stops waiting.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.work
            .send(Box::new(move |conn| {
                let _ = answer.send(f(conn));
            }))
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| {
            StoreError::Unavailable("the write failed on the SQLite writer thread".into())
        })
    }
}

/// Every SQLite connection of the store, the pool's and the writer's: WAL lets readers run
/// beside the one writer; NORMAL syncs at checkpoints, which WAL keeps crash-safe; a writer of
/// another process is waited for. Checkpoints run in the store's own task, not inside
/// whichever commit crosses the WAL's size limit (that commit would wait for the copy and the
/// sync: the latency tail).
pub(super) const SETTINGS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;";

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(SETTINGS)?;
    conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
    Ok(conn)
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer thread has stopped".into())
}

impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(v) => ToSqlOutput::from(*v),
            Arg::OptInt(v) => v.to_sql()?,
            Arg::Text(v) => ToSqlOutput::from(v.as_str()),
            Arg::OptText(v) => v.to_sql()?,
            Arg::Bytes(v) => ToSqlOutput::from(v.as_slice()),
        })
    }
}
