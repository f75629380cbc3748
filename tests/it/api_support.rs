//! The real server on a free loopback port, on a fresh database, with tokens for every kind
//! of user and recording stand-ins for the hooks that reach external systems.

use std::time::Duration;

use engine::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tthc_api::auth::{self, UserKind};
use tthc_api::config::ServeConfig;
use tthc_api::server::{self, AppState};

use crate::engine_support::{AGENCY, CITIZEN_ID, lltp_form};
use crate::support::repo_root;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub _dir: TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub async fn start_api() -> Api {
    start_api_polling(20).await
}

/// [`start_api`] with the worker polling for due jobs every `job_poll_ms`.
pub async fn start_api_polling(job_poll_ms: u64) -> Api {
    start_api_with(job_poll_ms, |_| {}).await
}

/// [`start_api`] with its configuration changed by `configure` (e.g. another province's
/// agencies).
pub async fn start_api_with(job_poll_ms: u64, configure: impl FnOnce(&mut ServeConfig)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: crate::support::database_url(dir.path()).await,
        root: repo_root(),
        jwt_secret: Some(SECRET.into()),
        job_poll_ms,
        body_limit_bytes: 64 * 1024,
        blobs_dir: dir.path().join("blobs"),
        portal_simulator_database: format!(
            "sqlite://{}",
            dir.path().join("portal-sim.db").display()
        ),
        ..ServeConfig::default()
    };
    configure(&mut config);
    let (router, state, background) = server::build(&config, Clock::System).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router.into_make_service()).await });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let engine = state.engine.clone();
    tokio::spawn(async move { engine.run_background(background, rx).await });
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        state,
        _dir: dir,
        _stop: stop,
    }
}

pub fn token_for(
    kind: UserKind,
    sub: &str,
    roles: &[&str],
    agency: Option<&str>,
    owner: Option<&str>,
) -> String {
    let claims = auth::claims(
        kind,
        sub,
        &format!("Người dùng {sub}"),
        roles.iter().map(|r| r.to_string()).collect(),
        agency.map(str::to_owned),
        owner.map(str::to_owned),
        chrono::Duration::minutes(30),
    );
    auth::mint(SECRET.as_bytes(), &claims).unwrap()
}

pub fn citizen_token() -> String {
    token_for(UserKind::Citizen, "citizen-1", &[], None, Some(CITIZEN_ID))
}
pub fn other_citizen_token() -> String {
    token_for(
        UserKind::Citizen,
        "citizen-2",
        &[],
        None,
        Some("079088001234"),
    )
}
pub fn officer_token(sub: &str, roles: &[&str]) -> String {
    token_for(UserKind::Officer, sub, roles, Some(AGENCY), None)
}
pub fn foreign_officer_token() -> String {
    token_for(
        UserKind::Officer,
        "foreign",
        &[
            "mot_cua",
            "chuyen_vien",
            "lanh_dao_phong",
            "lanh_dao",
            "van_thu",
            "ke_toan",
        ],
        Some("000.00.08.H59"),
        None,
    )
}
pub fn admin_token() -> String {
    token_for(UserKind::Admin, "admin", &[], None, None)
}
pub fn auditor_token() -> String {
    token_for(UserKind::Auditor, "auditor", &[], None, None)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        reply(rb).await
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        reply(rb).await
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Files a judicial record certificate request online as the citizen.
    pub async fn file_lltp(&self) -> Value {
        let r = self
            .post(
                "/api/v1/dossiers",
                &citizen_token(),
                json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": lltp_form(1)}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    /// Waits until the dossier satisfies `pred` (the background worker runs the hooks).
    pub async fn wait_for(&self, code: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let admin = admin_token();
        for _ in 0..250 {
            let r = self.get(&format!("/api/v1/dossiers/{code}"), &admin).await;
            if pred(&r.body) {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("dossier {code} never reached: {what}");
    }
}

async fn reply(rb: reqwest::RequestBuilder) -> Reply {
    let r = rb.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(status.as_u16() < 500, "server error {status}: {text}");
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Whether the dossier (its JSON view) has an open task at `step`.
pub fn has_task(dossier: &Value, step: &str) -> bool {
    dossier["tasks"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["step"] == step))
}

pub fn task_of(dossier: &Value, step: &str) -> String {
    dossier["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["step"] == step)
        .unwrap_or_else(|| panic!("no task at {step}: {}", dossier["tasks"]))["task_id"]
        .as_str()
        .unwrap()
        .to_owned()
}
