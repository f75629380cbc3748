//! Storage on SQLite (WAL) or PostgreSQL: the event log and the read models, written in one
//! transaction.
//!
//! Appends carry the sequence number the caller decided on; a writer whose expected number
//! is stale gets [`StoreError::Conflict`] and nothing is written.
//!
//! This file holds the facade (`Store`, its errors and row types); each concern is a file:
//! `open` (backends, migrations, file checks, identity), `history` (appends, the hash chain,
//! projections, verification), `writer` and `sqlite` (SQLite's group-commit writer thread and
//! checkpointer), `seal` (archives), `jobs` (claims, leases, ticks), `queries` (worklist,
//! search), `idempotency`, `uploads`, `health` (gauges, readiness, storage full).

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, Executor, Row, Transaction};

use std::collections::HashMap;

use crate::archive::{self, Archive, ArchiveError, Dictionary, StoredEvent};
use crate::audit::{self, ChainBreak, StreamVerifier, VerifyReport};
use crate::dossier::{Dossier, Event, EventRecord, JobState};

mod health;
mod history;
mod idempotency;
mod jobs;
mod open;
mod queries;
mod seal;
mod sqlite;
mod uploads;
mod writer;

#[allow(unused_imports)]
pub use health::*;
#[allow(unused_imports)]
pub use history::*;
#[allow(unused_imports)]
pub use idempotency::*;
#[allow(unused_imports)]
pub use jobs::*;
#[allow(unused_imports)]
pub use open::*;
#[allow(unused_imports)]
pub use queries::*;
#[allow(unused_imports)]
pub use seal::*;
#[allow(unused_imports)]
pub use uploads::*;
#[allow(unused_imports)]
pub use writer::*;

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

pub use crate::audit::{from_micros, micros};

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
