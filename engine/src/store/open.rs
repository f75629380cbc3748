//! Opening a store: the backend, migrations (under a lock), the SQLite file checks, read-only opens, and the deployment's identity.

#[allow(unused_imports)]
use super::*;

/// Which database a store runs on. The SQL is shared; where the dialects differ (placeholders,
/// row locks, claiming jobs) the backend picks the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Corrupt(format!(
                "`{url}` is not a sqlite:// or postgres:// database URL"
            )))
        }
    }
}

/// The statement for the backend: `?` placeholders become `$1, $2…` on PostgreSQL. Statements
/// here never contain a `?` inside a string literal. Flags are integers 0/1 on both backends,
/// so one statement and one decoding serve both.
pub(crate) fn sql(
    b: Backend,
    statement: &'static str,
) -> sqlx::AssertSqlSafe<std::borrow::Cow<'static, str>> {
    match b {
        Backend::Sqlite => sqlx::AssertSqlSafe(std::borrow::Cow::Borrowed(statement)),
        Backend::Postgres => sqlx::AssertSqlSafe(std::borrow::Cow::Owned(numbered(statement))),
    }
}

pub(crate) fn sql_dyn(b: Backend, statement: String) -> sqlx::AssertSqlSafe<String> {
    match b {
        Backend::Sqlite => sqlx::AssertSqlSafe(statement),
        Backend::Postgres => sqlx::AssertSqlSafe(numbered(&statement)),
    }
}

pub(super) fn numbered(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len() + 16);
    let mut n = 0;
    for ch in statement.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The embedded migrations of a backend.
pub(super) fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// The settings of the read-only connections of [`Store::open_read_only`]: nothing may be
/// written, not even the journal mode.
pub(super) const READ_ONLY_SETTINGS: &str = "PRAGMA busy_timeout = 10000; PRAGMA query_only = ON;";

/// The file of a `sqlite:` URL, or `None` for an in-memory database.
pub(super) fn sqlite_file(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    if url.contains(":memory:") {
        return Ok(None);
    }
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)?;
    Ok(Some(options.get_filename().to_path_buf()))
}

/// A SQLite URL's `max_page_count=N` (tthc's, not the driver's), taken out of it: the most
/// pages the database may have, a quota past which writes fail as on a full disk.
pub(super) fn take_page_cap(url: &str) -> Result<(String, Option<u64>), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut cap = None;
    let mut rest = Vec::new();
    for param in query.split('&') {
        match param.split_once('=') {
            Some(("max_page_count", n)) => {
                cap = Some(n.parse::<u64>().map_err(|_| {
                    StoreError::Unusable(format!(
                        "max_page_count in the database URL must be a number of pages, not `{n}`"
                    ))
                })?);
            }
            _ => rest.push(param),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, cap))
}

/// `url` with SQLite's open mode set, unless the URL sets one.
pub(super) fn with_mode(url: &str, mode: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode={mode}")
}

/// Checks a SQLite file before the pool opens it, so that a file SQLite cannot use is named at
/// once, in SQLite's words: the pool would retry a connection whose set-up fails until it
/// timed out ("pool timed out while waiting for an open connection"), and a server would
/// never become ready. A file that does not exist yet is fine for a writer, which creates it.
pub(super) fn check_sqlite_file(path: &std::path::Path, read_only: bool) -> Result<(), StoreError> {
    use rusqlite::{Connection, OpenFlags};
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if read_only {
                Err(StoreError::Missing(shown.to_string()))
            } else {
                Ok(())
            };
        }
        Err(e) => return Err(StoreError::Unusable(format!("{shown}: {e}"))),
        Ok(m) if !m.is_file() => {
            return Err(StoreError::Unusable(format!("{shown} is not a file")));
        }
        // Checked here because SQLite opens a write-protected file read-write for root.
        Ok(m) if !read_only && m.permissions().readonly() => {
            return Err(StoreError::Unusable(format!(
                "{shown} is read-only (its permissions forbid writing): the server must write \
                 its database; make it writable, or read it with the audit tools"
            )));
        }
        Ok(_) => {}
    }
    let unusable = |e: rusqlite::Error| {
        let readonly = matches!(&e, rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ReadOnly);
        StoreError::Unusable(if readonly {
            format!("{shown} is read-only: {e}")
        } else {
            format!("{shown}: {e}")
        })
    };
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(unusable)?;
    if !read_only && conn.is_readonly(rusqlite::MAIN_DB).map_err(unusable)? {
        return Err(StoreError::Unusable(format!(
            "{shown} is read-only: SQLite cannot open it for writing"
        )));
    }
    // Reads the file's header and its schema: "file is not a database", "database disk image
    // is malformed".
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(unusable)?;
    if !read_only {
        // The writer's settings (WAL) write the file: a read-only medium shows here.
        conn.execute_batch(sqlite::SETTINGS).map_err(unusable)?;
    }
    Ok(())
}

/// Holds other processes off a SQLite file's migrations while this one applies them: two
/// servers starting on a new file at once would both apply the first migration, and one would
/// fail ("UNIQUE constraint failed: _sqlx_migrations.version"). SQLite's own locks cannot
/// serve (sqlx applies each migration in a transaction of its own), so an advisory lock on a
/// file beside the database does, `PATH-migrations.lock`, released when this is dropped.
pub(super) struct MigrationLock(#[allow(dead_code)] std::fs::File);

impl MigrationLock {
    pub(super) async fn take(database: &std::path::Path) -> Result<MigrationLock, StoreError> {
        let mut name = database.as_os_str().to_owned();
        name.push("-migrations.lock");
        let path = std::path::PathBuf::from(name);
        tokio::task::spawn_blocking(move || {
            let take = || {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                file.lock()?;
                Ok::<_, std::io::Error>(MigrationLock(file))
            };
            take().map_err(|e| {
                StoreError::Unusable(format!(
                    "{}: {e} (the lock beside the database, taken while migrating; its folder \
                     must exist and be writable)",
                    path.display()
                ))
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the migration lock: {e}")))?
    }
}

/// Whether the database is a tthc database migrated to this version, for the read-only tools,
/// which never migrate: an empty file or another program's database would read as an empty
/// history ("intact: 0 events"), and an older schema would fail in the middle of a check.
pub(super) async fn check_migrated(
    pool: &AnyPool,
    backend: Backend,
    url: &str,
) -> Result<(), StoreError> {
    let shown = match sqlite_file(url) {
        Ok(Some(path)) => path.display().to_string(),
        _ => "the database".to_owned(),
    };
    let has_table: i64 = sqlx::query_scalar(sql(
        backend,
        match backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
            }
        },
    ))
    .fetch_one(pool)
    .await?;
    if has_table == 0 {
        return Err(StoreError::NotMigrated(format!(
            "{shown} is not a tthc database, or was never migrated: it has none of tthc's \
             tables (an empty file, or another program's database)"
        )));
    }
    let applied: Vec<i64> = sqlx::query_scalar(sql(
        backend,
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    ))
    .fetch_all(pool)
    .await?;
    let known: Vec<i64> = migrator(backend)
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let missing: Vec<String> = known
        .iter()
        .filter(|v| !applied.contains(v))
        .map(|v| v.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::NotMigrated(format!(
            "{shown} is not migrated to this version of tthc: migration(s) {} not applied; \
             `tthc serve` applies them (the audit tools never do)",
            missing.join(", ")
        )));
    }
    if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
        return Err(StoreError::NotMigrated(format!(
            "{shown} was migrated by a newer tthc (migration {newer} is unknown to this one): \
             use that version's tools"
        )));
    }
    Ok(())
}

impl Store {
    /// Opens the database at `url` and applies the embedded migrations: `sqlite://PATH`
    /// (created if missing; WAL) is the embedded default, `postgres://…` the shared one for
    /// several nodes.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, false).await
    }

    /// Opens an existing database to read it, for the operator's tools (`audit verify`,
    /// `replay`, `verify-result`): never creates it, never migrates it, never writes to it.
    /// A database that is missing, empty, another program's or not migrated to this version is
    /// an error naming it.
    pub async fn open_read_only(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, true).await
    }

    pub(super) async fn open_with(url: &str, read_only: bool) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let (url, page_cap) = match backend {
            Backend::Sqlite => {
                let (url, cap) = take_page_cap(url)?;
                (with_mode(&url, if read_only { "ro" } else { "rwc" }), cap)
            }
            Backend::Postgres => (url.to_owned(), None),
        };
        let file = match backend {
            Backend::Sqlite => sqlite_file(&url)?,
            Backend::Postgres => None,
        };
        // Settings of this database beyond the usual ones, on every connection that writes.
        let extra: String = page_cap
            .map(|n| format!("PRAGMA max_page_count = {n};"))
            .unwrap_or_default();
        let extra_on_connect = extra.clone();
        if let Some(path) = &file {
            let path = path.clone();
            tokio::task::spawn_blocking(move || check_sqlite_file(&path, read_only))
                .await
                .map_err(|e| StoreError::Unavailable(format!("checking the database: {e}")))??;
        }
        let _migrating = match &file {
            Some(path) if !read_only => Some(MigrationLock::take(path).await?),
            _ => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            // A SQLite connection is a file handle that cannot drop like a socket: no ping (a
            // round trip to the connection's thread) before every use. PostgreSQL keeps it, to
            // notice connections a server restart closed.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _| {
                let extra_on_connect = extra_on_connect.clone();
                Box::pin(async move {
                    match (backend, read_only) {
                        (Backend::Sqlite, false) => {
                            conn.execute(sqlite::SETTINGS).await?;
                            if !extra_on_connect.is_empty() {
                                conn.execute(sqlx::AssertSqlSafe(extra_on_connect.clone()))
                                    .await?;
                            }
                        }
                        (Backend::Sqlite, true) => {
                            conn.execute(READ_ONLY_SETTINGS).await?;
                        }
                        (Backend::Postgres, true) => {
                            conn.execute("SET default_transaction_read_only = on")
                                .await?;
                        }
                        (Backend::Postgres, false) => {}
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if read_only {
            check_migrated(&pool, backend, &url).await?;
        } else {
            migrator(backend).run(&pool).await?;
        }
        drop(_migrating);
        let writer = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        let (sqlite_writer, checkpointer) = match &file {
            Some(path) if !read_only => {
                let sqlite_writer = std::sync::Arc::new(sqlite::Writer::start(path, &extra)?);
                let checkpointer =
                    Checkpointer::start(pool.clone(), std::sync::Arc::clone(&sqlite_writer));
                (Some(sqlite_writer), Some(std::sync::Arc::new(checkpointer)))
            }
            _ => (None, None),
        };
        Ok(Store {
            pool,
            backend,
            url: url.clone(),
            writer,
            _checkpointer: checkpointer,
            pending: std::sync::Arc::default(),
            sqlite_writer,
            dictionaries: std::sync::Arc::default(),
            current_dictionary: std::sync::Arc::default(),
            full: std::sync::Arc::default(),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A statement written with `?` placeholders, for this store's backend (for tools and
    /// tests that query the tables directly).
    pub fn statement(&self, statement: &str) -> sqlx::AssertSqlSafe<String> {
        sql_dyn(self.backend, statement.to_owned())
    }

    /// This process's turn to write, on SQLite; PostgreSQL needs none. Every write of the
    /// process takes it, so that writers queue here rather than in SQLite's busy handler
    /// (whose sleeps would stall whoever holds the turn). Never held across a call that takes
    /// it again.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.writer.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Runs `f` on the SQLite writer thread in the write turn, taken here and held until `f`
    /// has run (even if this caller stops waiting: once sent, the work runs to its end).
    pub(super) async fn in_write_turn<T: Send + 'static>(
        &self,
        writer: &sqlite::Writer,
        f: impl FnOnce(&mut rusqlite::Connection) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let turn = std::sync::Arc::clone(&self.writer).lock_owned().await;
        writer
            .run(move |conn| {
                let _turn = turn;
                f(conn)
            })
            .await
    }

    pub(super) async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            // Take SQLite's write lock up front: a deferred transaction that reads and then
            // writes could fail to upgrade under a concurrent writer.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            // PostgreSQL locks the rows it updates; the dossier row is locked explicitly.
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

impl Store {
    /// This deployment's identity (see `0008_deployment.sql`): made once, at the first open of
    /// the database, by whichever node gets there first; every later open reads the same one.
    pub async fn deployment_id(&self) -> Result<String, StoreError> {
        let candidate = hex::encode(rand::random::<[u8; 16]>());
        {
            let _turn = self.write_turn().await;
            sqlx::query(sql(
                self.backend,
                "INSERT INTO deployment (singleton, id) VALUES (1, ?) ON CONFLICT (singleton) DO NOTHING",
            ))
            .bind(&candidate)
            .execute(&self.pool)
            .await?;
        }
        let (id,): (String,) = sqlx::query_as(sql(
            self.backend,
            "SELECT id FROM deployment WHERE singleton = 1",
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }
}

impl Store {
    /// The deployment's identity if it has one, without making it (read-only opens).
    pub async fn stored_deployment_id(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(sql(
            self.backend,
            "SELECT id FROM deployment WHERE singleton = 1",
        ))
        .fetch_optional(&self.pool)
        .await?)
    }
}
