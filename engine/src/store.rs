//! Storage on SQLite (WAL): the event log and the read models, written in one transaction.
//!
//! Appends carry the sequence number the caller decided on; a writer whose expected number
//! is stale gets [`StoreError::Conflict`] and nothing is written.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, Executor, Row, Transaction};

use std::collections::HashMap;

use crate::archive::{self, Archive, ArchiveError, Dictionary, StoredEvent};
use crate::audit::{self, ChainBreak, StreamVerifier, VerifyReport};
use crate::dossier::{Dossier, Event, EventRecord, JobState};

mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("dossier {code} changed: it is at event {current}, you expected {expected}")]
    Conflict {
        code: String,
        expected: u64,
        current: u64,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// From the SQLite writer's own connection (see `store/sqlite.rs`).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store cannot take work (its SQLite writer thread could not start or has stopped).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A tool that reads the database was pointed at one that does not exist (nothing is
    /// created for it).
    #[error("no database at {0}: nothing was created (check --database or TTHC_DATABASE_URL)")]
    Missing(String),
    /// The database opens but is not a tthc database at this version: empty, another
    /// program's, or not migrated (tools that read never migrate).
    #[error("{0}")]
    NotMigrated(String),
    /// SQLite cannot use the file: damaged, not a database, read-only, unreadable. Named at
    /// once, in SQLite's own words.
    #[error("{0}")]
    Unusable(String),
    /// A dossier's archive of sealed events cannot be read: a column holds another type than
    /// the sealer wrote (text where bytes belong), or its bytes do not unpack.
    #[error(
        "dossier {dossier}: its archive of sealed events is damaged ({problem}); restore it from \
         a backup (`tthc audit verify` lists every damaged dossier)"
    )]
    ArchiveDamaged { dossier: String, problem: String },
}

impl StoreError {
    /// Whether the database (or the disk under it) is full: SQLite's `SQLITE_FULL` ("database
    /// or disk is full"), PostgreSQL's `disk_full` (53100). Nothing of the failed write was
    /// kept; it can succeed once space returns.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => match e.code() {
                // PostgreSQL's SQLSTATE has five characters; SQLite's primary code is the low
                // byte of its extended code.
                Some(c) if c.len() == 5 => c == "53100",
                Some(c) => c.parse::<i64>().is_ok_and(|c| c & 0xff == 13),
                None => false,
            },
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

/// A procedure version as deployed.
#[derive(Debug, Clone)]
pub struct StoredProcedure {
    pub code: String,
    pub version: u32,
    pub name: String,
    pub source: String,
    pub forms: Value,
    pub deployed_at: DateTime<Utc>,
}

/// What filing did.
#[derive(Debug, Clone)]
pub enum Created {
    /// Filed now: the dossier and the hash of its last event.
    New(Box<Dossier>, String),
    /// The idempotency key filed this dossier before.
    Earlier { code: String, request_hash: String },
}

/// A job due to run, claimed under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub dossier: String,
    pub job: String,
    /// The lease this claim holds (microseconds), to renew it only while it is still ours.
    pub lease_until: i64,
}

/// One row of an officer's worklist.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskRow {
    pub dossier_code: String,
    pub task_id: String,
    pub step: String,
    pub name: String,
    pub role: String,
    pub agency_code: String,
    pub claimed_by: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DossierRow {
    pub code: String,
    pub procedure_code: String,
    pub procedure_version: u32,
    pub agency_code: String,
    pub owner_id: String,
    pub owner_name: String,
    pub channel: String,
    pub status: u8,
    pub seq: u64,
    pub filed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub closed: bool,
    pub paused: bool,
    pub overdue: bool,
    pub apology_sent: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobRow {
    pub dossier_code: String,
    pub job_id: String,
    pub kind: String,
    pub call: String,
    pub state: String,
    pub attempts: u32,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IncidentRow {
    pub dossier_code: String,
    pub incident_id: String,
    pub job_id: String,
    pub error: String,
    pub opened_at: DateTime<Utc>,
    pub resolution: Option<String>,
    /// `hook`, `condition` or `stuck`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NotificationRow {
    pub dossier_code: String,
    pub notification_id: String,
    pub template: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// The read-model rows a dossier's state projects to. Replay compares these with the
/// stored ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Projection {
    pub dossier: DossierRow,
    pub tasks: Vec<TaskRow>,
    pub jobs: Vec<JobRow>,
    pub incidents: Vec<IncidentRow>,
    pub notifications: Vec<NotificationRow>,
}

impl Projection {
    pub fn of(d: &Dossier) -> Projection {
        let code = &d.code;
        Projection {
            dossier: DossierRow {
                code: code.to_string(),
                procedure_code: d.procedure_code.to_string(),
                procedure_version: d.procedure_version,
                agency_code: d.agency_code.to_string(),
                owner_id: d.owner.id.to_string(),
                owner_name: d.owner.name.clone(),
                channel: d.channel.as_str().to_owned(),
                status: d.status.code(),
                seq: d.seq,
                filed_at: d.filed_at,
                updated_at: d.updated_at,
                received_at: d.received_at,
                due_at: d.due_at,
                closed: d.is_closed(),
                paused: d.paused.is_some(),
                overdue: d.overdue,
                apology_sent: d.apology_sent,
            },
            tasks: d
                .tasks
                .values()
                .map(|t| TaskRow {
                    dossier_code: code.to_string(),
                    task_id: t.id.to_string(),
                    step: t.step.to_string(),
                    name: t.name.to_string(),
                    role: t.role.to_string(),
                    agency_code: t.agency.to_string(),
                    claimed_by: t.claimed_by.clone(),
                    opened_at: t.opened_at,
                    due_at: t.due_at,
                })
                .collect(),
            jobs: d
                .jobs
                .values()
                .filter_map(|j| job_projection(code, j))
                .collect(),
            incidents: d
                .incidents
                .values()
                .map(|i| IncidentRow {
                    dossier_code: code.to_string(),
                    incident_id: i.id.clone(),
                    job_id: i.job.clone(),
                    error: i.error.clone(),
                    opened_at: i.opened_at,
                    resolution: i.resolution.as_ref().map(crate::wire_name),
                    kind: i.kind.as_str().to_owned(),
                })
                .collect(),
            notifications: d
                .notifications
                .iter()
                .map(|n| NotificationRow {
                    dossier_code: code.to_string(),
                    notification_id: n.id.clone(),
                    template: n.template.clone(),
                    recipient: n.recipient.clone(),
                    subject: n.subject.clone(),
                    body: n.body.clone(),
                    created_at: n.created_at,
                })
                .collect(),
        }
    }
}

/// A job's row in the work queue; `None` once it is finished (done or cancelled): finished
/// jobs leave the queue, their outcome is an event.
fn job_projection(code: &str, j: &crate::dossier::Job) -> Option<JobRow> {
    if matches!(j.state, JobState::Done | JobState::Cancelled) {
        return None;
    }
    Some(JobRow {
        dossier_code: code.to_owned(),
        job_id: j.id.to_string(),
        kind: crate::wire_name(&j.kind),
        call: j.call.clone(),
        state: crate::wire_name(&j.state),
        attempts: j.attempts,
        run_at: j.run_at,
        last_error: j.last_error.clone(),
    })
}

/// An append: who, when, the events decided and the state they lead to.
pub struct Append<'a> {
    pub at: DateTime<Utc>,
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub events: &'a [Event],
    pub state: &'a Dossier,
    /// The state the events were decided on and the hash of its last event, the head the new
    /// events chain to (`None` for a new dossier).
    pub before: Option<(&'a Dossier, &'a str)>,
}

impl Append<'_> {
    fn before_state(&self) -> Option<&Dossier> {
        self.before.map(|(d, _)| d)
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// SQLite has one writer at a time: writers of this process take turns here rather than
    /// in SQLite's busy handler, whose sleeps (up to 25 ms each) made the latency tail.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// SQLite: the task that checkpoints the WAL; stops when the last clone of the store goes.
    _checkpointer: Option<std::sync::Arc<Checkpointer>>,
    /// SQLite file: appends waiting for the writer's turn. Whichever writer gets the turn commits
    /// all of them in one transaction (group commit), each still checked against its own
    /// expected sequence.
    pending: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<GroupWrite>>>>,
    /// SQLite (a file): the thread that runs group commits and job claims, each in one
    /// hand-off (`store/sqlite.rs`).
    sqlite_writer: Option<std::sync::Arc<sqlite::Writer>>,
    /// Archive dictionaries by id, prepared once (they never change once stored).
    dictionaries: std::sync::Arc<std::sync::Mutex<HashMap<i64, std::sync::Arc<Dictionary>>>>,
    /// The newest dictionary's id and when it was looked up.
    current_dictionary: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, i64)>>>,
    /// Set when a write failed because the storage is full, cleared once a probe write finds
    /// room ([`Store::storage_full`]).
    full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// An append waiting to be committed with others.
struct GroupWrite {
    expected_seq: u64,
    prepared: Prepared,
    outcome: std::sync::Mutex<Option<Result<(), StoreError>>>,
    /// Told once the outcome is set, so that the append's caller learns it at once.
    decided: tokio::sync::Notify,
}

impl std::fmt::Debug for GroupWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWrite")
            .field("dossier", &self.prepared.dossier.code)
            .field("expected_seq", &self.expected_seq)
            .finish_non_exhaustive()
    }
}

impl GroupWrite {
    fn take_outcome(&self) -> Option<Result<(), StoreError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn set_outcome(&self, outcome: Result<(), StoreError>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.decided.notify_one();
    }
}

/// Commits appends to SQLite in one transaction, on the writer thread's connection. A conflict
/// leaves its own append out (nothing of it was written); any other failure rolls the group
/// back, and each append is then tried alone, so that only the failing one reports the error.
fn commit_group(conn: &mut rusqlite::Connection, writes: &[std::sync::Arc<GroupWrite>]) {
    let together = |conn: &mut rusqlite::Connection| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            match apply_on(&tx, w.expected_seq, &w.prepared) {
                Ok(()) => outcomes.push(Ok(())),
                Err(e @ StoreError::Conflict { .. }) => outcomes.push(Err(e)),
                // Dropping the transaction rolls it back.
                Err(e) => return Err(e),
            }
        }
        tx.commit()?;
        Ok::<_, StoreError>(outcomes)
    };
    match together(conn) {
        Ok(outcomes) => {
            for (w, outcome) in writes.iter().zip(outcomes) {
                w.set_outcome(outcome);
            }
        }
        Err(_) => {
            for w in writes {
                let alone = |conn: &mut rusqlite::Connection| {
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    apply_on(&tx, w.expected_seq, &w.prepared)?;
                    tx.commit()?;
                    Ok::<_, StoreError>(())
                };
                w.set_outcome(alone(conn));
            }
        }
    }
}

/// [`apply`] on the writer thread's connection: the conditional update of the dossier row,
/// then the batch, each statement kept prepared.
fn apply_on(
    tx: &rusqlite::Transaction<'_>,
    expected_seq: u64,
    prepared: &Prepared,
) -> Result<(), StoreError> {
    let d = &prepared.dossier;
    let changed = tx
        .prepare_cached(UPDATE_DOSSIER)?
        .execute(rusqlite::params![
            i64::from(d.status),
            i64::try_from(d.seq).unwrap_or(i64::MAX),
            prepared.head,
            micros(d.updated_at),
            opt_micros(d.received_at),
            opt_micros(d.due_at),
            i64::from(d.closed),
            i64::from(d.paused),
            i64::from(d.overdue),
            i64::from(d.apology_sent),
            d.code,
            i64::try_from(expected_seq).unwrap_or(i64::MAX),
        ])?;
    if changed != 1 {
        use rusqlite::OptionalExtension;
        let current: Option<i64> = tx
            .prepare_cached(DOSSIER_SEQ)?
            .query_row([&d.code], |r| r.get(0))
            .optional()?;
        let Some(current) = current else {
            return Err(StoreError::Corrupt(format!(
                "dossier {} has no row",
                d.code
            )));
        };
        return Err(StoreError::Conflict {
            code: d.code.clone(),
            expected: expected_seq,
            current: u64::try_from(current).unwrap_or(0),
        });
    }
    run_on(tx, &prepared.batch.statements)
}

/// Runs statements on the writer thread's transaction, each kept prepared.
fn run_on<'a>(
    tx: &rusqlite::Transaction<'_>,
    statements: impl IntoIterator<Item = &'a (String, Vec<Arg>)>,
) -> Result<(), StoreError> {
    for (statement, args) in statements {
        tx.prepare_cached(statement)?
            .execute(rusqlite::params_from_iter(args))?;
    }
    Ok(())
}

/// Claims an idempotency key for a filing; no row changes when it was seen before (binds:
/// actor, key, request hash, now).
const IDEMPOTENCY_CLAIM: &str =
    "INSERT INTO idempotency_keys (actor_id, key, scope, request_hash, status, body, created_at)
     VALUES (?, ?, 'file_dossier', ?, 201, '', ?) ON CONFLICT (actor_id, key) DO NOTHING";
/// What a key seen before filed (binds: actor, key).
const IDEMPOTENCY_EARLIER: &str =
    "SELECT body, request_hash FROM idempotency_keys WHERE actor_id = ? AND key = ?";
/// Records the dossier a key filed (binds: code, actor, key).
const IDEMPOTENCY_FILED: &str =
    "UPDATE idempotency_keys SET body = ? WHERE actor_id = ? AND key = ?";
/// The next number of an agency's day (binds: agency, day as YYMMDD).
const NEXT_DOSSIER_NUMBER: &str =
    "INSERT INTO dossier_sequences (agency_code, day, last) VALUES (?, ?, 1)
     ON CONFLICT (agency_code, day) DO UPDATE SET last = dossier_sequences.last + 1
     RETURNING last";

/// A filing's facts for [`create_on`], owned: it runs on the writer thread.
struct NewDossier {
    agency_code: String,
    day_key: String,
    at: DateTime<Utc>,
    /// Id and name.
    actor: (String, String),
    /// The idempotency key and the request's hash.
    key: Option<(String, String)>,
}

/// [`Store::create`] on the writer thread's connection: the key, the number, the decision and
/// the new dossier's rows in one transaction; nothing is kept when `decide` refuses.
fn create_on<E>(
    conn: &mut rusqlite::Connection,
    f: &NewDossier,
    decide: impl FnOnce(&str) -> Result<(Vec<Event>, Dossier), E>,
) -> Result<Result<Created, E>, StoreError> {
    let (actor_id, actor_name) = (f.actor.0.as_str(), f.actor.1.as_str());
    // Dropping the transaction without committing rolls it back.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some((key, hash)) = &f.key {
        let claimed = tx
            .prepare_cached(IDEMPOTENCY_CLAIM)?
            .execute(rusqlite::params![actor_id, key, hash, micros(f.at)])?;
        if claimed == 0 {
            let (code, request_hash) = tx
                .prepare_cached(IDEMPOTENCY_EARLIER)?
                .query_row([actor_id, key.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            return Ok(Ok(Created::Earlier { code, request_hash }));
        }
    }
    let n: i64 = tx
        .prepare_cached(NEXT_DOSSIER_NUMBER)?
        .query_row([&f.agency_code, &f.day_key], |r| r.get(0))?;
    let code = format!("{}-{}-{n:04}", f.agency_code, f.day_key);
    let (events, state) = match decide(&code) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let prepared = prepare(
        Backend::Sqlite,
        &Append {
            at: f.at,
            actor_id,
            actor_name,
            events: &events,
            state: &state,
            before: None,
        },
        0,
        audit::GENESIS.to_owned(),
    )?;
    let mut row = Batch::default();
    insert_dossier(&mut row, &prepared.dossier, &prepared.head);
    run_on(&tx, row.statements.iter().chain(&prepared.batch.statements))?;
    if let Some((key, _)) = &f.key {
        tx.prepare_cached(IDEMPOTENCY_FILED)?
            .execute([code.as_str(), actor_id, key.as_str()])?;
    }
    tx.commit()?;
    Ok(Ok(Created::New(Box::new(state), prepared.head)))
}

/// The sealer's transaction on the writer thread's connection: for each dossier still where it
/// was read, its archive stored and its event rows and letters deleted; one that moved on is
/// counted as changed and left.
fn seal_on(
    conn: &mut rusqlite::Connection,
    ready: &[(SealCandidate, crate::archive::Archive)],
) -> Result<SealReport, StoreError> {
    let mut report = SealReport::default();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (c, archive) in ready {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let moved = tx.prepare_cached(SEAL_MARK)?.execute(rusqlite::params![
            int(archive.upto),
            c.code,
            int(c.seq),
            int(c.sealed)
        ])?;
        if moved == 0 {
            report.changed += 1;
            continue;
        }
        tx.prepare_cached(SEAL_ARCHIVE)?.execute(rusqlite::params![
            c.code,
            int(archive.upto),
            archive.head,
            archive.checks,
            archive.dictionary,
            archive.body
        ])?;
        tx.prepare_cached(SEAL_DELETE_EVENTS)?
            .execute(rusqlite::params![c.code, int(archive.upto)])?;
        tx.prepare_cached(SEAL_DELETE_NOTIFICATIONS)?
            .execute([&c.code])?;
        report.sealed += 1;
        report.events += c.seq - c.sealed;
    }
    tx.commit()?;
    Ok(report)
}

/// Marks a dossier sealed up to an event, if it is still where the sealer read it (binds:
/// upto, code, seq, sealed).
const SEAL_MARK: &str =
    "UPDATE dossiers SET sealed_seq = ? WHERE code = ? AND seq = ? AND sealed_seq = ?";
/// Stores a dossier's archive, replacing an earlier one (binds: code, upto, head, checks,
/// dictionary, body).
const SEAL_ARCHIVE: &str =
    "INSERT INTO event_archives (dossier_code, upto_seq, head, checks, dictionary, body)
     VALUES (?, ?, ?, ?, ?, ?)
     ON CONFLICT (dossier_code) DO UPDATE SET upto_seq = excluded.upto_seq,
        head = excluded.head, checks = excluded.checks,
        dictionary = excluded.dictionary, body = excluded.body";
/// The event rows an archive now holds (binds: code, upto).
const SEAL_DELETE_EVENTS: &str = "DELETE FROM events WHERE dossier_code = ? AND seq <= ?";
/// A sealed dossier's letters: their text is in its events (binds: code).
const SEAL_DELETE_NOTIFICATIONS: &str = "DELETE FROM notifications WHERE dossier_code = ?";

/// Whether any job is due and not leased (binds: now, now).
const ANY_JOB_DUE: &str = "SELECT 1 FROM jobs WHERE state = 'pending' AND run_at <= ?
     AND (lease_until IS NULL OR lease_until < ?) LIMIT 1";

/// SQLite has one writer at a time: the statement is the claim (binds: lease until, now, now,
/// limit).
const CLAIM_JOBS_SQLITE: &str = "UPDATE jobs SET lease_until = ?
     WHERE rowid IN (
         SELECT rowid FROM jobs
         WHERE state = 'pending' AND run_at <= ? AND (lease_until IS NULL OR lease_until < ?)
         ORDER BY run_at LIMIT ?)
     RETURNING dossier_code, job_id";

/// [`Store::claim_due_jobs`] on the writer thread's connection: nothing is written when no job
/// is due.
fn claim_on(
    conn: &mut rusqlite::Connection,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    if !conn.prepare_cached(ANY_JOB_DUE)?.exists([now, now])? {
        return Ok(Vec::new());
    }
    let mut claim = conn.prepare_cached(CLAIM_JOBS_SQLITE)?;
    let claimed = claim
        .query_map(rusqlite::params![lease_until, now, now, limit], |r| {
            Ok(ClaimedJob {
                dossier: r.get(0)?,
                job: r.get(1)?,
                lease_until,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(claimed)
}

/// Copies the SQLite WAL back into the database file every [`Checkpointer::EVERY`], and keeps
/// the WAL from growing without bound.
///
/// First a passive checkpoint beside the writers (it takes no lock they wait for) copies what
/// is there. But the WAL only starts again from its beginning when a commit begins with every
/// frame copied, and under continuous writes some commit always lands while the passive
/// checkpoint runs: the file grew for as long as the load lasted (1.6 GB in 12 s of the
/// durable benchmark, where the kernel's zeroing of its new pages took 16% of the time). So a
/// `RESTART` checkpoint follows on the writer thread, between two group commits: it copies
/// the frames committed since the passive checkpoint and makes the next commit start the WAL
/// from its beginning. It is skipped while nothing is written.
///
/// Every commit waits while the restart runs, and what it copies it must also sync to disk
/// first: 6–13 ms under the HTTP benchmark when it followed one passive pass (the pass takes
/// long, and all that was committed during it was left to the restart), twice a second, a
/// part of a task completion's p99. So passive passes repeat, beside the writers, until
/// one finds that almost nothing was committed during the pass before; the restart then has
/// only that little to copy.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Checkpointer {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);
    const WAIT_FOR_READERS: std::time::Duration = std::time::Duration::from_millis(10);
    /// Passive passes after the first, at most, before the restart.
    const CATCH_UP_PASSES: usize = 4;
    /// Frames committed during a passive pass small enough to leave to the restart (a
    /// command writes about five).
    const FEW_FRAMES: i64 = 64;

    fn start(pool: AnyPool, writer: std::sync::Arc<sqlite::Writer>) -> Checkpointer {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Checkpointer::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        match Checkpointer::pass(&pool, &writer, seen).await {
                            Ok(frames) => seen = Some(frames),
                            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                        }
                    }
                }
            }
            // Dropping this clone of the pool: its last connection to close checkpoints the
            // rest of the WAL.
        });
        Checkpointer { stop: Some(stop) }
    }

    /// One pass; `seen` is the WAL's frame count the last pass left. Returns the frame count
    /// this pass leaves.
    async fn pass(
        pool: &AnyPool,
        writer: &sqlite::Writer,
        seen: Option<i64>,
    ) -> Result<i64, StoreError> {
        // The WAL's frame count when a pass starts, and how many of them are copied.
        let passive = || async {
            let (_busy, frames, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(pool)
                    .await?;
            Ok::<_, StoreError>((frames, copied))
        };
        let (mut frames, copied) = passive().await?;
        if frames == 0 || (frames == copied && seen == Some(frames)) {
            // Nothing written since the last pass.
            return Ok(frames);
        }
        for _ in 0..Checkpointer::CATCH_UP_PASSES {
            let (now, _) = passive().await?;
            // Committed during the pass before (fewer if the WAL started again meanwhile).
            let during = now - frames;
            frames = now;
            if during <= Checkpointer::FEW_FRAMES {
                break;
            }
        }
        writer
            .run(move |conn| {
                // On the writer thread between two group commits, which wait meanwhile. Not
                // in the write turn: waiting for it behind every queued command let more
                // frames in for the restart to copy. A writer through the pool (an upload, a
                // lease renewed) that holds the write lock makes the restart wait for it like
                // a reader, and it waits for the restart through its busy timeout.
                //
                // RESTART waits for readers still on the WAL, and commits wait meanwhile, so
                // it waits briefly: a long reader (an audit, a search) only defers the restart
                // to a later pass.
                let started = std::time::Instant::now();
                let usual: i64 = conn.pragma_query_value(None, "busy_timeout", |r| r.get(0))?;
                conn.busy_timeout(Checkpointer::WAIT_FOR_READERS)?;
                let restart =
                    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(1));
                conn.pragma_update(None, "busy_timeout", usual)?;
                tracing::debug!(elapsed = ?started.elapsed(), "WAL restart checkpoint");
                match restart {
                    Ok(frames) => Ok(frames),
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        Ok(frames)
                    }
                    Err(e) => Err(StoreError::from(e)),
                }
            })
            .await?
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

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

fn numbered(statement: &str) -> String {
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
fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// The settings of the read-only connections of [`Store::open_read_only`]: nothing may be
/// written, not even the journal mode.
const READ_ONLY_SETTINGS: &str = "PRAGMA busy_timeout = 10000; PRAGMA query_only = ON;";

/// The file of a `sqlite:` URL, or `None` for an in-memory database.
fn sqlite_file(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    if url.contains(":memory:") {
        return Ok(None);
    }
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)?;
    Ok(Some(options.get_filename().to_path_buf()))
}

/// A SQLite URL's `max_page_count=N` (tthc's, not the driver's), taken out of it: the most
/// pages the database may have, a quota past which writes fail as on a full disk.
fn take_page_cap(url: &str) -> Result<(String, Option<u64>), StoreError> {
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
fn with_mode(url: &str, mode: &str) -> String {
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
fn check_sqlite_file(path: &std::path::Path, read_only: bool) -> Result<(), StoreError> {
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
struct MigrationLock(#[allow(dead_code)] std::fs::File);

impl MigrationLock {
    async fn take(database: &std::path::Path) -> Result<MigrationLock, StoreError> {
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
async fn check_migrated(pool: &AnyPool, backend: Backend, url: &str) -> Result<(), StoreError> {
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

    async fn open_with(url: &str, read_only: bool) -> Result<Store, StoreError> {
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
    async fn in_write_turn<T: Send + 'static>(
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

    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            // Take SQLite's write lock up front: a deferred transaction that reads and then
            // writes could fail to upgrade under a concurrent writer.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            // PostgreSQL locks the rows it updates; the dossier row is locked explicitly.
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Records a procedure version. Returns false when that version is already deployed.
    pub async fn save_procedure(&self, p: &StoredProcedure) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(sql(
            self.backend,
            "INSERT INTO procedures (code, version, name, source, forms, deployed_at)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (code, version) DO NOTHING",
        ))
        .bind(&p.code)
        .bind(i64::from(p.version))
        .bind(&p.name)
        .bind(&p.source)
        .bind(p.forms.to_string())
        .bind(micros(p.deployed_at))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn procedures(&self) -> Result<Vec<StoredProcedure>, StoreError> {
        let rows = sqlx::query(sql(self.backend, "SELECT code, version, name, source, forms, deployed_at FROM procedures ORDER BY code, version"),
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let forms: String = r.try_get("forms")?;
                Ok(StoredProcedure {
                    code: r.try_get("code")?,
                    version: u32::try_from(r.try_get::<i64, _>("version")?).unwrap_or(0),
                    name: r.try_get("name")?,
                    source: r.try_get("source")?,
                    forms: serde_json::from_str(&forms)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    deployed_at: from_micros(r.try_get("deployed_at")?),
                })
            })
            .collect()
    }

    /// The stored events of a dossier, in order.
    pub async fn events(&self, code: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.events_after(code, 0).await
    }

    /// The stored events of a dossier after event `seq`, in order: what a state folded up to
    /// `seq` still lacks. Each record's `prev_hash` is the hash of the event before it (event
    /// `seq` itself is read for the first one). Events of a sealed stream come from its
    /// archive, with their hashes recomputed from the records (the archive keeps a check of
    /// each; `audit verify` compares them).
    pub async fn events_after(&self, code: &str, seq: u64) -> Result<Vec<EventRecord>, StoreError> {
        let from = seq.max(1);
        let mut stored = self.event_rows(code, from).await?;
        let mut hashes: Vec<Vec<u8>> = Vec::new();
        if stored.is_empty() && seq > 0 && self.head_seq(code).await? == Some(seq) {
            // Nothing after `seq`, whose row was sealed: no need to open the archive.
            return Ok(Vec::new());
        }
        if stored.first().map(|e| e.seq) != Some(from) {
            // The events before the first row (all of them, if none) may be sealed.
            if let Some(archive) = self.archive(code).await?
                && archive.upto >= from
            {
                let archived =
                    self.unpack(&archive)
                        .await?
                        .map_err(|e| StoreError::ArchiveDamaged {
                            dossier: code.to_owned(),
                            problem: e.to_string(),
                        })?;
                let (digests, _) = archive::recompute_hashes(code, &archived);
                let skip = usize::try_from(from - 1).unwrap_or(usize::MAX);
                hashes.extend(digests.iter().skip(skip).map(|d| d.to_vec()));
                let mut all: Vec<StoredEvent> = archived.into_iter().skip(skip).collect();
                all.append(&mut stored);
                stored = all;
            }
        }
        hashes.extend(stored.iter().skip(hashes.len()).map(|e| e.hash.clone()));
        if stored.is_empty() {
            if seq > 0 {
                return Err(StoreError::Corrupt(format!(
                    "{code}: event {seq} is missing from its stream"
                )));
            }
            return Ok(Vec::new());
        }
        let mut prev = audit::GENESIS.to_owned();
        let mut out = Vec::with_capacity(stored.len());
        for (i, (e, hash)) in stored.into_iter().zip(hashes).enumerate() {
            let expected = from + i as u64;
            if e.seq != expected {
                return Err(StoreError::Corrupt(format!(
                    "{code}: event {expected} is missing from its stream"
                )));
            }
            let hash = hex::encode(hash);
            if i == 0 && seq > 0 {
                prev = hash;
                continue;
            }
            out.push(EventRecord {
                event: serde_json::from_str(&e.payload)
                    .map_err(|err| StoreError::Corrupt(format!("{code} event {}: {err}", e.seq)))?,
                dossier: code.to_owned(),
                seq: e.seq,
                at: from_micros(e.at),
                actor_id: e.actor_id,
                actor_name: e.actor_name,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            });
        }
        Ok(out)
    }

    /// The event rows of a dossier from event `from` on (not the sealed ones), as stored.
    async fn event_rows(&self, code: &str, from: u64) -> Result<Vec<StoredEvent>, StoreError> {
        sqlx::query(sql(
            self.backend,
            "SELECT seq, at, actor_id, actor_name, payload, hash FROM events
             WHERE dossier_code = ? AND seq >= ? ORDER BY seq",
        ))
        .bind(code)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredEvent {
                seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
                at: r.try_get("at")?,
                actor_id: r.try_get("actor_id")?,
                actor_name: r.try_get("actor_name")?,
                payload: r.try_get("payload")?,
                hash: r.try_get("hash")?,
            })
        })
        .collect()
    }

    /// [`Self::event_rows`] as one aggregated row, as `verify` reads streams: each row crossing
    /// from sqlx's connection thread costs more than its content, so the sealer reads whole
    /// streams this way. The stored payload text comes back exactly (JSON string escaping
    /// round-trips).
    async fn event_rows_aggregated(
        &self,
        code: &str,
        from: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let statement = match self.backend {
            Backend::Sqlite => {
                "SELECT json_group_array(json_array(seq, at, actor_id, actor_name, payload,
                    lower(hex(hash))) ORDER BY seq)
                 FROM events WHERE dossier_code = ? AND seq >= ?"
            }
            Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(seq, at, actor_id, actor_name,
                    payload, encode(hash, 'hex')) ORDER BY seq)::text, '[]')
                 FROM events WHERE dossier_code = ? AND seq >= ?"
            }
        };
        let text: String = sqlx::query_scalar(sql(self.backend, statement))
            .bind(code)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .fetch_one(&self.pool)
            .await?;
        type Row = (i64, i64, String, String, String, String);
        let rows: Vec<Row> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{code}: events unreadable: {e}")))?;
        rows.into_iter()
            .map(|(seq, at, actor_id, actor_name, payload, hash)| {
                Ok(StoredEvent {
                    seq: u64::try_from(seq).unwrap_or(0),
                    at,
                    actor_id,
                    actor_name,
                    payload,
                    hash: hex::decode(&hash)
                        .map_err(|e| StoreError::Corrupt(format!("{code} event {seq}: {e}")))?,
                })
            })
            .collect()
    }

    /// The sequence number of a dossier's last event.
    async fn head_seq(&self, code: &str) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar(sql(self.backend, "SELECT seq FROM dossiers WHERE code = ?"))
                .bind(code)
                .fetch_optional(&self.pool)
                .await?;
        Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
    }

    /// The archive of a dossier's sealed events, if it has one.
    pub async fn archive(&self, code: &str) -> Result<Option<Archive>, StoreError> {
        let statement = format!(
            "SELECT {} FROM event_archives a WHERE a.dossier_code = ?",
            archive_columns(self.backend)
        );
        let row = sqlx::query(sql_dyn(self.backend, statement))
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| archive_row(code, &r)).transpose()
    }

    /// An archive's events, decompressed with the dictionary it names; `Err` inside when the
    /// archive cannot be read (damaged, or its dictionary is not stored).
    async fn unpack(
        &self,
        archive: &Archive,
    ) -> Result<Result<Vec<StoredEvent>, ArchiveError>, StoreError> {
        Ok(match self.dictionary(archive.dictionary).await? {
            Some(d) => archive::unpack(archive, &d),
            None => Err(ArchiveError::Unreadable(format!(
                "it needs dictionary {}, which is not stored",
                archive.dictionary
            ))),
        })
    }

    /// A dictionary (0: none), prepared once per process: stored ones never change.
    async fn dictionary(&self, id: i64) -> Result<Option<std::sync::Arc<Dictionary>>, StoreError> {
        if let Some(d) = self.dictionaries.lock().expect("dictionaries").get(&id) {
            return Ok(Some(d.clone()));
        }
        let prepared = if id == 0 {
            Dictionary::none()
        } else {
            let bytes: Option<Vec<u8>> = sqlx::query_scalar(sql(
                self.backend,
                "SELECT bytes FROM archive_dictionaries WHERE id = ?",
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            Dictionary::new(id, &bytes)
        }
        .map_err(|e| StoreError::Corrupt(format!("dictionary {id}: {e}")))?;
        let d = std::sync::Arc::new(prepared);
        self.dictionaries
            .lock()
            .expect("dictionaries")
            .insert(id, d.clone());
        Ok(Some(d))
    }

    /// The newest stored dictionary's id, which new archives are compressed with (0: none
    /// yet). Looked up at most every 10 s: any stored dictionary reads back, so one trained
    /// on another node a moment ago can wait.
    pub async fn current_dictionary(&self) -> Result<i64, StoreError> {
        if let Some((at, id)) = *self.current_dictionary.lock().expect("current_dictionary")
            && at.elapsed() < std::time::Duration::from_secs(10)
        {
            return Ok(id);
        }
        let id: Option<i64> = sqlx::query_scalar(sql(
            self.backend,
            "SELECT MAX(id) FROM archive_dictionaries",
        ))
        .fetch_one(&self.pool)
        .await?;
        let id = id.unwrap_or(0);
        *self.current_dictionary.lock().expect("current_dictionary") =
            Some((std::time::Instant::now(), id));
        Ok(id)
    }

    /// How many archives exist, up to `cap` (counting stops there).
    pub async fn archive_count(&self, cap: u32) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sql(
            self.backend,
            "SELECT COUNT(*) FROM (SELECT 1 FROM event_archives LIMIT ?) AS a",
        ))
        .bind(i64::from(cap))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Makes a dictionary of the newest `samples` archives' streams (at least
    /// [`archive::MIN_SAMPLES`], else none is made) and stores it as the current one. Returns
    /// its id.
    pub async fn train_dictionary(
        &self,
        samples: u32,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let statement = format!(
            "SELECT a.dossier_code, {} FROM event_archives a
             ORDER BY a.dossier_code DESC LIMIT ?",
            archive_columns(self.backend)
        );
        let rows = sqlx::query(sql_dyn(self.backend, statement))
            .bind(i64::from(samples))
            .fetch_all(&self.pool)
            .await?;
        let mut bodies = Vec::with_capacity(rows.len());
        for r in &rows {
            let code: String = r.try_get("dossier_code")?;
            // A damaged archive is left out: `audit verify` reports it.
            let Ok(a) = archive_row(&code, r) else {
                continue;
            };
            if let Some(d) = self.dictionary(a.dictionary).await?
                && let Ok(json) = archive::records(&a, &d)
            {
                bodies.push(json);
            }
        }
        if bodies.len() < archive::MIN_SAMPLES {
            return Ok(None);
        }
        let count = bodies.len();
        // Newest last: zstd looks back into the end of a raw dictionary first.
        bodies.reverse();
        let bytes = Dictionary::from_streams(&bodies);
        let _turn = self.write_turn().await;
        // Ids only grow; another node training at the same moment makes this insert a no-op.
        let done = sqlx::query(sql(
            self.backend,
            "INSERT INTO archive_dictionaries (id, trained_at, samples, bytes)
             SELECT COALESCE(MAX(id), 0) + 1, ?, ?, ? FROM archive_dictionaries WHERE true
             ON CONFLICT (id) DO NOTHING",
        ))
        .bind(micros(at))
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .bind(bytes)
        .execute(&self.pool)
        .await?
        .rows_affected();
        drop(_turn);
        *self.current_dictionary.lock().expect("current_dictionary") = None;
        if done == 0 {
            return Ok(None);
        }
        Ok(Some(self.current_dictionary().await?))
    }

    /// Dossiers ready to be sealed, least recently changed first: closed, settled (no open task,
    /// no job left in the queue), with events not yet sealed, unchanged since `before`.
    pub async fn settled_unsealed(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SealCandidate>, StoreError> {
        sqlx::query(sql(
            self.backend,
            "SELECT code, seq, last_hash, sealed_seq FROM dossiers d
             WHERE closed = 1 AND sealed_seq < seq AND updated_at <= ?
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.dossier_code = d.code)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.dossier_code = d.code)
             ORDER BY updated_at, code LIMIT ?",
        ))
        .bind(micros(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(SealCandidate {
                code: r.try_get("code")?,
                seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
                head: r.try_get("last_hash")?,
                sealed: u64::try_from(r.try_get::<i64, _>("sealed_seq")?).unwrap_or(0),
            })
        })
        .collect()
    }

    /// Seals the events of each candidate into its archive (see [`crate::archive`]), all in one
    /// transaction: the archive replaces the event rows and the letters' rows (the letters are in
    /// the events). A stream that does not verify is left as it is, and a dossier that changed
    /// since it was read is skipped (sealed on a later pass).
    pub async fn seal(&self, candidates: &[SealCandidate]) -> Result<SealReport, StoreError> {
        let mut report = SealReport::default();
        // Read, verify and compress before taking the writer's turn: events up to a sequence
        // never change, and the conditional update below catches a dossier that moved on.
        let mut ready = Vec::with_capacity(candidates.len());
        for c in candidates {
            match self.pack(c).await? {
                Ok(archive) => ready.push((c, archive)),
                // Read while another node sealed or appended to it: not broken, just moved on.
                Err(_) if self.moved_on(c).await? => report.changed += 1,
                Err(b) => report.broken.push(b),
            }
        }
        if ready.is_empty() {
            return Ok(report);
        }
        // A few dossiers a transaction: on SQLite the sealer holds the writer's turn meanwhile,
        // and commands wait behind it.
        const PER_TRANSACTION: usize = 8;
        if let Some(w) = &self.sqlite_writer {
            // On the writer thread, one hand-off a transaction: through sqlx each statement
            // was a round trip to its connection's thread, all of them holding the turn.
            let mut owned = Vec::with_capacity(ready.len());
            for (c, archive) in ready {
                owned.push((c.clone(), archive));
            }
            while !owned.is_empty() {
                let rest = owned.split_off(owned.len().min(PER_TRANSACTION));
                let chunk = std::mem::replace(&mut owned, rest);
                let part = self
                    .in_write_turn(w, move |conn| seal_on(conn, &chunk))
                    .await??;
                report.sealed += part.sealed;
                report.events += part.events;
                report.changed += part.changed;
            }
            return Ok(report);
        }
        let mut ready = ready.into_iter().peekable();
        while ready.peek().is_some() {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            for (c, archive) in ready.by_ref().take(PER_TRANSACTION) {
                let moved = sqlx::query(sql(self.backend, SEAL_MARK))
                    .bind(i64::try_from(archive.upto).unwrap_or(i64::MAX))
                    .bind(&c.code)
                    .bind(i64::try_from(c.seq).unwrap_or(i64::MAX))
                    .bind(i64::try_from(c.sealed).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved == 0 {
                    report.changed += 1;
                    continue;
                }
                let mut batch = Batch::default();
                batch.push(
                    SEAL_ARCHIVE,
                    vec![
                        Arg::Text(c.code.clone()),
                        Arg::Int(i64::try_from(archive.upto).unwrap_or(i64::MAX)),
                        Arg::Bytes(archive.head),
                        Arg::Bytes(archive.checks),
                        Arg::Int(archive.dictionary),
                        Arg::Bytes(archive.body),
                    ],
                );
                batch.push(
                    SEAL_DELETE_EVENTS,
                    vec![
                        Arg::Text(c.code.clone()),
                        Arg::Int(i64::try_from(archive.upto).unwrap_or(i64::MAX)),
                    ],
                );
                batch.push(SEAL_DELETE_NOTIFICATIONS, vec![Arg::Text(c.code.clone())]);
                batch.run(self.backend, &mut tx).await?;
                report.sealed += 1;
                report.events += c.seq - c.sealed;
            }
            tx.commit().await?;
        }
        Ok(report)
    }

    /// Whether a candidate's dossier changed since it was read (appended to or sealed).
    async fn moved_on(&self, c: &SealCandidate) -> Result<bool, StoreError> {
        let row = sqlx::query(sql(
            self.backend,
            "SELECT seq, last_hash, sealed_seq FROM dossiers WHERE code = ?",
        ))
        .bind(&c.code)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(false);
        };
        let seq = u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0);
        let sealed = u64::try_from(r.try_get::<i64, _>("sealed_seq")?).unwrap_or(0);
        let head: String = r.try_get("last_hash")?;
        Ok(seq != c.seq || sealed != c.sealed || head != c.head)
    }

    /// A dossier's sealed events (`sealed` > 0), checked against their archive, and a verifier
    /// for the event rows after them; or where the sealed part breaks. Shared by `verify` and
    /// the sealer, so both judge an archive alike.
    async fn open_sealed(
        &self,
        code: &str,
        archive: Option<&Archive>,
        sealed: u64,
    ) -> Result<Result<(Vec<StoredEvent>, StreamVerifier), ChainBreak>, StoreError> {
        let brk = |seq: u64, problem: String| {
            Ok(Err(ChainBreak {
                dossier: code.to_owned(),
                seq,
                problem,
            }))
        };
        let Some(archive) = archive else {
            return brk(
                1,
                format!("events 1 to {sealed} were sealed but their archive is missing"),
            );
        };
        let archived = match self.unpack(archive).await? {
            Ok(a) => a,
            Err(e) => return brk(1, format!("the archive of events 1 to {sealed}: {e}")),
        };
        let (hashes, bad) = archive::recompute_hashes(code, &archived);
        if let Some(seq) = bad {
            return brk(
                seq,
                "its content does not match its sealed hash: the event was altered".into(),
            );
        }
        if archive.upto != sealed || hashes.last().map(|h| h.as_slice()) != Some(&archive.head) {
            return brk(
                archive.upto,
                format!(
                    "the archive of events 1 to {} does not end on its recorded head (the dossier records {sealed} sealed)",
                    archive.upto
                ),
            );
        }
        let verifier = StreamVerifier::after(code, archive.upto, &hex::encode(&archive.head));
        Ok(Ok((archived, verifier)))
    }

    /// A candidate's whole stream, verified, packed into one archive; or where it breaks.
    async fn pack(&self, c: &SealCandidate) -> Result<Result<Archive, ChainBreak>, StoreError> {
        let brk = |seq: u64, problem: String| {
            Ok(Err(ChainBreak {
                dossier: c.code.clone(),
                seq,
                problem,
            }))
        };
        let (mut stream, mut verifier) = if c.sealed > 0 {
            let archive = match self.archive(&c.code).await {
                Ok(a) => a,
                // Never sealed again: left as evidence, like any stream that does not verify.
                Err(StoreError::ArchiveDamaged { problem, .. }) => return brk(1, problem),
                Err(e) => return Err(e),
            };
            match self
                .open_sealed(&c.code, archive.as_ref(), c.sealed)
                .await?
            {
                Ok(opened) => opened,
                Err(b) => return Ok(Err(b)),
            }
        } else {
            (Vec::new(), StreamVerifier::new(&c.code))
        };
        let rows = self.event_rows_aggregated(&c.code, c.sealed + 1).await?;
        for e in rows.into_iter().take_while(|e| e.seq <= c.seq) {
            if let Some(b) = verifier.next(
                e.seq,
                from_micros(e.at),
                &e.actor_id,
                &e.actor_name,
                &e.payload,
                &hex::encode(&e.hash),
            ) {
                return Ok(Err(b));
            }
            stream.push(e);
        }
        match stream.last() {
            Some(last) if last.seq == c.seq && hex::encode(&last.hash) == c.head => {}
            _ => {
                return brk(
                    c.seq,
                    "the stream does not end on the dossier's head".into(),
                );
            }
        }
        let id = self.current_dictionary().await?;
        let Some(dictionary) = self.dictionary(id).await? else {
            return Err(StoreError::Corrupt(format!(
                "dictionary {id} is not stored"
            )));
        };
        archive::pack(&stream, &dictionary)
            .map(Ok)
            .or_else(|e| brk(1, e.to_string()))
    }

    /// Files a new dossier: allocates its code for the agency and day, lets `decide` turn it
    /// into events, and stores them, all in one transaction. With an idempotency key (actor's
    /// key, request hash), the key is recorded in the same transaction: a key seen before
    /// returns the dossier it filed and files nothing.
    pub async fn create<E: Send + 'static>(
        &self,
        agency_code: &str,
        day: NaiveDate,
        decide: impl FnOnce(&str) -> Result<(Vec<Event>, Dossier), E> + Send + 'static,
        at: DateTime<Utc>,
        actor: (&str, &str),
        key: Option<(&str, &str)>,
    ) -> Result<Result<Created, E>, StoreError> {
        let r = self
            .create_unnoted(agency_code, day, decide, at, actor, key)
            .await;
        self.noted(r)
    }

    async fn create_unnoted<E: Send + 'static>(
        &self,
        agency_code: &str,
        day: NaiveDate,
        decide: impl FnOnce(&str) -> Result<(Vec<Event>, Dossier), E> + Send + 'static,
        at: DateTime<Utc>,
        actor: (&str, &str),
        key: Option<(&str, &str)>,
    ) -> Result<Result<Created, E>, StoreError> {
        let day_key = day.format("%y%m%d").to_string();
        if let Some(w) = &self.sqlite_writer {
            // The whole filing in one hand-off to the writer thread, as a group commit is:
            // through sqlx it was five round trips to a connection's thread, all holding the
            // turn every command waits for.
            let filing = NewDossier {
                agency_code: agency_code.to_owned(),
                day_key,
                at,
                actor: (actor.0.to_owned(), actor.1.to_owned()),
                key: key.map(|(k, h)| (k.to_owned(), h.to_owned())),
            };
            return self
                .in_write_turn(w, move |conn| create_on(conn, &filing, decide))
                .await?;
        }
        let _turn = self.write_turn().await;
        let mut tx = self.begin().await?;
        if let Some((key, hash)) = key {
            // On PostgreSQL a concurrent filing with the same key waits here for the first
            // to commit, then finds its row.
            let claimed = sqlx::query(sql(self.backend, IDEMPOTENCY_CLAIM))
                .bind(actor.0)
                .bind(key)
                .bind(hash)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
            if claimed.rows_affected() == 0 {
                let (body, request_hash): (String, String) =
                    sqlx::query_as(sql(self.backend, IDEMPOTENCY_EARLIER))
                        .bind(actor.0)
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.rollback().await?;
                return Ok(Ok(Created::Earlier {
                    code: body,
                    request_hash,
                }));
            }
        }
        let n: i64 = sqlx::query_scalar(sql(self.backend, NEXT_DOSSIER_NUMBER))
            .bind(agency_code)
            .bind(&day_key)
            .fetch_one(&mut *tx)
            .await?;
        let code = format!("{agency_code}-{day_key}-{n:04}");
        let (events, state) = match decide(&code) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        let head = write(
            self.backend,
            &mut tx,
            &Append {
                at,
                actor_id: actor.0,
                actor_name: actor.1,
                events: &events,
                state: &state,
                before: None,
            },
        )
        .await?;
        if let Some((key, _)) = key {
            sqlx::query(sql(self.backend, IDEMPOTENCY_FILED))
                .bind(&code)
                .bind(actor.0)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(Created::New(Box::new(state), head)))
    }

    /// The (code, version) of every deployed procedure.
    pub async fn procedure_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as(sql(self.backend, "SELECT code, version FROM procedures"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(c, v)| (c, u32::try_from(v).unwrap_or(0)))
            .collect())
    }

    /// Appends events to an existing dossier whose state was `append.before`.
    /// Returns the hash of the last event appended: the new head of the dossier's chain.
    pub async fn append(&self, append: &Append<'_>) -> Result<String, StoreError> {
        let r = self.append_unnoted(append).await;
        self.noted(r)
    }

    async fn append_unnoted(&self, append: &Append<'_>) -> Result<String, StoreError> {
        if let (Some(writer), Some((before, head))) = (&self.sqlite_writer, append.before) {
            return self.append_grouped(writer, append, before.seq, head).await;
        }
        let _turn = self.write_turn().await;
        let mut tx = self.begin().await?;
        let head = write(self.backend, &mut tx, append).await?;
        tx.commit().await?;
        Ok(head)
    }

    /// SQLite's one writer, shared: the append is prepared (hashes, statements) before the
    /// writer's turn and queued; the writer that gets the turn commits every queued append in
    /// one transaction. Under load many commands share a commit; alone, it is one transaction
    /// as before. The caller returns only once its append is committed (or refused).
    async fn append_grouped(
        &self,
        writer: &sqlite::Writer,
        append: &Append<'_>,
        expected_seq: u64,
        head: &str,
    ) -> Result<String, StoreError> {
        let prepared = prepare(self.backend, append, expected_seq, head.to_owned())?;
        let head = prepared.head.clone();
        let write = std::sync::Arc::new(GroupWrite {
            expected_seq,
            prepared,
            outcome: std::sync::Mutex::new(None),
            decided: tokio::sync::Notify::new(),
        });
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::sync::Arc::clone(&write));
        // An append another writer's group carried is answered as soon as that group is
        // committed. Waiting for the turn to learn it made a convoy: every waiter, woken one
        // after the other, held the turn until the runtime got to it (p99 8.7 ms for such an
        // append under the HTTP benchmark, while the commits themselves took 0.9 ms).
        let turn = tokio::select! {
            _ = write.decided.notified() => match write.take_outcome() {
                Some(outcome) => return outcome.map(|()| head),
                None => std::sync::Arc::clone(&self.writer).lock_owned().await,
            },
            turn = std::sync::Arc::clone(&self.writer).lock_owned() => turn,
        };
        if let Some(outcome) = write.take_outcome() {
            // Committed (or refused) by the writer before us.
            return outcome.map(|()| head);
        }
        let writes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        // The commit holds the turn and finishes even if this caller goes away: the writers
        // whose appends it carries wait for it.
        writer
            .run(move |conn| {
                let _turn = turn;
                commit_group(conn, &writes);
            })
            .await?;
        write
            .take_outcome()
            .unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "the append was not committed".into(),
                ))
            })
            .map(|()| head)
    }

    /// Claims up to `limit` jobs due at `now`, each under a lease until `now + lease`.
    /// A job whose lease ran out (its worker died) is claimed again.
    pub async fn claim_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let r = self.claim_due_jobs_unnoted(now, limit, lease).await;
        self.noted(r)
    }

    async fn claim_due_jobs_unnoted(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let lease_until = micros(now + lease);
        if let Some(w) = &self.sqlite_writer {
            // The look and the claim in one hand-off to the writer thread.
            let (now, limit) = (micros(now), i64::from(limit));
            return self
                .in_write_turn(w, move |conn| claim_on(conn, now, lease_until, limit))
                .await?;
        }
        // Look before taking the write lock: an idle worker polling must not commit an empty
        // write transaction each time (on SQLite that would queue behind every writer).
        let due: Option<i64> = sqlx::query_scalar(sql(self.backend, ANY_JOB_DUE))
            .bind(micros(now))
            .bind(micros(now))
            .fetch_optional(&self.pool)
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        // One statement, atomic on its own: no transaction around it.
        let _turn = self.write_turn().await;
        let statement = match self.backend {
            // SQLite has one writer at a time: the statement is the claim.
            Backend::Sqlite => sql(self.backend, CLAIM_JOBS_SQLITE),
            // Several nodes claim at once: each takes rows no one else has locked.
            Backend::Postgres => sql(
                self.backend,
                "UPDATE jobs SET lease_until = ?
                 WHERE (dossier_code, job_id) IN (
                     SELECT dossier_code, job_id FROM jobs
                     WHERE state = 'pending' AND run_at <= ? AND (lease_until IS NULL OR lease_until < ?)
                     ORDER BY run_at LIMIT ?
                     FOR UPDATE SKIP LOCKED)
                 RETURNING dossier_code, job_id",
            ),
        };
        let rows = sqlx::query(statement)
            .bind(lease_until)
            .bind(micros(now))
            .bind(micros(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ClaimedJob {
                    dossier: r.try_get("dossier_code")?,
                    job: r.try_get("job_id")?,
                    lease_until,
                })
            })
            .collect()
    }

    /// Extends a claimed job's lease just before running it, so a batch does not outlive its
    /// lease while earlier jobs run. False when the lease was lost (another node took the job
    /// over): the job must not be run.
    pub async fn renew_lease(
        &self,
        job: &mut ClaimedJob,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(sql(
            self.backend,
            "UPDATE jobs SET lease_until = ? WHERE dossier_code = ? AND job_id = ? AND lease_until = ?",
        ))
        .bind(micros(until))
        .bind(&job.dossier)
        .bind(&job.job)
        .bind(job.lease_until)
        .execute(&self.pool)
        .await?;
        let renewed = r.rows_affected() == 1;
        if renewed {
            job.lease_until = micros(until);
        }
        Ok(renewed)
    }

    /// Gives a claimed job back without recording an attempt (the worker could not run it).
    pub async fn release_job(&self, job: &ClaimedJob) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(sql(
            self.backend,
            "UPDATE jobs SET lease_until = NULL WHERE dossier_code = ? AND job_id = ?",
        ))
        .bind(&job.dossier)
        .bind(&job.job)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the next pending job is due, if any.
    pub async fn next_job_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let m: Option<i64> = sqlx::query_scalar(sql(
            self.backend,
            "SELECT MIN(run_at) FROM jobs WHERE state = 'pending'",
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(m.map(from_micros))
    }

    /// Open tasks for an officer: their agency, any of their roles; earliest due first.
    pub async fn worklist(
        &self,
        agency: &str,
        roles: &[String],
        claimed_by: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<TaskRow>, StoreError> {
        if roles.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; roles.len()].join(", ");
        let statement = format!(
            "SELECT * FROM tasks WHERE agency_code = ? AND role IN ({placeholders})
             {} ORDER BY due_at IS NULL, due_at, opened_at LIMIT ? OFFSET ?",
            if claimed_by.is_some() {
                "AND claimed_by = ?"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(sql_dyn(self.backend, statement)).bind(agency);
        for r in roles {
            q = q.bind(r);
        }
        if let Some(c) = claimed_by {
            q = q.bind(c);
        }
        let rows = q
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_row).collect()
    }

    /// A dossier's stored rows (for views and for the replay check).
    pub async fn projection(&self, code: &str) -> Result<Option<Projection>, StoreError> {
        let Some(row) = sqlx::query(sql(self.backend, "SELECT * FROM dossiers WHERE code = ?"))
            .bind(code)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let dossier = dossier_row(&row)?;
        let tasks = sqlx::query(sql(
            self.backend,
            "SELECT * FROM tasks WHERE dossier_code = ? ORDER BY task_id",
        ))
        .bind(code)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_row)
        .collect::<Result<Vec<_>, _>>()?;
        let jobs = sqlx::query(sql(
            self.backend,
            "SELECT * FROM jobs WHERE dossier_code = ? ORDER BY job_id",
        ))
        .bind(code)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job_row)
        .collect::<Result<Vec<_>, _>>()?;
        let incidents = sqlx::query(sql(
            self.backend,
            "SELECT * FROM incidents WHERE dossier_code = ? ORDER BY incident_id",
        ))
        .bind(code)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(incident_row)
        .collect::<Result<Vec<_>, _>>()?;
        // A sealed dossier's letters are in its archive (their rows were dropped when it was
        // sealed): they are read from its events.
        let notifications = if row.try_get::<i64, _>("sealed_seq")? > 0 {
            let events = self.events(code).await?;
            Dossier::fold(events.iter().map(|e| (e.at, &e.event)))
                .map(|d| Projection::of(&d).notifications)
                .unwrap_or_default()
        } else {
            sqlx::query(sql(
                self.backend,
                "SELECT * FROM notifications WHERE dossier_code = ? ORDER BY created_at, notification_id",
            ))
            .bind(code)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(notification_row)
            .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Some(Projection {
            dossier,
            tasks,
            jobs,
            incidents,
            notifications,
        }))
    }

    /// Dossiers of one owner, newest first.
    pub async fn dossiers_of_owner(
        &self,
        owner_id: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DossierRow>, StoreError> {
        sqlx::query(sql(self.backend, "SELECT * FROM dossiers WHERE owner_id = ? ORDER BY filed_at DESC, code LIMIT ? OFFSET ?"))
            .bind(owner_id)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(dossier_row)
            .collect()
    }

    /// Open dossiers whose due date is at or before `before`.
    pub async fn dossiers_due_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DossierRow>, StoreError> {
        sqlx::query(sql(self.backend, "SELECT * FROM dossiers WHERE closed = 0 AND paused = 0 AND due_at IS NOT NULL AND due_at <= ?
             AND status NOT IN (9, 10) AND (apology_sent = 0 OR overdue = 0)
             ORDER BY due_at LIMIT ?"),
        )
        .bind(micros(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(dossier_row)
        .collect()
    }

    /// Dossiers of an agency, filtered, newest first.
    pub async fn search(&self, q: &DossierQuery) -> Result<Vec<DossierRow>, StoreError> {
        let mut statement = String::from("SELECT * FROM dossiers WHERE 1 = 1");
        if q.agency.is_some() {
            statement.push_str(" AND agency_code = ?");
        }
        if q.code.is_some() {
            statement.push_str(" AND code = ?");
        }
        if q.owner_id.is_some() {
            statement.push_str(" AND owner_id = ?");
        }
        if q.status.is_some() {
            statement.push_str(" AND status = ?");
        }
        if let Some(now) = q.overdue_at {
            statement.push_str(&format!(
                " AND closed = 0 AND status NOT IN (9, 10) AND due_at IS NOT NULL AND due_at < {}",
                micros(now)
            ));
        }
        statement.push_str(" ORDER BY filed_at DESC, code LIMIT ? OFFSET ?");
        let mut query = sqlx::query(sql_dyn(self.backend, statement));
        for v in [&q.agency, &q.code, &q.owner_id].into_iter().flatten() {
            query = query.bind(v.clone());
        }
        if let Some(s) = q.status {
            query = query.bind(i64::from(s));
        }
        query
            .bind(i64::from(q.limit))
            .bind(i64::from(q.offset))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(dossier_row)
            .collect()
    }

    pub async fn open_incidents(&self) -> Result<Vec<IncidentRow>, StoreError> {
        sqlx::query(sql(
            self.backend,
            "SELECT * FROM incidents WHERE resolution IS NULL ORDER BY opened_at",
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(incident_row)
        .collect()
    }

    /// Verifies the hash chain of every dossier, or of one.
    pub async fn verify(&self, only: Option<&str>) -> Result<VerifyReport, StoreError> {
        // One row per dossier: its head, its archive if sealed, and its event rows aggregated
        // into a JSON array in order. A row crossing from the database driver costs far more
        // than hashing an event, so streams travel whole. The stored text of each payload comes
        // back exactly (JSON string escaping round-trips), so the hashes are computed over the
        // bytes that were stored.
        let filter = if only.is_some() {
            "WHERE d.code = ?"
        } else {
            ""
        };
        let archive = archive_columns(self.backend);
        let statement = match self.backend {
            Backend::Sqlite => format!(
                "SELECT d.code, d.seq, d.last_hash, d.sealed_seq, {archive},
                    (SELECT json_group_array(json_array(e.seq, e.at, e.actor_id, e.actor_name,
                        e.payload, lower(hex(e.hash))) ORDER BY e.seq)
                     FROM events e WHERE e.dossier_code = d.code) AS stream
                 FROM dossiers d LEFT JOIN event_archives a ON a.dossier_code = d.code
                 {filter} ORDER BY d.code"
            ),
            Backend::Postgres => format!(
                "SELECT d.code, d.seq, d.last_hash, d.sealed_seq, {archive},
                    COALESCE((SELECT json_agg(json_build_array(e.seq, e.at, e.actor_id,
                        e.actor_name, e.payload, encode(e.hash, 'hex')) ORDER BY e.seq)
                     FROM events e WHERE e.dossier_code = d.code)::text, '[]') AS stream
                 FROM dossiers d LEFT JOIN event_archives a ON a.dossier_code = d.code
                 {filter} ORDER BY d.code"
            ),
        };
        let mut q = sqlx::query(sql_dyn(self.backend, statement));
        if let Some(code) = only {
            q = q.bind(code);
        }
        type Row = (i64, i64, String, String, String, String);
        use futures_util::StreamExt;
        let mut rows = q.fetch(&self.pool);
        let mut report = VerifyReport::default();
        while let Some(row) = rows.next().await {
            let row = row?;
            let code: String = row.try_get("code")?;
            let head_seq = u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0);
            let head: String = row.try_get("last_hash")?;
            let sealed = u64::try_from(row.try_get::<i64, _>("sealed_seq")?).unwrap_or(0);
            let archive = match row.try_get::<Option<i64>, _>("upto_seq")? {
                Some(_) => match archive_row(&code, &row) {
                    Ok(a) => Some(a),
                    Err(StoreError::ArchiveDamaged { problem, .. }) => {
                        // This dossier's history cannot be checked; the others still are.
                        report.dossiers += 1;
                        report.breaks.push(ChainBreak {
                            dossier: code,
                            seq: 1,
                            problem: format!("its archive of sealed events is damaged: {problem}"),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let stream: String = row.try_get("stream")?;
            let events: Vec<Row> = serde_json::from_str(&stream)
                .map_err(|e| StoreError::Corrupt(format!("{code}: events unreadable: {e}")))?;
            report.dossiers += 1;
            report.events += events.len() as u64;
            // The sealed part first: the live rows chain to the archive's head.
            let mut verifier = StreamVerifier::new(&code);
            let mut end = None;
            if sealed > 0 || archive.is_some() {
                match self.open_sealed(&code, archive.as_ref(), sealed).await? {
                    Ok((archived, after)) => {
                        report.events += archived.len() as u64;
                        end = archived
                            .last()
                            .map(|e| (e.seq, hex::encode(&archive.as_ref().expect("opened").head)));
                        verifier = after;
                    }
                    Err(b) => {
                        report.breaks.push(b);
                        continue;
                    }
                }
            }
            let mut broken = false;
            for (seq, at, actor_id, actor_name, payload, hash) in &events {
                if let Some(b) = verifier.next(
                    u64::try_from(*seq).unwrap_or(0),
                    from_micros(*at),
                    actor_id,
                    actor_name,
                    payload,
                    hash,
                ) {
                    report.breaks.push(b);
                    broken = true;
                }
            }
            if let Some((seq, .., hash)) = events.into_iter().next_back() {
                end = Some((u64::try_from(seq).unwrap_or(0), hash));
            }
            // The stored head of each chain must be its last event: a truncated stream is a break.
            if !broken
                && end
                    .as_ref()
                    .is_none_or(|(s, h)| *s != head_seq || *h != head)
            {
                report.breaks.push(ChainBreak {
                    dossier: code,
                    seq: head_seq,
                    problem: "the stream ends before the dossier's last recorded event: events were removed".into(),
                });
            }
        }
        Ok(report)
    }
}

/// A dossier the sealer may seal: its head as it was read, and what is already sealed.
#[derive(Debug, Clone)]
pub struct SealCandidate {
    pub code: String,
    pub seq: u64,
    pub head: String,
    pub sealed: u64,
}

/// What a sealing pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SealReport {
    /// Dossiers sealed, and the events moved into their archives.
    pub sealed: u64,
    pub events: u64,
    /// Dossiers that changed after they were read: left for a later pass.
    pub changed: u64,
    /// Streams that do not verify: never sealed.
    pub broken: Vec<ChainBreak>,
}

/// Filters for searching dossiers.
#[derive(Debug, Clone, Default)]
pub struct DossierQuery {
    pub agency: Option<String>,
    pub code: Option<String>,
    pub owner_id: Option<String>,
    pub status: Option<u8>,
    /// Only dossiers past their due date at this instant.
    pub overdue_at: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u32,
}

/// Appends the events and updates the read models; returns the new head of the chain.
async fn write(
    b: Backend,
    tx: &mut Transaction<'static, Any>,
    a: &Append<'_>,
) -> Result<String, StoreError> {
    let (seq, prev) = match a.before {
        None => (0u64, audit::GENESIS.to_owned()),
        Some((before, head)) => (before.seq, head.to_owned()),
    };
    let prepared = prepare(b, a, seq, prev)?;
    match a.before {
        None => {
            let mut batch = Batch::default();
            insert_dossier(&mut batch, &prepared.dossier, &prepared.head);
            batch.statements.extend(prepared.batch.statements);
            batch.run(b, tx).await?;
        }
        Some((before, _)) => apply(b, tx, before.seq, &prepared).await?,
    }
    Ok(prepared.head)
}

/// An append made ready to store: the dossier row, the new head of the chain, and a batch
/// with the events and every read-model row that changed. Pure: no database.
#[derive(Clone)]
struct Prepared {
    dossier: DossierRow,
    head: String,
    batch: Batch,
}

fn prepare(
    b: Backend,
    a: &Append<'_>,
    mut seq: u64,
    mut prev: String,
) -> Result<Prepared, StoreError> {
    let code = &a.state.code;
    let mut batch = Batch::default();
    // One multi-row INSERT per batch of events: a statement costs far more than a row.
    const COLUMNS: usize = 8;
    const ROWS_PER_STATEMENT: usize = 64;
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    for chunk in a.events.chunks(ROWS_PER_STATEMENT) {
        let mut args = Vec::with_capacity(chunk.len() * COLUMNS);
        for e in chunk {
            seq += 1;
            let (payload, kind) = audit::event_text(e);
            let digest = audit::chain_digest(
                &prev,
                &audit::canonical(code, seq, a.at, a.actor_id, a.actor_name, &payload),
            );
            prev = hex::encode(digest);
            args.extend([
                Arg::Text(code.to_string()),
                Arg::Int(i64::try_from(seq).unwrap_or(i64::MAX)),
                Arg::Text(kind),
                Arg::Int(micros(a.at)),
                Arg::Text(a.actor_id.to_owned()),
                Arg::Text(a.actor_name.to_owned()),
                Arg::Text(payload),
                Arg::Bytes(digest.to_vec()),
            ]);
        }
        batch.push(
            format!(
                "INSERT INTO events (dossier_code, seq, type, at, actor_id, actor_name, payload, hash) VALUES {}",
                vec![row.as_str(); chunk.len()].join(", ")
            ),
            args,
        );
    }
    if seq != a.state.seq {
        return Err(StoreError::Corrupt(format!(
            "dossier {code}: state is at event {} but the stream at {seq}",
            a.state.seq
        )));
    }
    let p = Projection::of(a.state);
    project(b, &mut batch, a, &p);
    Ok(Prepared {
        dossier: p.dossier,
        head: prev,
        batch,
    })
}

/// Stores a prepared append to an existing dossier that was at `expected_seq`. The dossier row
/// first: the update holds only if nobody appended since the state the events were decided
/// on; on PostgreSQL it also locks the row, so a concurrent append waits here, then finds the
/// sequence moved on. The rest follows as one batch: on SQLite a single round trip to the
/// connection's thread, where each statement used to be one.
async fn apply(
    b: Backend,
    tx: &mut Transaction<'static, Any>,
    expected_seq: u64,
    prepared: &Prepared,
) -> Result<(), StoreError> {
    let code = &prepared.dossier.code;
    if !update_dossier(b, tx, &prepared.dossier, expected_seq, &prepared.head).await? {
        let current: Option<i64> = sqlx::query_scalar(sql(b, DOSSIER_SEQ))
            .bind(code)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(current) = current else {
            return Err(StoreError::Corrupt(format!("dossier {code} has no row")));
        };
        return Err(StoreError::Conflict {
            code: code.clone(),
            expected: expected_seq,
            current: u64::try_from(current).unwrap_or(0),
        });
    }
    prepared.batch.run(b, tx).await
}

/// A value bound in a [`Batch`].
#[derive(Clone)]
enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
}

/// Statements run in order inside the caller's transaction. SQLite takes them as one
/// multi-statement query, its parameters bound in order across the statements: one round trip
/// to the connection's thread. PostgreSQL's protocol takes one statement with parameters at a
/// time.
#[derive(Clone, Default)]
struct Batch {
    statements: Vec<(String, Vec<Arg>)>,
}

impl Batch {
    fn push(&mut self, statement: impl Into<String>, args: Vec<Arg>) {
        self.statements.push((statement.into(), args));
    }

    async fn run(&self, b: Backend, tx: &mut Transaction<'static, Any>) -> Result<(), StoreError> {
        if self.statements.is_empty() {
            return Ok(());
        }
        let groups: Vec<(String, Vec<&Arg>)> = match b {
            Backend::Sqlite => {
                let mut text = String::new();
                let mut all = Vec::new();
                for (statement, args) in &self.statements {
                    text.push_str(statement);
                    text.push_str(";\n");
                    all.extend(args);
                }
                vec![(text, all)]
            }
            Backend::Postgres => self
                .statements
                .iter()
                .map(|(statement, args)| (statement.clone(), args.iter().collect()))
                .collect(),
        };
        for (statement, args) in groups {
            // Not kept prepared: a batch's text varies with what changed, and every connection
            // would otherwise cache its own copy of each variant (megabytes over a pool).
            let mut query = sqlx::query(sql_dyn(b, statement)).persistent(false);
            for arg in args {
                query = match arg {
                    Arg::Int(v) => query.bind(*v),
                    Arg::OptInt(v) => query.bind(*v),
                    Arg::Text(v) => query.bind(v.as_str()),
                    Arg::OptText(v) => query.bind(v.as_deref()),
                    Arg::Bytes(v) => query.bind(v.as_slice()),
                };
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

fn insert_dossier(batch: &mut Batch, d: &DossierRow, last_hash: &str) {
    batch.push(
        "INSERT INTO dossiers (code, procedure_code, procedure_version, agency_code, owner_id, owner_name,
            channel, status, seq, last_hash, filed_at, updated_at, received_at, due_at, closed, paused,
            overdue, apology_sent)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            Arg::Text(d.code.clone()),
            Arg::Text(d.procedure_code.clone()),
            Arg::Int(i64::from(d.procedure_version)),
            Arg::Text(d.agency_code.clone()),
            Arg::Text(d.owner_id.clone()),
            Arg::Text(d.owner_name.clone()),
            Arg::Text(d.channel.clone()),
            Arg::Int(i64::from(d.status)),
            Arg::Int(i64::try_from(d.seq).unwrap_or(i64::MAX)),
            Arg::Text(last_hash.to_owned()),
            Arg::Int(micros(d.filed_at)),
            Arg::Int(micros(d.updated_at)),
            Arg::OptInt(opt_micros(d.received_at)),
            Arg::OptInt(opt_micros(d.due_at)),
            Arg::Int(i64::from(d.closed)),
            Arg::Int(i64::from(d.paused)),
            Arg::Int(i64::from(d.overdue)),
            Arg::Int(i64::from(d.apology_sent)),
        ],
    );
}

/// Where a dossier's row is, when an append found it moved on.
const DOSSIER_SEQ: &str = "SELECT seq FROM dossiers WHERE code = ?";

/// Moves a dossier row to its new state if it is still at the sequence it was decided on.
const UPDATE_DOSSIER: &str =
    "UPDATE dossiers SET status = ?, seq = ?, last_hash = ?, updated_at = ?,
        received_at = ?, due_at = ?, closed = ?, paused = ?, overdue = ?, apology_sent = ?
     WHERE code = ? AND seq = ?";

/// Moves the dossier row from `expected_seq` to the new state; false when it is not at
/// `expected_seq` (someone appended meanwhile).
async fn update_dossier(
    b: Backend,
    tx: &mut Transaction<'static, Any>,
    d: &DossierRow,
    expected_seq: u64,
    last_hash: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(sql(b, UPDATE_DOSSIER))
        .bind(i64::from(d.status))
        .bind(i64::try_from(d.seq).unwrap_or(i64::MAX))
        .bind(last_hash)
        .bind(micros(d.updated_at))
        .bind(opt_micros(d.received_at))
        .bind(opt_micros(d.due_at))
        .bind(i64::from(d.closed))
        .bind(i64::from(d.paused))
        .bind(i64::from(d.overdue))
        .bind(i64::from(d.apology_sent))
        .bind(&d.code)
        .bind(i64::try_from(expected_seq).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The read-model rows that changed between `a.before` and `a.state`.
fn project(b: Backend, batch: &mut Batch, a: &Append<'_>, p: &Projection) {
    let d = &p.dossier;
    // Tasks: the table holds the open ones, so it follows the state exactly.
    let before_tasks = a.before_state().map(|b| &b.tasks);
    if before_tasks != Some(&a.state.tasks) {
        batch.push(
            "DELETE FROM tasks WHERE dossier_code = ?",
            vec![Arg::Text(d.code.clone())],
        );
        for t in &p.tasks {
            batch.push(
                "INSERT INTO tasks (dossier_code, task_id, step, name, role, agency_code, claimed_by, opened_at, due_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    Arg::Text(t.dossier_code.clone()),
                    Arg::Text(t.task_id.clone()),
                    Arg::Text(t.step.clone()),
                    Arg::Text(t.name.clone()),
                    Arg::Text(t.role.clone()),
                    Arg::Text(t.agency_code.clone()),
                    Arg::OptText(t.claimed_by.clone()),
                    Arg::Int(micros(t.opened_at)),
                    Arg::OptInt(opt_micros(t.due_at)),
                ],
            );
        }
    }

    // Jobs: the table is the work queue. A job is upserted when it changed, and leaves the
    // table once finished (its outcome is an event). A job whose attempts or state changed
    // loses its lease, so the next attempt can be claimed; others keep it (a worker may be
    // running them).
    let mut jobs_changed = false;
    for j in a.state.jobs.values() {
        let old = a.before_state().and_then(|b| b.jobs.get(&*j.id));
        if old == Some(j) {
            continue;
        }
        jobs_changed = true;
        let Some(row) = job_projection(&d.code, j) else {
            batch.push(
                "DELETE FROM jobs WHERE dossier_code = ? AND job_id = ?",
                vec![Arg::Text(d.code.clone()), Arg::Text(j.id.to_string())],
            );
            continue;
        };
        batch.push(
            "INSERT INTO jobs (dossier_code, job_id, kind, call, state, attempts, run_at, last_error, lease_until)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)
             ON CONFLICT (dossier_code, job_id) DO UPDATE SET state = excluded.state,
                attempts = excluded.attempts, run_at = excluded.run_at, last_error = excluded.last_error,
                lease_until = NULL",
            vec![
                Arg::Text(row.dossier_code),
                Arg::Text(row.job_id),
                Arg::Text(row.kind),
                Arg::Text(row.call),
                Arg::Text(row.state),
                Arg::Int(i64::from(row.attempts)),
                Arg::Int(micros(row.run_at)),
                Arg::OptText(row.last_error),
            ],
        );
    }
    // Jobs finished by this append moved from the open map to the head of the finished list.
    let finished_before = a.before_state().map_or(0, |b| b.finished_jobs.len());
    let newly_finished = a.state.finished_jobs.len().saturating_sub(finished_before);
    for j in a.state.finished_jobs.iter().take(newly_finished) {
        jobs_changed = true;
        batch.push(
            "DELETE FROM jobs WHERE dossier_code = ? AND job_id = ?",
            vec![Arg::Text(d.code.clone()), Arg::Text(j.id.to_string())],
        );
    }
    // Wake idle workers on other nodes; delivered when the transaction commits.
    if b == Backend::Postgres && jobs_changed {
        batch.push("SELECT pg_notify('tthc_jobs', '')", Vec::new());
    }

    for (i, row) in a.state.incidents.values().zip(&p.incidents) {
        if a.before_state().and_then(|b| b.incidents.get(&i.id)) == Some(i) {
            continue;
        }
        batch.push(
            "INSERT INTO incidents (dossier_code, incident_id, job_id, error, opened_at, resolution, kind)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (dossier_code, incident_id) DO UPDATE SET resolution = excluded.resolution",
            vec![
                Arg::Text(row.dossier_code.clone()),
                Arg::Text(row.incident_id.clone()),
                Arg::Text(row.job_id.clone()),
                Arg::Text(row.error.clone()),
                Arg::Int(micros(row.opened_at)),
                Arg::OptText(row.resolution.clone()),
                Arg::Text(row.kind.clone()),
            ],
        );
    }

    let known = a.before_state().map_or(0, |b| b.notifications.len());
    for n in p.notifications.iter().skip(known) {
        batch.push(
            "INSERT INTO notifications (dossier_code, notification_id, template, recipient, subject, body, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dossier_code, notification_id) DO NOTHING",
            vec![
                Arg::Text(n.dossier_code.clone()),
                Arg::Text(n.notification_id.clone()),
                Arg::Text(n.template.clone()),
                Arg::Text(n.recipient.clone()),
                Arg::Text(n.subject.clone()),
                Arg::Text(n.body.clone()),
                Arg::Int(micros(n.created_at)),
            ],
        );
    }
}

/// The columns of an archive (table alias `a`) as [`archive_row`] reads them. On SQLite a
/// column may hold a value of another type than the sealer wrote: text where bytes belong,
/// say, which the driver fails to read as a whole row ("invalid utf-8"), naming no dossier.
/// So each byte column is read as bytes whatever it holds, and the stored types come with
/// them, for [`archive_row`] to name the damage.
fn archive_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "a.upto_seq, CAST(a.head AS BLOB) AS head, CAST(a.checks AS BLOB) AS checks,
             CAST(a.dictionary AS INTEGER) AS dictionary, CAST(a.body AS BLOB) AS body,
             typeof(a.head) || ' ' || typeof(a.checks) || ' ' || typeof(a.dictionary) || ' '
                 || typeof(a.body) AS archive_types"
        }
        // Typed columns: a BYTEA holds bytes.
        Backend::Postgres => {
            "a.upto_seq, a.head, a.checks, a.dictionary, a.body,
             'blob blob integer blob' AS archive_types"
        }
    }
}

/// An archive row of `code`, read with [`archive_columns`]; [`StoreError::ArchiveDamaged`]
/// when a column holds another type than the sealer wrote.
fn archive_row(code: &str, r: &AnyRow) -> Result<Archive, StoreError> {
    let types: String = r.try_get("archive_types")?;
    let expected = ["blob", "blob", "integer", "blob"];
    let names = ["head", "checks", "dictionary", "body"];
    for ((found, want), name) in types.split(' ').zip(expected).zip(names) {
        if found != want {
            return Err(StoreError::ArchiveDamaged {
                dossier: code.to_owned(),
                problem: format!(
                    "its {name} is stored as {found}, not {}",
                    if want == "blob" { "bytes" } else { want }
                ),
            });
        }
    }
    Ok(Archive {
        upto: u64::try_from(r.try_get::<i64, _>("upto_seq")?).unwrap_or(0),
        head: r.try_get("head")?,
        checks: r.try_get("checks")?,
        dictionary: r.try_get("dictionary")?,
        body: r.try_get("body")?,
    })
}

fn task_row(r: &AnyRow) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        dossier_code: r.try_get("dossier_code")?,
        task_id: r.try_get("task_id")?,
        step: r.try_get("step")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        agency_code: r.try_get("agency_code")?,
        claimed_by: r.try_get("claimed_by")?,
        opened_at: from_micros(r.try_get("opened_at")?),
        due_at: r.try_get::<Option<i64>, _>("due_at")?.map(from_micros),
    })
}

fn dossier_row(r: &AnyRow) -> Result<DossierRow, StoreError> {
    Ok(DossierRow {
        code: r.try_get("code")?,
        procedure_code: r.try_get("procedure_code")?,
        procedure_version: u32::try_from(r.try_get::<i64, _>("procedure_version")?).unwrap_or(0),
        agency_code: r.try_get("agency_code")?,
        owner_id: r.try_get("owner_id")?,
        owner_name: r.try_get("owner_name")?,
        channel: r.try_get("channel")?,
        status: u8::try_from(r.try_get::<i64, _>("status")?).unwrap_or(0),
        seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
        filed_at: from_micros(r.try_get("filed_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        received_at: r.try_get::<Option<i64>, _>("received_at")?.map(from_micros),
        due_at: r.try_get::<Option<i64>, _>("due_at")?.map(from_micros),
        closed: r.try_get::<i64, _>("closed")? != 0,
        paused: r.try_get::<i64, _>("paused")? != 0,
        overdue: r.try_get::<i64, _>("overdue")? != 0,
        apology_sent: r.try_get::<i64, _>("apology_sent")? != 0,
    })
}

fn job_row(r: &AnyRow) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        dossier_code: r.try_get("dossier_code")?,
        job_id: r.try_get("job_id")?,
        kind: r.try_get("kind")?,
        call: r.try_get("call")?,
        state: r.try_get("state")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        run_at: from_micros(r.try_get("run_at")?),
        last_error: r.try_get("last_error")?,
    })
}

fn incident_row(r: &AnyRow) -> Result<IncidentRow, StoreError> {
    Ok(IncidentRow {
        dossier_code: r.try_get("dossier_code")?,
        incident_id: r.try_get("incident_id")?,
        job_id: r.try_get("job_id")?,
        error: r.try_get("error")?,
        opened_at: from_micros(r.try_get("opened_at")?),
        resolution: r.try_get("resolution")?,
        kind: r.try_get("kind")?,
    })
}

fn notification_row(r: &AnyRow) -> Result<NotificationRow, StoreError> {
    Ok(NotificationRow {
        dossier_code: r.try_get("dossier_code")?,
        notification_id: r.try_get("notification_id")?,
        template: r.try_get("template")?,
        recipient: r.try_get("recipient")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        created_at: from_micros(r.try_get("created_at")?),
    })
}

/// A remembered answer to a request with an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedResponse {
    pub scope: String,
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

impl Store {
    pub async fn recall_response(
        &self,
        actor_id: &str,
        key: &str,
    ) -> Result<Option<RememberedResponse>, StoreError> {
        let row: Option<(String, String, i64, String)> = sqlx::query_as(sql(self.backend, "SELECT scope, request_hash, status, body FROM idempotency_keys WHERE actor_id = ? AND key = ?"),
        )
        .bind(actor_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(scope, request_hash, status, body)| RememberedResponse {
                scope,
                request_hash,
                status: u16::try_from(status).unwrap_or(500),
                body,
            }),
        )
    }

    /// Keeps the first answer for a key; a concurrent duplicate keeps the one stored first.
    pub async fn remember_response(
        &self,
        actor_id: &str,
        key: &str,
        response: &RememberedResponse,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(sql(self.backend, "INSERT INTO idempotency_keys (actor_id, key, scope, request_hash, status, body, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (actor_id, key) DO NOTHING"),
        )
        .bind(actor_id)
        .bind(key)
        .bind(&response.scope)
        .bind(&response.request_hash)
        .bind(i64::from(response.status))
        .bind(&response.body)
        .bind(micros(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Open incidents by kind (`hook`, `condition`, `stuck`), for metrics.
    pub async fn open_incidents_by_kind(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql(
            self.backend,
            "SELECT kind, COUNT(*) FROM incidents WHERE resolution IS NULL GROUP BY kind ORDER BY kind",
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Counts for metrics: pending jobs, open incidents, open dossiers past due at `now`.
    pub async fn gauges(&self, now: DateTime<Utc>) -> Result<(i64, i64, i64), StoreError> {
        let jobs: i64 = sqlx::query_scalar(sql(
            self.backend,
            "SELECT COUNT(*) FROM jobs WHERE state = 'pending'",
        ))
        .fetch_one(&self.pool)
        .await?;
        let incidents: i64 = sqlx::query_scalar(sql(
            self.backend,
            "SELECT COUNT(*) FROM incidents WHERE resolution IS NULL",
        ))
        .fetch_one(&self.pool)
        .await?;
        let overdue: i64 = sqlx::query_scalar(sql(self.backend, "SELECT COUNT(*) FROM dossiers WHERE closed = 0 AND status NOT IN (9, 10) AND due_at IS NOT NULL AND due_at < ?"),
        )
        .bind(micros(now))
        .fetch_one(&self.pool)
        .await?;
        Ok((jobs, incidents, overdue))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql(self.backend, "SELECT 1"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes a write that found the storage full (an error that
    /// [`StoreError::is_storage_full`]), and passes its result on. Only the probe of
    /// [`Store::storage_full`] clears the note: a small write may still fit while the next
    /// one does not, and readiness should not flap with them.
    fn noted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        if let Err(e) = &r
            && e.is_storage_full()
            && !self.full.swap(true, Ordering::Relaxed)
        {
            tracing::error!(error = %e, "the storage is full: writes fail until space returns");
        }
        r
    }

    /// Whether the storage is full: a write failed for want of space, and no probe has found
    /// room since. While it is, each call tries one small write that needs fresh pages (a table of
    /// its own made, filled with 64 KiB and dropped, in two transactions), so that space coming
    /// back is seen without waiting for a client's write.
    pub async fn storage_full(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.full.load(Ordering::Relaxed) {
            return false;
        }
        let probe = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            sqlx::query(sql(
                self.backend,
                "CREATE TABLE IF NOT EXISTS tthc_storage_probe (filler BYTEA)",
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(sql(
                self.backend,
                "INSERT INTO tthc_storage_probe (filler) VALUES (?)",
            ))
            .bind(vec![0x5au8; 64 * 1024])
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            sqlx::query(sql(self.backend, "DROP TABLE tthc_storage_probe"))
                .execute(&self.pool)
                .await?;
            Ok::<_, StoreError>(())
        };
        match probe.await {
            Ok(()) => {
                tracing::info!("the storage has room again");
                self.full.store(false, Ordering::Relaxed);
                false
            }
            Err(_) => true,
        }
    }
}

/// An upload: content in the blob store, and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub sha256: String,
    pub content_type: String,
    pub size: u64,
}

impl Store {
    pub async fn record_upload(
        &self,
        upload: &Upload,
        uploader: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self.record_upload_unnoted(upload, uploader, at).await;
        self.noted(r)
    }

    async fn record_upload_unnoted(
        &self,
        upload: &Upload,
        uploader: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(sql(self.backend, "INSERT INTO uploads (sha256, uploader_id, content_type, size, uploaded_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (sha256, uploader_id) DO NOTHING"),
        )
        .bind(&upload.sha256)
        .bind(uploader)
        .bind(&upload.content_type)
        .bind(i64::try_from(upload.size).unwrap_or(i64::MAX))
        .bind(micros(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The upload of this content by this uploader, if they sent it.
    pub async fn upload_of(
        &self,
        sha256: &str,
        uploader: &str,
    ) -> Result<Option<Upload>, StoreError> {
        let row: Option<(String, i64)> = sqlx::query_as(sql(
            self.backend,
            "SELECT content_type, size FROM uploads WHERE sha256 = ? AND uploader_id = ?",
        ))
        .bind(sha256)
        .bind(uploader)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(content_type, size)| Upload {
            sha256: sha256.to_owned(),
            content_type,
            size: u64::try_from(size).unwrap_or(0),
        }))
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

impl Store {
    /// Claims one tick of a schedule for this node: true for exactly one caller per tick,
    /// however many nodes ask.
    pub async fn claim_tick(
        &self,
        schedule: &str,
        tick: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(sql(
            self.backend,
            "INSERT INTO schedules (name, last_tick) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick
             WHERE schedules.last_tick < excluded.last_tick",
        ))
        .bind(schedule)
        .bind(micros(tick))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// On PostgreSQL, a listener woken whenever a transaction adds or reschedules jobs, so idle
    /// workers need not poll hard. `None` on SQLite, where one process does all the work.
    pub async fn job_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match (&self.backend, &self.url) {
            (Backend::Postgres, url) => {
                let mut listener = sqlx::postgres::PgListener::connect(url).await?;
                listener.listen(JOBS_CHANNEL).await?;
                Ok(Some(listener))
            }
            _ => Ok(None),
        }
    }
}

/// The PostgreSQL notification channel for new or rescheduled jobs.
const JOBS_CHANNEL: &str = "tthc_jobs";
