//! `tthc portal-sim`: a simulator of the portal contract (`docs/portal-api.md`).
//!
//! A real HTTP server, persistent in its own SQLite file, so tests and demos exercise the
//! same client, retries and idempotency a deployment does, without the real portal:
//!
//! - token auth (`POST /auth/token`, bearer tokens kept in memory: a restart revokes them,
//!   which exercises the client's refresh on 401);
//! - `POST /dossiers/sync` keeping the latest state per dossier by `sequence`;
//! - the owner's Kho DL: `POST /khodl/papers`, `GET /khodl/papers[/{id}[/content]]`;
//! - `Idempotency-Key` on every write: a repeated key with the same body gets the stored first
//!   answer and changes nothing; with another body it is refused (409);
//! - fault injection (`--error-rate`, `--latency-ms`, `--timeout-rate`, `--fail-first`), also
//!   switchable at run time through `PUT /_sim/faults`, and counters at `GET /_sim/stats`.
//!
//! The `/_sim` endpoints have no authentication: the simulator is for loopback use only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::Utc;
use engine::portal::{
    CONTENT_SHA256, IDEMPOTENCY_KEY, parse_portal_time, portal_time, sha256_hex, wire,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use tokio::task::JoinHandle;

/// The client secret the simulator expects by default, and `tthc serve` sends by default.
pub const DEV_PORTAL_CLIENT_SECRET: &str = "tthc-dev-secret";

/// The largest request body accepted: papers travel base64-encoded inside JSON.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Faults to inject into the contract's endpoints (not into `/_sim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Faults {
    /// Share of requests answered 503, from 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Delay added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests that hang for `--hang-ms` (longer than the client's timeout)
    /// before a 503, from 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub timeout_rate: f64,
    /// How long a request picked by `--timeout-rate` hangs, in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    pub hang_ms: u64,
    /// Answer the first N requests with 503, then behave (deterministic, for tests).
    /// Counted from start, or from the last `PUT /_sim/faults` that sets it.
    #[arg(long, default_value_t = 0)]
    pub fail_first: u32,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            error_rate: 0.0,
            latency_ms: 0,
            timeout_rate: 0.0,
            hang_ms: 120_000,
            fail_first: 0,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number between 0.0 and 1.0"))?;
    check_rate(rate).map(|()| rate)
}

fn check_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("{rate} is not between 0.0 and 1.0"))
    }
}

/// `PUT /_sim/faults`: the fields to change; the others keep their values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    pub error_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    pub timeout_rate: Option<f64>,
    pub hang_ms: Option<u64>,
    pub fail_first: Option<u32>,
}

/// `tthc portal-sim` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The simulator's own database: `sqlite://PATH` (created when missing), never tthc's.
    // Same id as the global `--database`, so this one shadows it in `portal-sim` (clap
    // refuses two `--database` flags with different ids).
    #[arg(
        long,
        env = "TTHC_PORTAL_SIM_DATABASE",
        default_value = "sqlite://portal-sim.db"
    )]
    pub database: String,
    /// The client id tthc must present.
    #[arg(long, env = "TTHC_PORTAL_CLIENT_ID", default_value = "tthc")]
    pub client_id: String,
    /// The client secret tthc must present.
    #[arg(
        long,
        env = "TTHC_PORTAL_CLIENT_SECRET",
        default_value = DEV_PORTAL_CLIENT_SECRET,
        hide_env_values = true
    )]
    pub client_secret: String,
    /// Lifetime of the bearer tokens issued, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_seconds: u64,
    #[command(flatten)]
    pub faults: Faults,
}

/// How to run the simulator in-process.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub token_ttl: Duration,
    pub faults: Faults,
}

impl SimConfig {
    /// On a free loopback port, with the given database, credentials and no faults.
    pub fn local(
        database_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            token_ttl: Duration::from_secs(3600),
            faults: Faults::default(),
        }
    }
}

impl From<Args> for SimConfig {
    fn from(a: Args) -> SimConfig {
        SimConfig {
            listen: a.listen,
            database_url: a.database,
            client_id: a.client_id,
            client_secret: a.client_secret,
            token_ttl: Duration::from_secs(a.token_ttl_seconds),
            faults: a.faults,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    #[error("cannot open the simulator database {url}: {source}")]
    Database { url: String, source: sqlx::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters kept since the process started.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    faults_injected: AtomicU64,
    tokens_issued: AtomicU64,
    unauthorized: AtomicU64,
    duplicates: AtomicU64,
}

struct FaultState {
    faults: Faults,
    /// Requests failed so far under `fail_first`.
    failed_first: u32,
}

struct Sim {
    db: SqlitePool,
    client_id: String,
    client_secret: String,
    token_ttl: Duration,
    /// Issued tokens and when each expires.
    tokens: Mutex<HashMap<String, Instant>>,
    faults: Mutex<FaultState>,
    /// Serializes writes, so checking an idempotency key and recording its answer cannot
    /// interleave with another request carrying the same key.
    writes: tokio::sync::Mutex<()>,
    counters: Counters,
}

/// Starts the simulator; returns the address it listens on and the server task.
pub async fn start(
    config: SimConfig,
) -> Result<(SocketAddr, JoinHandle<std::io::Result<()>>), SimError> {
    check_rate(config.faults.error_rate).map_err(SimError::Config)?;
    check_rate(config.faults.timeout_rate).map_err(SimError::Config)?;
    if config.client_id.is_empty() || config.client_secret.is_empty() {
        return Err(SimError::Config(
            "the client id and secret must not be empty".into(),
        ));
    }
    let db_error = |source| SimError::Database {
        url: config.database_url.clone(),
        source,
    };
    let options = SqliteConnectOptions::from_str(&config.database_url)
        .map_err(db_error)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let db = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(db_error)?;
    for &ddl in SCHEMA {
        sqlx::query(ddl).execute(&db).await.map_err(db_error)?;
    }
    let sim = Arc::new(Sim {
        db,
        client_id: config.client_id,
        client_secret: config.client_secret,
        token_ttl: config.token_ttl,
        tokens: Mutex::new(HashMap::new()),
        faults: Mutex::new(FaultState {
            faults: config.faults,
            failed_first: 0,
        }),
        writes: tokio::sync::Mutex::new(()),
        counters: Counters::default(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: config.listen,
        source,
    })?;
    let app = router(sim);
    let handle = tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
    Ok((addr, handle))
}

/// `tthc portal-sim`: starts, prints where it listens on stdout, serves until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // clap hands the global `--database`'s environment variable down to this command's
    // `--database`: never let the simulator write into tthc's own database.
    if std::env::var("TTHC_DATABASE_URL").is_ok_and(|engine_db| engine_db == args.database) {
        anyhow::bail!(
            "the simulator will not use tthc's database ({}, from TTHC_DATABASE_URL): \
             give it its own with --database sqlite://portal-sim.db",
            args.database
        );
    }
    let database = args.database.clone();
    let client_id = args.client_id.clone();
    let (addr, handle) = start(args.into()).await?;
    // The first line of stdout is the contract: scripts and tests read the address from it.
    println!("portal simulator listening on http://{addr}");
    eprintln!("database {database}; client id `{client_id}`; admin: /_sim/stats, /_sim/faults");
    tokio::select! {
        served = handle => {
            served??;
            Ok(ExitCode::SUCCESS)
        }
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sim_idempotent_writes (
        key TEXT PRIMARY KEY,
        route TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_dossiers (
        dossier_code TEXT PRIMARY KEY,
        sequence INTEGER NOT NULL,
        status INTEGER NOT NULL,
        payload TEXT NOT NULL,
        updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_syncs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dossier_code TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        applied INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_papers (
        paper_id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL,
        result_code TEXT NOT NULL,
        metadata TEXT NOT NULL,
        content BLOB NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        stored_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sim_papers_owner ON sim_papers (owner_id, result_code)",
    "CREATE TABLE IF NOT EXISTS sim_pushes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        paper_id TEXT NOT NULL,
        created INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        at TEXT NOT NULL)",
];

fn router(sim: Arc<Sim>) -> Router {
    let contract = Router::new()
        .route("/dossiers/sync", post(sync_dossier))
        .route("/dossiers/{code}", get(synced_dossier))
        .route("/khodl/papers", post(push_paper).get(list_papers))
        .route("/khodl/papers/{id}", get(paper))
        .route("/khodl/papers/{id}/content", get(paper_content))
        .route_layer(from_fn_with_state(sim.clone(), require_token))
        .route("/auth/token", post(issue_token))
        .layer(from_fn_with_state(sim.clone(), inject_faults));
    let admin = Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", get(faults).put(set_faults))
        .route("/_sim/tokens", axum::routing::delete(revoke_tokens));
    contract
        .merge(admin)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sim)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error answer: `{code, message}` with a 4xx/5xx status, as the contract says.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    fn storage(e: sqlx::Error) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("the simulator's database failed: {e}"),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::storage(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = wire::ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

fn to_i64(n: u64, what: &str) -> Result<i64, ApiError> {
    i64::try_from(n).map_err(|_| ApiError::invalid(format!("{what} {n} is too large")))
}

// ---------------------------------------------------------------------------------------------
// Middleware: faults and tokens
// ---------------------------------------------------------------------------------------------

async fn inject_faults(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    sim.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (faults, fail_first) = {
        let mut state = sim.faults.lock().unwrap_or_else(|e| e.into_inner());
        let fail = state.failed_first < state.faults.fail_first;
        if fail {
            state.failed_first += 1;
        }
        (
            state.faults.clone(),
            fail.then_some((state.failed_first, state.faults.fail_first)),
        )
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let unavailable = |message: String| {
        sim.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).into_response()
    };
    if let Some((n, of)) = fail_first {
        return unavailable(format!("fault injected: fail-first ({n} of {of})"));
    }
    if faults.timeout_rate > 0.0 && rand::random::<f64>() < faults.timeout_rate {
        // Counted now: the client usually gives up first, and the server then drops this
        // request without running the rest of it.
        sim.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(faults.hang_ms)).await;
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("fault injected: hung for {} ms", faults.hang_ms),
        )
        .into_response();
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        return unavailable("fault injected: error rate".to_owned());
    }
    next.run(request).await
}

async fn require_token(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let valid = presented.is_some_and(|t| {
        let mut tokens = sim.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        tokens.retain(|_, expires| *expires > now);
        tokens.contains_key(t)
    });
    if !valid {
        sim.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        let message = if presented.is_some() {
            "the bearer token is unknown or expired: fetch a new one at /auth/token"
        } else {
            "an `Authorization: Bearer` token from /auth/token is required"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message).into_response();
    }
    next.run(request).await
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn issue_token(State(sim): State<Arc<Sim>>, body: Bytes) -> ApiResult {
    let request: wire::TokenRequest = parse_body(&body)?;
    let id_ok = same_secret(&request.client_id, &sim.client_id);
    let secret_ok = same_secret(&request.client_secret, &sim.client_secret);
    if !(id_ok && secret_ok) {
        sim.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client id or wrong secret",
        ));
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    sim.tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token.clone(), Instant::now() + sim.token_ttl);
    sim.counters.tokens_issued.fetch_add(1, Ordering::Relaxed);
    Ok(Json(wire::TokenResponse {
        access_token: token,
        expires_in: sim.token_ttl.as_secs(),
        token_type: Some("Bearer".into()),
    })
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            format!("every write needs an `{IDEMPOTENCY_KEY}` header of 1 to 255 characters"),
        ));
    }
    Ok(key.to_owned())
}

/// The stored answer to `key`, if it was seen before with the same request. A key first used
/// on another endpoint, or with another body, is refused (409): answering it with the first
/// request's result would tell the caller its second request was applied when it was not.
async fn replay(
    sim: &Sim,
    key: &str,
    route: &str,
    body: &[u8],
) -> Result<Option<Response>, ApiError> {
    let Some(row) = sqlx::query(
        "SELECT route, request_hash, status, body FROM sim_idempotent_writes WHERE key = ?",
    )
    .bind(key)
    .fetch_optional(&sim.db)
    .await?
    else {
        return Ok(None);
    };
    let first_route: String = row.try_get("route")?;
    let first_hash: String = row.try_get("request_hash")?;
    if first_route != route {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!("idempotency key `{key}` was first used for {first_route}"),
        ));
    }
    if first_hash != sha256_hex(body) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!("idempotency key `{key}` was first used with another body"),
        ));
    }
    let status: i64 = row.try_get("status")?;
    let body: String = row.try_get("body")?;
    sim.counters.duplicates.fetch_add(1, Ordering::Relaxed);
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    Ok(Some(response))
}

/// Records the answer to `key` in the transaction that made the change, so either both are
/// stored or neither. Only successes are recorded: a refused request changed nothing, and
/// repeating it is harmless.
async fn remember(
    tx: &mut sqlx::SqliteConnection,
    key: &str,
    route: &str,
    request: &[u8],
    body: &Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO sim_idempotent_writes (key, route, request_hash, status, body, created_at)
         VALUES (?, ?, ?, 200, ?, ?)",
    )
    .bind(key)
    .bind(route)
    .bind(sha256_hex(request))
    .bind(body.to_string())
    .bind(Utc::now().to_rfc3339())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dossier sync
// ---------------------------------------------------------------------------------------------

fn check_time(what: &str, value: Option<&str>) -> Result<(), ApiError> {
    match value {
        Some(v) if parse_portal_time(v).is_none() => Err(ApiError::invalid(format!(
            "{what} `{v}` is not a time as yyyyMMddHHmmss"
        ))),
        _ => Ok(()),
    }
}

fn validate_sync(d: &wire::SyncDossier) -> Result<(), ApiError> {
    if d.dossier_code.trim().is_empty() {
        return Err(ApiError::invalid("dossier_code is empty"));
    }
    if d.sequence == 0 {
        return Err(ApiError::invalid("sequence starts at 1"));
    }
    if d.procedure_code.trim().is_empty() || d.agency_code.trim().is_empty() {
        return Err(ApiError::invalid(
            "procedure_code and agency_code are required",
        ));
    }
    if !(1..=10).contains(&d.status) {
        return Err(ApiError::invalid(format!(
            "status {} is not a TrangThaiHoSo code (1 to 10)",
            d.status
        )));
    }
    if d.online_level
        .is_some_and(|l| !(1..=2).contains(&l) || d.channel != 2)
    {
        return Err(ApiError::invalid(
            "online_level is 1 (partly online) or 2 (fully online), for an online filing only",
        ));
    }
    if !(1..=3).contains(&d.channel) {
        return Err(ApiError::invalid(format!(
            "channel {} is not 1 (in person), 2 (online) or 3 (postal)",
            d.channel
        )));
    }
    if d.owner.id.trim().is_empty() || !(1..=2).contains(&d.owner.owner_type) {
        return Err(ApiError::invalid(
            "owner needs an id and a type: 1 person, 2 organization",
        ));
    }
    check_time("filed_at", Some(&d.filed_at))?;
    for (what, value) in [
        ("received_at", &d.received_at),
        ("due_at", &d.due_at),
        ("promised_at", &d.promised_at),
        ("finished_at", &d.finished_at),
        ("returned_at", &d.returned_at),
    ] {
        check_time(what, value.as_deref())?;
    }
    for f in &d.files {
        if f.reused > 2 {
            return Err(ApiError::invalid(format!(
                "file {}: reused {} is not 0, 1 or 2",
                f.file_id, f.reused
            )));
        }
        if f.reused == 2 && f.replaced_by_result_code.is_none() {
            return Err(ApiError::invalid(format!(
                "file {}: reused 2 (replaced by a result) needs replaced_by_result_code",
                f.file_id
            )));
        }
    }
    for s in &d.supplements {
        check_time("supplements.requested_at", Some(&s.requested_at))?;
        check_time("supplements.supplemented_at", s.supplemented_at.as_deref())?;
        check_time("supplements.due_before", s.due_before.as_deref())?;
        check_time("supplements.due_after", s.due_after.as_deref())?;
    }
    for r in &d.results {
        check_time("results.signed_at", Some(&r.signed_at))?;
    }
    for f in &d.fees {
        check_time("fees.paid_at", Some(&f.paid_at))?;
        if let Some(c) = &f.channel
            && !["counter", "online", "postal"].contains(&c.as_str())
        {
            return Err(ApiError::invalid(format!(
                "fees.channel `{c}` is not counter, online or postal"
            )));
        }
    }
    Ok(())
}

async fn sync_dossier(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    const ROUTE: &str = "POST /dossiers/sync";
    let key = idempotency_key(&headers)?;
    let _writing = sim.writes.lock().await;
    if let Some(stored) = replay(&sim, &key, ROUTE, &body).await? {
        return Ok(stored);
    }
    let dossier: wire::SyncDossier = parse_body(&body)?;
    validate_sync(&dossier)?;
    let sequence = to_i64(dossier.sequence, "sequence")?;
    let now = Utc::now();
    let mut tx = sim.db.begin().await?;
    let held = sqlx::query("SELECT sequence, status FROM sim_dossiers WHERE dossier_code = ?")
        .bind(&dossier.dossier_code)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| -> Result<(i64, i64), sqlx::Error> {
            Ok((r.try_get("sequence")?, r.try_get("status")?))
        })
        .transpose()?;
    // Syncs may arrive out of order (a retry of an old job after a newer one): the portal
    // keeps the highest sequence, never going back to an older state.
    let applied = held.is_none_or(|(seq, _)| sequence > seq);
    if applied {
        let payload = serde_json::to_string(&dossier)
            .map_err(|e| ApiError::invalid(format!("cannot store the dossier: {e}")))?;
        sqlx::query(
            "INSERT INTO sim_dossiers (dossier_code, sequence, status, payload, updated_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (dossier_code) DO UPDATE SET sequence = excluded.sequence,
               status = excluded.status, payload = excluded.payload, updated_at = excluded.updated_at",
        )
        .bind(&dossier.dossier_code)
        .bind(sequence)
        .bind(i64::from(dossier.status))
        .bind(payload)
        .bind(portal_time(now))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO sim_syncs (dossier_code, sequence, applied, idempotency_key, at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&dossier.dossier_code)
    .bind(sequence)
    .bind(applied)
    .bind(&key)
    .bind(now.to_rfc3339())
    .execute(&mut *tx)
    .await?;
    let (held_seq, held_status) = match (applied, held) {
        (false, Some((seq, status))) => (
            u64::try_from(seq).unwrap_or_default(),
            u8::try_from(status).unwrap_or_default(),
        ),
        _ => (dossier.sequence, dossier.status),
    };
    let answer = serde_json::to_value(wire::SyncAnswer {
        dossier_code: dossier.dossier_code.clone(),
        applied,
        sequence: held_seq,
        status: held_status,
    })
    .unwrap_or_default();
    remember(&mut tx, &key, ROUTE, &body, &answer).await?;
    tx.commit().await?;
    Ok(Json(answer).into_response())
}

async fn synced_dossier(State(sim): State<Arc<Sim>>, Path(code): Path<String>) -> ApiResult {
    let row = sqlx::query(
        "SELECT sequence, status, payload, updated_at FROM sim_dossiers WHERE dossier_code = ?",
    )
    .bind(&code)
    .fetch_optional(&sim.db)
    .await?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "dossier_not_found",
            format!("dossier {code} was never synced"),
        )
    })?;
    let payload: String = row.try_get("payload")?;
    let dossier: wire::SyncDossier = serde_json::from_str(&payload).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("stored dossier {code} is unreadable: {e}"),
        )
    })?;
    let sequence: i64 = row.try_get("sequence")?;
    let status: i64 = row.try_get("status")?;
    Ok(Json(wire::SyncedDossier {
        dossier_code: code,
        sequence: u64::try_from(sequence).unwrap_or_default(),
        status: u8::try_from(status).unwrap_or_default(),
        updated_at: row.try_get("updated_at")?,
        dossier,
    })
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Kho DL papers
// ---------------------------------------------------------------------------------------------

/// Paper ids travel in URL paths: keep them to characters that need no escaping there.
fn valid_paper_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

fn validate_paper(m: &wire::PaperMetadata) -> Result<(), ApiError> {
    if !valid_paper_id(&m.paper_id) {
        return Err(ApiError::invalid(format!(
            "paper_id `{}` must be 1 to 200 letters, digits, `.`, `-`, `_` or `:`",
            m.paper_id
        )));
    }
    for (what, value) in [
        ("owner_id", &m.owner_id),
        ("result_code", &m.result_code),
        ("name", &m.name),
        ("issuing_agency_code", &m.issuing_agency_code),
        ("dossier_code", &m.dossier_code),
        ("procedure_code", &m.procedure_code),
    ] {
        if value.trim().is_empty() {
            return Err(ApiError::invalid(format!("{what} is required")));
        }
    }
    check_time("issued_at", Some(&m.issued_at))?;
    check_time("valid_until", m.valid_until.as_deref())?;
    if m.permanent == m.valid_until.is_some() {
        return Err(ApiError::invalid(
            "a paper is either permanent or valid until a date: give exactly one",
        ));
    }
    if HeaderValue::from_str(&m.content_type).is_err() {
        return Err(ApiError::invalid("content_type is not a valid media type"));
    }
    Ok(())
}

async fn push_paper(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    const ROUTE: &str = "POST /khodl/papers";
    let key = idempotency_key(&headers)?;
    let _writing = sim.writes.lock().await;
    if let Some(stored) = replay(&sim, &key, ROUTE, &body).await? {
        return Ok(stored);
    }
    let push: wire::PushPaper = parse_body(&body)?;
    validate_paper(&push.metadata)?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(push.content.as_bytes())
        .map_err(|e| ApiError::invalid(format!("content is not standard base64: {e}")))?;
    let sha256 = sha256_hex(&content);
    if !sha256.eq_ignore_ascii_case(push.sha256.trim()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "hash_mismatch",
            format!(
                "the content's SHA-256 is {sha256}, the request says {}",
                push.sha256
            ),
        ));
    }
    let size = content.len() as u64;
    let m = &push.metadata;
    let now = Utc::now();
    let mut tx = sim.db.begin().await?;
    let existing: Option<String> =
        sqlx::query_scalar("SELECT sha256 FROM sim_papers WHERE paper_id = ?")
            .bind(&m.paper_id)
            .fetch_optional(&mut *tx)
            .await?;
    // Papers are immutable: the same content again is fine (another key, same paper), other
    // content under the same id is a conflict a person must look at.
    let created = match existing {
        Some(held) if held == sha256 => false,
        Some(held) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "paper_exists",
                format!(
                    "paper {} is already stored with different content (sha256 {held})",
                    m.paper_id
                ),
            ));
        }
        None => {
            let metadata = serde_json::to_string(m)
                .map_err(|e| ApiError::invalid(format!("cannot store the metadata: {e}")))?;
            sqlx::query(
                "INSERT INTO sim_papers
                   (paper_id, owner_id, result_code, metadata, content, sha256, size, stored_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&m.paper_id)
            .bind(&m.owner_id)
            .bind(&m.result_code)
            .bind(metadata)
            .bind(&content)
            .bind(&sha256)
            .bind(to_i64(size, "size")?)
            .bind(portal_time(now))
            .execute(&mut *tx)
            .await?;
            true
        }
    };
    sqlx::query(
        "INSERT INTO sim_pushes (paper_id, created, idempotency_key, at) VALUES (?, ?, ?, ?)",
    )
    .bind(&m.paper_id)
    .bind(created)
    .bind(&key)
    .bind(now.to_rfc3339())
    .execute(&mut *tx)
    .await?;
    let answer = serde_json::to_value(wire::PushAnswer {
        paper_id: m.paper_id.clone(),
        sha256,
        size,
        created,
    })
    .unwrap_or_default();
    remember(&mut tx, &key, ROUTE, &body, &answer).await?;
    tx.commit().await?;
    Ok(Json(answer).into_response())
}

fn paper_info(row: &sqlx::sqlite::SqliteRow) -> Result<wire::PaperInfo, ApiError> {
    let metadata: String = row.try_get("metadata")?;
    let metadata: wire::PaperMetadata = serde_json::from_str(&metadata).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("stored metadata is unreadable: {e}"),
        )
    })?;
    let size: i64 = row.try_get("size")?;
    Ok(wire::PaperInfo {
        metadata,
        sha256: row.try_get("sha256")?,
        size: u64::try_from(size).unwrap_or_default(),
        stored_at: row.try_get("stored_at")?,
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    owner_id: Option<String>,
    result_code: Option<String>,
}

async fn list_papers(
    State(sim): State<Arc<Sim>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let owner_id = q.owner_id.filter(|o| !o.trim().is_empty()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_owner_id",
            "list an owner's papers: ?owner_id=…[&result_code=…]",
        )
    })?;
    let rows = sqlx::query(
        "SELECT metadata, sha256, size, stored_at FROM sim_papers
         WHERE owner_id = ? AND (? IS NULL OR result_code = ?)
         ORDER BY stored_at, paper_id",
    )
    .bind(&owner_id)
    .bind(&q.result_code)
    .bind(&q.result_code)
    .fetch_all(&sim.db)
    .await?;
    let papers = rows.iter().map(paper_info).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(wire::PaperList { papers }).into_response())
}

fn paper_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "paper_not_found",
        format!("no paper {id}"),
    )
}

async fn paper(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> ApiResult {
    let row =
        sqlx::query("SELECT metadata, sha256, size, stored_at FROM sim_papers WHERE paper_id = ?")
            .bind(&id)
            .fetch_optional(&sim.db)
            .await?
            .ok_or_else(|| paper_not_found(&id))?;
    Ok(Json(paper_info(&row)?).into_response())
}

async fn paper_content(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> ApiResult {
    let row = sqlx::query("SELECT metadata, content, sha256 FROM sim_papers WHERE paper_id = ?")
        .bind(&id)
        .fetch_optional(&sim.db)
        .await?
        .ok_or_else(|| paper_not_found(&id))?;
    let content: Vec<u8> = row.try_get("content")?;
    let sha256: String = row.try_get("sha256")?;
    let metadata: String = row.try_get("metadata")?;
    let content_type = serde_json::from_str::<wire::PaperMetadata>(&metadata)
        .ok()
        .and_then(|m| HeaderValue::from_str(&m.content_type).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = content.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Ok(v) = HeaderValue::from_str(&sha256) {
        headers.insert(CONTENT_SHA256, v);
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Admin: stats and faults
// ---------------------------------------------------------------------------------------------

/// `GET /_sim/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to the contract's endpoints since start (faulted ones included).
    pub requests: u64,
    pub faults_injected: u64,
    pub tokens_issued: u64,
    /// Requests refused for bad credentials or tokens since start.
    pub unauthorized: u64,
    /// Writes answered from the idempotency record since start.
    pub duplicates: u64,
    /// Syncs that changed the portal's state (from the database).
    pub syncs_applied: u64,
    /// Syncs ignored because the portal held a newer sequence (from the database).
    pub syncs_ignored: u64,
    /// Push requests applied (from the database), whether they created the paper or not.
    pub pushes: u64,
    /// Papers stored.
    pub papers: u64,
    /// Dossiers synced at least once.
    pub dossiers: u64,
}

async fn count(db: &SqlitePool, sql: &'static str) -> Result<u64, ApiError> {
    let n: i64 = sqlx::query_scalar(sql).fetch_one(db).await?;
    Ok(u64::try_from(n).unwrap_or_default())
}

async fn stats(State(sim): State<Arc<Sim>>) -> ApiResult {
    let c = &sim.counters;
    let stats = Stats {
        requests: c.requests.load(Ordering::Relaxed),
        faults_injected: c.faults_injected.load(Ordering::Relaxed),
        tokens_issued: c.tokens_issued.load(Ordering::Relaxed),
        unauthorized: c.unauthorized.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        syncs_applied: count(&sim.db, "SELECT COUNT(*) FROM sim_syncs WHERE applied").await?,
        syncs_ignored: count(&sim.db, "SELECT COUNT(*) FROM sim_syncs WHERE NOT applied").await?,
        pushes: count(&sim.db, "SELECT COUNT(*) FROM sim_pushes").await?,
        papers: count(&sim.db, "SELECT COUNT(*) FROM sim_papers").await?,
        dossiers: count(&sim.db, "SELECT COUNT(*) FROM sim_dossiers").await?,
    };
    Ok(Json(stats).into_response())
}

async fn faults(State(sim): State<Arc<Sim>>) -> Json<Faults> {
    Json(
        sim.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .faults
            .clone(),
    )
}

async fn set_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> ApiResult {
    let patch: FaultsPatch = parse_body(&body)?;
    for rate in [patch.error_rate, patch.timeout_rate].into_iter().flatten() {
        check_rate(rate).map_err(ApiError::invalid)?;
    }
    let mut state = sim.faults.lock().unwrap_or_else(|e| e.into_inner());
    let f = &mut state.faults;
    f.error_rate = patch.error_rate.unwrap_or(f.error_rate);
    f.latency_ms = patch.latency_ms.unwrap_or(f.latency_ms);
    f.timeout_rate = patch.timeout_rate.unwrap_or(f.timeout_rate);
    f.hang_ms = patch.hang_ms.unwrap_or(f.hang_ms);
    if let Some(n) = patch.fail_first {
        // Setting it starts the count again, so "fail the next N" is what a test asks for.
        f.fail_first = n;
        state.failed_first = 0;
    }
    Ok(Json(state.faults.clone()).into_response())
}

/// `DELETE /_sim/tokens`: forgets every issued token, as a portal restart would.
async fn revoke_tokens(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let mut tokens = sim.tokens.lock().unwrap_or_else(|e| e.into_inner());
    let revoked = tokens.len();
    tokens.clear();
    Json(json!({ "revoked": revoked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_shares() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("x").is_err());
    }

    #[test]
    fn paper_ids_need_no_escaping() {
        assert!(valid_paper_id("000.00.01.H59-260302-0001:KQ.LLTP.01"));
        assert!(!valid_paper_id(""));
        assert!(!valid_paper_id("a/b"));
        assert!(!valid_paper_id("a b"));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
