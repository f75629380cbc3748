//! The engine: deployed procedures, the store, the clock and the hooks, behind one API.
//!
//! Every command goes the same way: load the dossier's state (a fold of its events), decide
//! (pure), append the events and update the read models in one transaction. Hooks and
//! timers are jobs in the store's outbox; a worker claims them under a lease, performs them
//! outside any transaction, and records the outcome as another command.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::agency::{Agencies, AgencyError, TaskAgency};
use crate::archive;
use crate::audit::VerifyReport;
use crate::calendar::Calendar;
use crate::definition::model::RECEIVING;
use crate::definition::{Definition, Duration, Step};
use crate::dossier::{
    Actor, Command, CommandError, Context, Dossier, EventRecord, Filing, HookOutcome, Job, JobKind,
    JobState, decide, decide_filing,
};
use crate::notify::{NotifyContext, Templates};
use crate::runtime::CompiledProcedure;
use crate::store::{
    Append, ClaimedJob, Projection, SealReport, Store, StoreError, StoredProcedure,
};

mod commands;
mod jobs;
mod procedures;
mod upkeep;
#[allow(unused_imports)]
pub use {commands::*, jobs::*, procedures::*, upkeep::*};

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("dossier {code} changed: it is at event {current}, you expected {expected}")]
    Conflict {
        code: String,
        expected: u64,
        current: u64,
    },
    #[error("dossier {0} not found")]
    DossierNotFound(String),
    #[error("procedure {0} is not deployed")]
    UnknownProcedure(String),
    #[error("definition: {0}")]
    Definition(String),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("agency {0} is not one of this deployment's agencies")]
    UnknownAgency(String),
    /// The filing's agencies do not fit this deployment's list (`pointer` into the filing).
    #[error("{error}")]
    Agency {
        error: Box<AgencyError>,
        pointer: &'static str,
    },
    /// A definition names a kind of agency this deployment has no agency of.
    #[error("{procedure}: {at} names agency kind `{kind}`: {error}")]
    AgencyKindUnmapped {
        procedure: String,
        at: String,
        kind: String,
        error: Box<AgencyError>,
    },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict {
                code,
                expected,
                current,
            } => EngineError::Conflict {
                code,
                expected,
                current,
            },
            other => EngineError::Store(other),
        }
    }
}

impl EngineError {
    /// A stable code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Command(c) => c.code(),
            EngineError::Conflict { .. } => "conflict",
            EngineError::DossierNotFound(_) => "dossier_not_found",
            EngineError::UnknownProcedure(_) => "unknown_procedure",
            EngineError::Definition(_) => "invalid_definition",
            EngineError::IdempotencyKeyReused => "idempotency_key_reused",
            EngineError::UnknownAgency(_) => "unknown_agency",
            EngineError::Agency { error, .. } => match **error {
                AgencyError::Unknown(_) => "unknown_agency",
                AgencyError::NotInEffect { .. } => "agency_not_in_effect",
                AgencyError::NoAgencyOfKind(_) => "agency_kind_unmapped",
                AgencyError::Ambiguous { .. } => "competent_agency_required",
                AgencyError::WrongKind { .. } => "wrong_agency_kind",
                AgencyError::NotReceiving { .. } => "wrong_receiving_agency",
            },
            EngineError::AgencyKindUnmapped { .. } => "agency_kind_unmapped",
            EngineError::Store(_) => "storage",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Conflict { .. } | EngineError::Store(_))
    }
}

/// Where "now" comes from: the system clock, or a clock tests and demos move by hand.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(Mutex::new(at)))
    }

    /// Now, to the microsecond (what the store keeps).
    pub fn now(&self) -> DateTime<Utc> {
        let t = match self {
            Clock::System => Utc::now(),
            Clock::Manual(m) => *m.lock().unwrap_or_else(|e| e.into_inner()),
        };
        DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: chrono::Duration) {
        if let Clock::Manual(m) = self {
            let mut t = m.lock().unwrap_or_else(|e| e.into_inner());
            *t += by;
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        if let Clock::Manual(m) = self {
            *m.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
    }
}

pub type HookFuture<'a> = Pin<Box<dyn Future<Output = HookOutcome> + Send + 'a>>;

/// What a hook is given: the dossier as it is, the job, and the key the external system
/// must deduplicate by (the same on every attempt of the job).
pub struct HookRequest<'a> {
    pub dossier: &'a Dossier,
    pub procedure: &'a CompiledProcedure,
    pub job: &'a Job,
    pub attempt: u32,
    pub idempotency_key: String,
    pub now: DateTime<Utc>,
}

/// A hook implementation (`notify`, `khodl.save`, `portal.*`). The trait is the boundary
/// to external systems; implementations must be idempotent by `idempotency_key`.
pub trait HookHandler: Send + Sync {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a>;
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `sqlite://PATH` (created if missing) or `sqlite::memory:`.
    pub database_url: String,
    /// Folder of the notification templates.
    pub templates_dir: std::path::PathBuf,
    /// This deployment's agencies: a dossier is filed only at one of them, and the kinds of
    /// agency definitions name resolve to them.
    pub agencies: Agencies,
    /// How long a claimed job is reserved for its worker.
    pub job_lease: chrono::Duration,
    /// How long a hook may take before its attempt counts as failed.
    pub hook_timeout: std::time::Duration,
    /// Working days added to the due date in an automatic apology letter.
    pub apology_extension: Duration,
    pub apology_reason: String,
    /// Sync the dossier to the national portal on every status change (a
    /// `portal.sync_dossier` job); needs that hook installed.
    pub sync_status_to_portal: bool,
    /// How many dossiers' folded states this process keeps, so that a command reads only the
    /// events appended since (none, usually) instead of the whole stream.
    pub state_cache: usize,
    /// Open an existing database to read it (the operator's tools): nothing is created,
    /// migrated or written, and no notification template is needed.
    pub read_only: bool,
}

impl EngineConfig {
    pub fn new(
        database_url: impl Into<String>,
        templates_dir: impl Into<std::path::PathBuf>,
    ) -> EngineConfig {
        EngineConfig {
            database_url: database_url.into(),
            templates_dir: templates_dir.into(),
            agencies: Agencies::default(),
            job_lease: chrono::Duration::seconds(60),
            hook_timeout: std::time::Duration::from_secs(30),
            apology_extension: Duration::WorkingDays(5),
            apology_reason: "Hồ sơ cần thêm thời gian thẩm định, xác minh".to_owned(),
            sync_status_to_portal: false,
            state_cache: 256,
            read_only: false,
        }
    }
}

/// What a deployment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    New {
        code: String,
        version: u32,
    },
    /// That version was already deployed with the same text.
    Unchanged {
        code: String,
        version: u32,
    },
}

/// The outcome of one pass of the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkReport {
    /// Passes that claimed jobs: each is one claim transaction.
    pub passes: usize,
    pub claimed: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub stale: usize,
}

/// The outcome of one overdue scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub apologies: Vec<String>,
    pub flagged: Vec<String>,
}

/// A dossier's history, and whether rebuilding it from events reproduces what is stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub events: Vec<EventRecord>,
    pub state: Dossier,
    pub matches: bool,
    pub differences: Vec<String>,
}

struct Inner {
    store: Store,
    config: EngineConfig,
    calendar: Arc<Calendar>,
    clock: Clock,
    templates: Templates,
    procedures: RwLock<HashMap<(String, u32), Arc<CompiledProcedure>>>,
    hooks: RwLock<HashMap<String, Arc<dyn HookHandler>>>,
    /// Folded states by dossier code, each as of its `seq`. Events never change once
    /// stored, so a cached state plus the events after its `seq` is the current state, on
    /// this node or after another node appended.
    states: std::sync::Mutex<lru::LruCache<Arc<str>, Cached>>,
    /// Dossiers whose streams did not verify when the sealer read them: never sealed.
    seal_refused: Mutex<std::collections::HashSet<String>>,
    /// Dossiers this node sealed since the archive dictionary was last trained.
    sealed_since_training: Mutex<u64>,
    /// Woken when this node stores a decision that scheduled a job: the worker claims it at
    /// once instead of at its next poll (`job_poll_ms`), and sees a timer due before then.
    jobs_scheduled: tokio::sync::Notify,
    /// This deployment's identity, stored in its database ([`Store::deployment_id`]).
    deployment_id: String,
    /// Deployed procedure versions whose agency kinds this deployment cannot resolve.
    agency_problems: Mutex<Vec<EngineError>>,
}

/// A folded state and the hash of its last event (the head its next append chains to).
#[derive(Clone)]
struct Cached {
    state: Arc<Dossier>,
    head: Arc<str>,
}

/// The process engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

const MAX_RETRIES_ON_CONFLICT: usize = 8;

/// Whether `after` holds a pending job that `before` did not: a new hook call or timer, or a
/// retry rescheduled. Jobs are shared copy-on-write, so a decision that left them alone is
/// answered without looking at any.
fn schedules_jobs(before: &Dossier, after: &Dossier) -> bool {
    !Arc::ptr_eq(&before.jobs, &after.jobs)
        && after.jobs.iter().any(|(id, job)| {
            job.state == JobState::Pending
                && before
                    .jobs
                    .get(id)
                    .is_none_or(|old| old.state != JobState::Pending || old.run_at != job.run_at)
        })
}

/// The decision that files `filing` under the code the store allocates, owning what it needs:
/// on SQLite it runs on the store's writer thread, inside the filing's transaction.
fn filing_decision(
    procedure: Arc<CompiledProcedure>,
    calendar: Arc<Calendar>,
    ctx: &Context<'_>,
    filing: &Filing,
) -> impl FnOnce(&str) -> Result<(Vec<crate::dossier::Event>, Dossier), CommandError> + Send + 'static
{
    let (now, actor, sync_status) = (ctx.now, ctx.actor.clone(), ctx.sync_status);
    let filing = filing.clone();
    move |code| {
        let ctx = Context {
            procedure: &procedure,
            calendar: &calendar,
            now,
            actor: &actor,
            sync_status,
        };
        decide_filing(&ctx, code, &filing).map(|d| (d.events, d.state))
    }
}

impl Engine {
    /// Opens the store (applying migrations) and loads every deployed procedure version.
    pub async fn open(
        config: EngineConfig,
        calendar: Calendar,
        clock: Clock,
    ) -> Result<Engine, EngineError> {
        let (store, deployment_id) = if config.read_only {
            let store = Store::open_read_only(&config.database_url).await?;
            let id = store.stored_deployment_id().await?.unwrap_or_default();
            (store, id)
        } else {
            let store = Store::open(&config.database_url).await?;
            let id = store.deployment_id().await?;
            (store, id)
        };
        let cache_size =
            std::num::NonZeroUsize::new(config.state_cache).unwrap_or(std::num::NonZeroUsize::MIN);
        let templates = if config.read_only {
            Templates::from_sources(Default::default())
        } else {
            Templates::load(&config.templates_dir)
        }
        .map_err(|e| EngineError::Definition(e.to_string()))?;
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                config,
                calendar: Arc::new(calendar),
                clock,
                templates,
                procedures: RwLock::new(HashMap::new()),
                hooks: RwLock::new(HashMap::new()),
                states: std::sync::Mutex::new(lru::LruCache::new(cache_size)),
                seal_refused: Mutex::new(std::collections::HashSet::new()),
                sealed_since_training: Mutex::new(0),
                jobs_scheduled: tokio::sync::Notify::new(),
                deployment_id,
                agency_problems: Mutex::new(Vec::new()),
            }),
        };
        // Every deployed version: none is known yet.
        engine.refresh().await?;
        engine.register_hook(
            "notify",
            Arc::new(NotifyHook {
                engine: Arc::downgrade(&engine.inner),
            }),
        );
        Ok(engine)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn calendar(&self) -> &Calendar {
        &self.inner.calendar
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Installs (or replaces) the implementation of a hook.
    pub fn register_hook(&self, name: &str, handler: Arc<dyn HookHandler>) {
        let mut hooks = self.inner.hooks.write().unwrap_or_else(|e| e.into_inner());
        hooks.insert(name.to_owned(), handler);
    }
}

impl Inner {
    /// The agency's display name (its code when none is configured).
    fn agency_name(&self, code: &str) -> String {
        self.config
            .agencies
            .get(code)
            .map(|a| a.name.clone())
            .unwrap_or_else(|| code.to_owned())
    }
}
