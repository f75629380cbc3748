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

    fn register(&self, definition: Definition) -> Result<Arc<CompiledProcedure>, EngineError> {
        let definition = self.resolve_agencies(definition)?;
        self.register_unresolved(definition)
    }

    fn register_unresolved(
        &self,
        definition: Definition,
    ) -> Result<Arc<CompiledProcedure>, EngineError> {
        let key = (
            definition.procedure.code.clone(),
            definition.procedure.version,
        );
        let compiled = CompiledProcedure::compile(definition).map_err(EngineError::Definition)?;
        let mut map = self
            .inner
            .procedures
            .write()
            .unwrap_or_else(|e| e.into_inner());
        map.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The definition with its tasks' kinds of agency replaced by this deployment's codes
    /// (`receiving` and the competent kind stay: each dossier says which agency they are).
    fn resolve_agencies(&self, mut definition: Definition) -> Result<Definition, EngineError> {
        let agencies = &self.inner.config.agencies;
        let day = self.calendar().local_date(self.now());
        let p = &mut definition.procedure;
        let label = format!("{} version {}", p.code, p.version);
        let competent = p.agency.competent.clone();
        if let Some(kind) = &competent
            && !agencies.has_kind(kind)
        {
            return Err(EngineError::AgencyKindUnmapped {
                procedure: label,
                at: "agency.competent".into(),
                kind: kind.clone(),
                error: Box::new(AgencyError::NoAgencyOfKind(kind.clone())),
            });
        }
        for step in &mut p.steps {
            let Step::UserTask(t) = step else { continue };
            let Some(kind) = t.agency.clone() else {
                continue;
            };
            t.agency = match agencies.resolve_task_agency(&kind, competent.as_deref(), day) {
                Ok(TaskAgency::Receiving) => Some(RECEIVING.to_owned()),
                Ok(TaskAgency::Competent) => None,
                Ok(TaskAgency::Code(code)) => Some(code),
                Err(error) => {
                    return Err(EngineError::AgencyKindUnmapped {
                        procedure: label,
                        at: format!("step {}", t.id),
                        kind,
                        error: Box::new(error),
                    });
                }
            };
        }
        Ok(definition)
    }

    /// Deployed procedure versions (loaded from the database) that name a kind of agency
    /// this deployment has none of. `tthc serve` refuses to start while there are any.
    pub fn agency_problems(&self) -> Vec<String> {
        self.inner
            .agency_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Deploys a checked definition. A version already deployed must be identical: a changed
    /// procedure gets a new version, so running dossiers keep the one they started with.
    pub async fn deploy(&self, definition: &Definition) -> Result<Deployed, EngineError> {
        let p = &definition.procedure;
        let (code, version) = (p.code.clone(), p.version);
        if let Some(existing) = self.procedure(&code, Some(version)) {
            if existing.definition.text == definition.text {
                return Ok(Deployed::Unchanged { code, version });
            }
            return Err(EngineError::Definition(format!(
                "{code} version {version} is already deployed with different content; raise `version`"
            )));
        }
        let forms: serde_json::Map<String, Value> = definition
            .forms
            .iter()
            .map(|(k, v)| (k.clone(), (**v).clone()))
            .collect();
        let stored = StoredProcedure {
            code: code.clone(),
            version,
            name: p.name.clone(),
            source: definition.text.clone(),
            forms: Value::Object(forms),
            deployed_at: self.now(),
        };
        self.register(definition.clone())?;
        self.inner.store.save_procedure(&stored).await?;
        Ok(Deployed::New { code, version })
    }

    /// A deployed procedure: the given version, or the newest.
    pub fn procedure(&self, code: &str, version: Option<u32>) -> Option<Arc<CompiledProcedure>> {
        let map = self
            .inner
            .procedures
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match version {
            Some(v) => map.get(&(code.to_owned(), v)).cloned(),
            None => map
                .iter()
                .filter(|((c, _), _)| c == code)
                .max_by_key(|((_, v), _)| *v)
                .map(|(_, p)| p.clone()),
        }
    }

    /// Every deployed procedure version.
    pub fn procedures(&self) -> Vec<Arc<CompiledProcedure>> {
        let map = self
            .inner
            .procedures
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by(|a, b| {
            (&a.procedure().code, a.procedure().version)
                .cmp(&(&b.procedure().code, b.procedure().version))
        });
        all
    }

    /// Files a new dossier on the newest version of its procedure.
    /// This deployment's identity, made at the first start and stored in its database.
    pub fn deployment_id(&self) -> &str {
        &self.inner.deployment_id
    }

    /// Whether `code` is one of this deployment's agencies.
    pub fn has_agency(&self, code: &str) -> bool {
        self.inner.config.agencies.contains(code)
    }

    /// This deployment's agencies.
    pub fn agencies(&self) -> &Agencies {
        &self.inner.config.agencies
    }

    /// The key a hook's external system deduplicates by: the same on every attempt of the job,
    /// and never the same in two deployments (the national portal is shared by all of them).
    pub fn hook_key(&self, job: &Job, dossier: &str) -> String {
        format!(
            "{}/{}",
            self.inner.deployment_id,
            job.idempotency_key(dossier)
        )
    }

    pub async fn file(&self, actor: &Actor, filing: &Filing) -> Result<Dossier, EngineError> {
        Ok(self.file_once(actor, filing, None).await?.0)
    }

    /// Files a dossier at most once per idempotency key of this actor: the key is recorded in
    /// the filing's own transaction, so a retry (on any node, after any crash) finds the first
    /// dossier instead of filing again. Returns the dossier and whether it was filed earlier.
    /// The same key with another request (`request_hash`) is refused.
    pub async fn file_once(
        &self,
        actor: &Actor,
        filing: &Filing,
        key: Option<(&str, &str)>,
    ) -> Result<(Dossier, bool), EngineError> {
        // A key seen before answers before anything else is judged.
        if let Some((k, hash)) = key
            && let Some(earlier) = self.inner.store.recall_response(actor.id(), k).await?
        {
            if earlier.request_hash != hash {
                return Err(EngineError::IdempotencyKeyReused);
            }
            if !earlier.body.is_empty() {
                return Ok((self.dossier(&earlier.body).await?, true));
            }
        }
        let now = self.now();
        let day = self.calendar().local_date(now);
        // The dossier code starts with the agency's code, which carries its province: filing
        // only at this deployment's own agencies keeps codes unique across deployments.
        let agencies = &self.inner.config.agencies;
        agencies
            .current(&filing.agency_code, day)
            .map_err(|error| EngineError::Agency {
                error: Box::new(error),
                pointer: "/agency_code",
            })?;
        // The newest version may have been deployed through another node.
        self.refresh().await?;
        let procedure = self
            .procedure(&filing.procedure_code, None)
            .ok_or_else(|| EngineError::UnknownProcedure(filing.procedure_code.clone()))?;
        let spec = &procedure.procedure().agency;
        let competent = agencies
            .competent(
                spec.competent.as_deref(),
                &filing.agency_code,
                filing.competent_agency.as_deref(),
                day,
            )
            .map_err(|error| EngineError::Agency {
                pointer: if matches!(error, AgencyError::NotReceiving { .. }) {
                    "/agency_code"
                } else {
                    "/competent_agency"
                },
                error: Box::new(error),
            })?;
        let mut resolved = filing.clone();
        resolved.competent_agency = Some(competent);
        let filing = &resolved;
        let ctx = Context {
            procedure: &procedure,
            calendar: &self.inner.calendar,
            now,
            actor,
            sync_status: self.inner.config.sync_status_to_portal,
        };
        // Refuse bad input before a dossier number is spent on it.
        decide_filing(&ctx, "probe", filing)?;
        let created = self
            .inner
            .store
            .create(
                &filing.agency_code,
                day,
                filing_decision(
                    Arc::clone(&procedure),
                    Arc::clone(&self.inner.calendar),
                    &ctx,
                    filing,
                ),
                now,
                (actor.id(), actor.name()),
                key,
            )
            .await?;
        match created? {
            crate::store::Created::New(d, head) => {
                if !d.jobs.is_empty() {
                    self.inner.jobs_scheduled.notify_one();
                }
                self.remember(Cached {
                    state: Arc::new(Dossier::clone(&d)),
                    head: head.into(),
                });
                Ok((*d, false))
            }
            crate::store::Created::Earlier { code, request_hash } => {
                if key.is_some_and(|(_, h)| h != request_hash) {
                    return Err(EngineError::IdempotencyKeyReused);
                }
                Ok((self.dossier(&code).await?, true))
            }
        }
    }

    /// The dossier's current state.
    pub async fn dossier(&self, code: &str) -> Result<Dossier, EngineError> {
        Ok(Dossier::clone(&self.current(code).await?.state))
    }

    /// The dossier's current state: the cached fold brought up to date with the events stored
    /// after it (one query, which returns no rows when nothing changed elsewhere).
    async fn current(&self, code: &str) -> Result<Cached, EngineError> {
        let cached = self.cached(code);
        let from = cached.as_ref().map_or(0, |c| c.state.seq);
        let tail = self.inner.store.events_after(code, from).await?;
        let Some(last) = tail.last() else {
            return cached.ok_or_else(|| EngineError::DossierNotFound(code.to_owned()));
        };
        let (last_seq, head) = (last.seq, Arc::<str>::from(last.hash.as_str()));
        let state = match cached {
            Some(c) => {
                let mut d = Dossier::clone(&c.state);
                for e in &tail {
                    d.apply(e.at, &e.event);
                }
                d
            }
            None => Dossier::fold(tail.iter().map(|e| (e.at, &e.event))).ok_or_else(|| {
                StoreError::Corrupt(format!("{code} does not start with a filing"))
            })?,
        };
        if state.seq != last_seq {
            return Err(StoreError::Corrupt(format!(
                "{code}: events are not numbered 1..{last_seq} without gaps"
            ))
            .into());
        }
        let current = Cached {
            state: Arc::new(state),
            head,
        };
        self.remember(current.clone());
        Ok(current)
    }

    /// The dossier as this node last saw it, without reading the database: possibly behind
    /// its stored events. Only for what never changes after filing (its code, owner,
    /// agency and procedure).
    pub fn last_seen(&self, code: &str) -> Option<Arc<Dossier>> {
        self.cached(code).map(|c| c.state)
    }

    fn cached(&self, code: &str) -> Option<Cached> {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(code).cloned()
    }

    /// Keeps a state unless a newer one of the same dossier is already kept.
    fn remember(&self, c: Cached) {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        if states
            .peek(&*c.state.code)
            .is_some_and(|d| d.state.seq > c.state.seq)
        {
            return;
        }
        states.put(Arc::clone(&c.state.code), c);
    }

    async fn procedure_of(&self, d: &Dossier) -> Result<Arc<CompiledProcedure>, EngineError> {
        if let Some(p) = self.procedure(&d.procedure_code, Some(d.procedure_version)) {
            return Ok(p);
        }
        // Deployed through another node since this one started.
        self.refresh().await?;
        self.procedure(&d.procedure_code, Some(d.procedure_version))
            .ok_or_else(|| {
                EngineError::UnknownProcedure(format!(
                    "{} v{}",
                    d.procedure_code, d.procedure_version
                ))
            })
    }

    /// Loads the procedure versions other nodes deployed since this one started. Deployed
    /// versions never change, so only missing ones are read.
    pub async fn refresh(&self) -> Result<(), EngineError> {
        let known: Vec<(String, u32)> = {
            let map = self
                .inner
                .procedures
                .read()
                .unwrap_or_else(|e| e.into_inner());
            map.keys().cloned().collect()
        };
        let deployed = self.inner.store.procedure_versions().await?;
        if deployed.iter().all(|k| known.contains(k)) {
            return Ok(());
        }
        for p in self.inner.store.procedures().await? {
            if known.contains(&(p.code.clone(), p.version)) {
                continue;
            }
            let definition =
                Definition::from_stored(&format!("{} v{}", p.code, p.version), &p.source, &p.forms)
                    .map_err(EngineError::Definition)?;
            match self.register(definition.clone()) {
                // Deployed earlier with agencies this configuration lacks: its dossiers still
                // read and replay; `serve` refuses to start until the agencies are configured.
                Err(e @ EngineError::AgencyKindUnmapped { .. }) => {
                    self.register_unresolved(definition)?;
                    self.inner
                        .agency_problems
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e);
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Runs a command. With `expected_seq`, the caller states which version of the dossier it
    /// decided on, and gets [`EngineError::Conflict`] if it changed; without, the engine
    /// retries on the latest state (for system commands and idempotent operations).
    pub async fn execute(
        &self,
        code: &str,
        expected_seq: Option<u64>,
        actor: &Actor,
        command: &Command,
    ) -> Result<Dossier, EngineError> {
        self.execute_from(None, code, expected_seq, actor, command)
            .await
    }

    /// [`Engine::execute`], first on `read` when the caller has just read the state.
    ///
    /// Without one, the first attempt decides on this node's cached state without reading the
    /// database: the append only holds if the dossier is still at that state's sequence, so a
    /// stale cache can cost a retry but never a wrong append. A refusal or a conflict on the
    /// unchecked state is decided again on a fresh read before it is reported.
    async fn execute_from(
        &self,
        read: Option<Cached>,
        code: &str,
        expected_seq: Option<u64>,
        actor: &Actor,
        command: &Command,
    ) -> Result<Dossier, EngineError> {
        let mut attempts = 0;
        let mut next = match read {
            Some(c) => Some((c, true)),
            None => self.cached(code).map(|c| (c, false)),
        };
        loop {
            let (Cached { state, head }, checked) = match next.take() {
                Some(n) => n,
                None => (self.current(code).await?, true),
            };
            // A decision on the unchecked cache is not an attempt of its own.
            if checked {
                attempts += 1;
            }
            if let Some(expected) = expected_seq
                && expected != state.seq
            {
                if !checked {
                    continue;
                }
                return Err(EngineError::Conflict {
                    code: code.to_owned(),
                    expected,
                    current: state.seq,
                });
            }
            let procedure = self.procedure_of(&state).await?;
            let now = self.now();
            let ctx = Context {
                procedure: &procedure,
                calendar: &self.inner.calendar,
                now,
                actor,
                sync_status: self.inner.config.sync_status_to_portal,
            };
            let decision = match decide(&ctx, &state, command) {
                Ok(d) => d,
                Err(_) if !checked => continue,
                Err(e) => return Err(e.into()),
            };
            let append = Append {
                at: now,
                actor_id: actor.id(),
                actor_name: actor.name(),
                events: &decision.events,
                state: &decision.state,
                before: Some((&*state, &*head)),
            };
            match self.inner.store.append(&append).await {
                Ok(head) => {
                    if schedules_jobs(&state, &decision.state) {
                        self.inner.jobs_scheduled.notify_one();
                    }
                    self.remember(Cached {
                        state: Arc::new(decision.state.clone()),
                        head: head.into(),
                    });
                    return Ok(decision.state);
                }
                Err(StoreError::Conflict { .. }) if !checked => continue,
                Err(StoreError::Conflict { .. })
                    if expected_seq.is_none() && attempts < MAX_RETRIES_ON_CONFLICT =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decides a command without storing anything: whether it would be accepted now.
    pub async fn check(
        &self,
        code: &str,
        actor: &Actor,
        command: &Command,
    ) -> Result<(), EngineError> {
        let state = self.current(code).await?.state;
        let procedure = self.procedure_of(&state).await?;
        let ctx = Context {
            procedure: &procedure,
            calendar: &self.inner.calendar,
            now: self.now(),
            actor,
            sync_status: self.inner.config.sync_status_to_portal,
        };
        decide(&ctx, &state, command)?;
        Ok(())
    }

    /// One pass of the worker: claims the jobs due now and runs them: the jobs of one dossier
    /// one after another, in the order claimed, and different dossiers' jobs concurrently, so
    /// that a slow external system or a queue of outcomes waiting for the writer holds up only
    /// its own dossier (on SQLite the outcomes then share group commits).
    pub async fn run_due_jobs(&self, limit: u32) -> Result<WorkReport, EngineError> {
        let now = self.now();
        let claimed = self
            .inner
            .store
            .claim_due_jobs(now, limit, self.inner.config.job_lease)
            .await?;
        let mut report = WorkReport {
            passes: usize::from(!claimed.is_empty()),
            claimed: claimed.len(),
            ..WorkReport::default()
        };
        let mut by_dossier: Vec<Vec<ClaimedJob>> = Vec::new();
        for job in claimed {
            match by_dossier.iter_mut().find(|g| g[0].dossier == job.dossier) {
                Some(group) => group.push(job),
                None => by_dossier.push(vec![job]),
            }
        }
        let outcomes = futures_util::future::join_all(
            by_dossier
                .into_iter()
                .map(|jobs| self.run_claimed_in_order(jobs)),
        )
        .await;
        // Every group ran to its end before an error is reported: none is left half done.
        for outcome in outcomes {
            let part = outcome?;
            report.succeeded += part.succeeded;
            report.failed += part.failed;
            report.stale += part.stale;
        }
        Ok(report)
    }

    /// Runs one dossier's claimed jobs in order; the counts are in the report.
    async fn run_claimed_in_order(&self, jobs: Vec<ClaimedJob>) -> Result<WorkReport, EngineError> {
        let mut report = WorkReport::default();
        for mut job in jobs {
            // Renew the lease as the job starts once half of it is spent: a long batch must not
            // lose the jobs at its end to another node while the first ones run. A lease with
            // more than half left cannot have been taken over.
            let now = self.now();
            let half = self.inner.config.job_lease / 2;
            if job.lease_until < crate::store::micros(now + half) {
                let until = now + self.inner.config.job_lease;
                if !self.inner.store.renew_lease(&mut job, until).await? {
                    report.stale += 1;
                    continue;
                }
            }
            match self.run_job(&job).await {
                Ok(true) => report.succeeded += 1,
                Ok(false) => report.failed += 1,
                Err(EngineError::Command(CommandError::StaleJob { .. })) => report.stale += 1,
                Err(e) => {
                    tracing::warn!(dossier = %job.dossier, job = %job.job, error = %e, "job could not be recorded");
                    self.inner.store.release_job(&job).await?;
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Runs one claimed job; true when it succeeded.
    async fn run_job(&self, claimed: &ClaimedJob) -> Result<bool, EngineError> {
        let read = self.current(&claimed.dossier).await?;
        let state = Arc::clone(&read.state);
        let Some(job) = state.job(&claimed.job).cloned() else {
            return Err(EngineError::Command(CommandError::not_found_job(
                &claimed.job,
            )));
        };
        if job.state != JobState::Pending {
            return Err(EngineError::Command(CommandError::StaleJob {
                job: (*job.id).to_owned(),
                attempt: job.attempts + 1,
            }));
        }
        if job.kind == JobKind::Timer {
            self.execute_from(
                Some(read),
                &state.code,
                None,
                &Actor::System,
                &Command::FireTimer {
                    job: (*job.id).to_owned(),
                },
            )
            .await?;
            return Ok(true);
        }
        let procedure = self.procedure_of(&state).await?;
        let attempt = job.attempts + 1;
        let handler = {
            let hooks = self.inner.hooks.read().unwrap_or_else(|e| e.into_inner());
            hooks.get(&job.call).cloned()
        };
        let outcome = match handler {
            None => HookOutcome::Failed {
                error: format!("hook `{}` is not configured on this engine", job.call),
            },
            Some(h) => {
                let request = HookRequest {
                    dossier: &state,
                    procedure: &procedure,
                    job: &job,
                    attempt,
                    idempotency_key: self.hook_key(&job, &state.code),
                    now: self.now(),
                };
                match tokio::time::timeout(self.inner.config.hook_timeout, h.call(request)).await {
                    Ok(o) => o,
                    Err(_) => HookOutcome::Failed {
                        error: format!("hook `{}` timed out", job.call),
                    },
                }
            }
        };
        let ok = matches!(outcome, HookOutcome::Succeeded { .. });
        // Decided first on the state read before the hook ran: if anything was appended
        // meanwhile, the append conflicts and the outcome is decided again on a fresh read.
        self.execute_from(
            Some(read),
            &state.code,
            None,
            &Actor::System,
            &Command::RecordHookOutcome {
                job: (*job.id).to_owned(),
                attempt,
                outcome,
            },
        )
        .await?;
        Ok(ok)
    }

    /// Runs jobs until none is due now (bounded), for tests, demos and the CLI.
    pub async fn drain_jobs(&self) -> Result<WorkReport, EngineError> {
        let mut total = WorkReport::default();
        for _ in 0..1000 {
            let r = self.run_due_jobs(64).await?;
            if r.claimed == 0 {
                break;
            }
            total.passes += r.passes;
            total.claimed += r.claimed;
            total.succeeded += r.succeeded;
            total.failed += r.failed;
            total.stale += r.stale;
        }
        Ok(total)
    }

    /// Sends apology letters for dossiers due within one working day, and flags those past due.
    pub async fn scan_overdue(&self) -> Result<ScanReport, EngineError> {
        let now = self.now();
        let horizon = now + chrono::Duration::days(7);
        let mut report = ScanReport::default();
        for row in self
            .inner
            .store
            .dossiers_due_before(horizon, 10_000)
            .await?
        {
            let Some(due) = row.due_at else { continue };
            let day = i64::from(self.inner.calendar.working_day_minutes().max(1) as i32);
            let left = self.inner.calendar.working_minutes_between(now, due);
            if !row.apology_sent && left <= day {
                let new_due_at = self
                    .inner
                    .calendar
                    .add(due, self.inner.config.apology_extension);
                let cmd = Command::Apologize {
                    reason: self.inner.config.apology_reason.clone(),
                    new_due_at,
                };
                match self.execute(&row.code, None, &Actor::System, &cmd).await {
                    Ok(_) => report.apologies.push(row.code.clone()),
                    Err(EngineError::Command(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !row.overdue && due < now {
                match self
                    .execute(&row.code, None, &Actor::System, &Command::FlagOverdue)
                    .await
                {
                    Ok(_) => report.flagged.push(row.code.clone()),
                    Err(EngineError::Command(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// Rebuilds a dossier from its events and compares the result with the stored read
    /// models. Calls no external system.
    pub async fn replay(&self, code: &str) -> Result<ReplayReport, EngineError> {
        let events = self.inner.store.events(code).await?;
        let state = Dossier::fold(events.iter().map(|e| (e.at, &e.event)))
            .ok_or_else(|| EngineError::DossierNotFound(code.to_owned()))?;
        let stored = self.inner.store.projection(code).await?;
        let rebuilt = Projection::of(&state);
        let differences = match &stored {
            None => vec!["no read model is stored for this dossier".to_owned()],
            Some(stored) => differences(stored, &rebuilt),
        };
        Ok(ReplayReport {
            events,
            matches: differences.is_empty(),
            state,
            differences,
        })
    }

    /// Seals the events of settled dossiers unchanged for `after`, at most `limit` of them in
    /// one transaction (see [`crate::archive`]). A stream that does not verify is never sealed:
    /// it is logged once and left for the auditors.
    pub async fn seal_settled(
        &self,
        after: chrono::Duration,
        limit: u32,
    ) -> Result<SealReport, EngineError> {
        let refused = self
            .inner
            .seal_refused
            .lock()
            .expect("seal_refused")
            .clone();
        let candidates: Vec<_> = self
            .inner
            .store
            .settled_unsealed(
                self.now() - after,
                limit.saturating_add(u32::try_from(refused.len()).unwrap_or(u32::MAX)),
            )
            .await?
            .into_iter()
            .filter(|c| !refused.contains(&c.code))
            .take(limit as usize)
            .collect();
        if candidates.is_empty() {
            return Ok(SealReport::default());
        }
        let report = self.inner.store.seal(&candidates).await?;
        {
            let mut refused = self.inner.seal_refused.lock().expect("seal_refused");
            for b in &report.broken {
                tracing::error!(dossier = %b.dossier, seq = b.seq, problem = %b.problem,
                    "events not sealed: the stream does not verify");
                refused.insert(b.dossier.clone());
            }
        }
        self.train_archive_dictionary(report.sealed).await?;
        Ok(report)
    }

    /// Archives compress several times better with a zstd dictionary made of earlier streams
    /// (see [`crate::archive`]): one is made once enough archives exist, and again after
    /// every `RETRAIN_AFTER` seals on this node (procedures and their letters change).
    async fn train_archive_dictionary(&self, sealed: u64) -> Result<(), EngineError> {
        const SAMPLES: u32 = archive::MIN_SAMPLES as u32;
        const RETRAIN_AFTER: u64 = 20_000;
        let since = {
            let mut n = self
                .inner
                .sealed_since_training
                .lock()
                .expect("sealed_since_training");
            *n += sealed;
            *n
        };
        let due = if since >= RETRAIN_AFTER {
            true
        } else if sealed == 0 || self.inner.store.current_dictionary().await? != 0 {
            false
        } else {
            self.inner.store.archive_count(SAMPLES).await? >= archive::MIN_SAMPLES as u64
        };
        if due
            && let Some(id) = self
                .inner
                .store
                .train_dictionary(SAMPLES, self.now())
                .await?
        {
            tracing::info!(dictionary = id, "archive dictionary trained");
            *self
                .inner
                .sealed_since_training
                .lock()
                .expect("sealed_since_training") = 0;
        }
        Ok(())
    }

    /// Verifies the hash chains of every dossier (or one).
    pub async fn verify(&self, only: Option<&str>) -> Result<VerifyReport, EngineError> {
        Ok(self.inner.store.verify(only).await?)
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

fn differences(stored: &Projection, rebuilt: &Projection) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, a: Value, b: Value| {
        if a != b {
            out.push(format!("{what}: stored {a} but the events give {b}"));
        }
    };
    cmp("dossier", j(&stored.dossier), j(&rebuilt.dossier));
    let mut rebuilt_tasks = rebuilt.tasks.clone();
    rebuilt_tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    cmp("tasks", j(&stored.tasks), j(&rebuilt_tasks));
    cmp("jobs", j(&stored.jobs), j(&rebuilt.jobs));
    cmp("incidents", j(&stored.incidents), j(&rebuilt.incidents));
    let mut rebuilt_notes = rebuilt.notifications.clone();
    rebuilt_notes.sort_by(|a, b| {
        (a.created_at, &a.notification_id).cmp(&(b.created_at, &b.notification_id))
    });
    cmp("notifications", j(&stored.notifications), j(&rebuilt_notes));
    out
}

/// A read model as JSON, to compare stored and rebuilt rows field by field.
fn j<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// The built-in `notify` hook: renders the template into the dossier's outbox.
struct NotifyHook {
    engine: std::sync::Weak<Inner>,
}

impl HookHandler for NotifyHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            let Some(inner) = self.engine.upgrade() else {
                return HookOutcome::Failed {
                    error: "the engine is shutting down".into(),
                };
            };
            let Some(template) = request.job.args.get("template").and_then(Value::as_str) else {
                return HookOutcome::Failed {
                    error: "notify needs a template".into(),
                };
            };
            let agency_name = inner.agency_name(&request.dossier.agency_code);
            let ctx = NotifyContext {
                dossier: request.dossier,
                procedure: request.procedure,
                calendar: &inner.calendar,
                agency_name: &agency_name,
                now: request.now,
            };
            let id = format!("n{}", request.dossier.notifications.len() + 1);
            match inner.templates.render(template, id, &ctx) {
                Ok(n) => HookOutcome::Succeeded {
                    detail: serde_json::json!({ "notification": n.id }),
                    notification: Some(n),
                },
                Err(error) => HookOutcome::Failed { error },
            }
        })
    }
}

/// Schedules of the engine's background work.
#[derive(Debug, Clone)]
pub struct Background {
    /// When the overdue scan runs (cron, seconds first, in the calendar's time zone).
    pub overdue_scan: cron::Schedule,
    /// The longest an idle worker sleeps before looking for due jobs again.
    pub poll: std::time::Duration,
    /// Seal the events of dossiers settled at least this long ago (`None`: never seal).
    pub seal_after: Option<chrono::Duration>,
}

impl Background {
    /// Parses a cron expression (`sec min hour day month weekday [year]`).
    pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
        use std::str::FromStr;
        cron::Schedule::from_str(expr).map_err(|e| format!("invalid cron schedule `{expr}`: {e}"))
    }
}

impl Engine {
    /// Runs the job worker and the overdue scan until `shutdown` turns true. A job being run
    /// when shutdown comes is finished first, so its outcome is recorded.
    pub async fn run_background(
        &self,
        background: Background,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let worker = {
            let engine = self.clone();
            let mut shutdown = shutdown.clone();
            let poll = background.poll;
            async move {
                // On PostgreSQL other nodes' new jobs wake this worker at once.
                let mut listener = match engine.store().job_listener().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "no job notifications; polling");
                        None
                    }
                };
                loop {
                    if *shutdown.borrow() {
                        break;
                    }
                    let idle = match engine.run_due_jobs(8).await {
                        Ok(r) => r.claimed == 0,
                        Err(e) => {
                            tracing::error!(error = %e, "worker pass failed");
                            true
                        }
                    };
                    if idle {
                        let wait = match engine.store().next_job_at().await {
                            Ok(Some(at)) => {
                                (at - engine.now()).to_std().unwrap_or_default().min(poll)
                            }
                            _ => poll,
                        };
                        let wait = wait.max(std::time::Duration::from_millis(20));
                        match listener.as_mut() {
                            Some(l) => {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = engine.inner.jobs_scheduled.notified() => {}
                                    _ = shutdown.changed() => {}
                                    n = l.recv() => {
                                        if let Err(e) = n {
                                            tracing::warn!(error = %e, "job notifications lost; polling");
                                            listener = None;
                                        }
                                    }
                                }
                            }
                            None => {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = engine.inner.jobs_scheduled.notified() => {}
                                    _ = shutdown.changed() => {}
                                }
                            }
                        }
                    }
                }
            }
        };
        let sealer = {
            let engine = self.clone();
            let mut shutdown = shutdown.clone();
            let (after, poll) = (background.seal_after, background.poll);
            async move {
                let Some(after) = after else { return };
                const BATCH: u32 = 64;
                loop {
                    if *shutdown.borrow() {
                        break;
                    }
                    let more = match engine.seal_settled(after, BATCH).await {
                        Ok(r) => {
                            if r.sealed > 0 {
                                tracing::debug!(dossiers = r.sealed, events = r.events, "sealed");
                            }
                            r.sealed + r.changed >= u64::from(BATCH)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "sealing failed");
                            false
                        }
                    };
                    if !more {
                        tokio::select! {
                            _ = tokio::time::sleep(poll.max(std::time::Duration::from_secs(1))) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
            }
        };
        let scanner = {
            let engine = self.clone();
            let schedule = background.overdue_scan.clone();
            async move {
                let tz = engine.calendar().timezone();
                loop {
                    let now = engine.now().with_timezone(&tz);
                    let Some(next) = schedule.after(&now).next() else {
                        break;
                    };
                    let wait = (next.with_timezone(&Utc) - engine.now())
                        .to_std()
                        .unwrap_or_default();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    if *shutdown.borrow() {
                        break;
                    }
                    // With several nodes, the one that claims the tick runs it.
                    match engine
                        .store()
                        .claim_tick("overdue_scan", next.with_timezone(&Utc))
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "overdue scan not claimed");
                            continue;
                        }
                    }
                    match engine.scan_overdue().await {
                        Ok(r) => tracing::info!(
                            apologies = r.apologies.len(),
                            flagged = r.flagged.len(),
                            "overdue scan"
                        ),
                        Err(e) => tracing::error!(error = %e, "overdue scan failed"),
                    }
                }
            }
        };
        tokio::join!(worker, scanner, sealer);
    }
}
