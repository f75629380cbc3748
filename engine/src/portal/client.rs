//! `PortalClient`: token auth, timeouts, `Idempotency-Key` on every write, typed errors.

#[allow(unused_imports)]
use super::*;

/// Where the portal (or its adapter, or the simulator) is and how to talk to it.
#[derive(Clone)]
pub struct PortalConfig {
    /// Base URL of the contract, e.g. `http://127.0.0.1:8090/` (a path prefix is kept).
    pub base_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole request and its answer. Keep it below the engine's
    /// `hook_timeout`, so a slow portal fails as a typed timeout rather than a cut-off hook.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for PortalConfig {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl PortalConfig {
    /// A configuration with the default timeouts: 5 s to connect, 15 s per request.
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> PortalConfig {
        PortalConfig {
            base_url: base_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Why a call to the portal failed.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("invalid portal configuration: {0}")]
    Config(String),
    #[error("the portal did not answer {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("cannot reach the portal for {what}: {message}")]
    Unreachable { what: String, message: String },
    #[error("the portal refused the credentials of client `{client_id}`: {message}")]
    Unauthorized { client_id: String, message: String },
    #[error("the portal failed on {what} ({status} {code}): {message}")]
    Server {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("the portal rejected {what} ({status} {code}): {message}")]
    Rejected {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the portal to {what}: {message}")]
    InvalidResponse { what: String, message: String },
    #[error(
        "content of paper {paper_id} from the portal does not match its hash: expected {expected}, got {actual}"
    )]
    HashMismatch {
        paper_id: String,
        expected: String,
        actual: String,
    },
}

impl PortalError {
    /// Whether the same call may succeed later: timeouts, network failures, 5xx, 408 and
    /// 429, and content garbled in transit. A refusal (4xx) or bad credentials need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            PortalError::Timeout { .. }
            | PortalError::Unreachable { .. }
            | PortalError::Server { .. }
            | PortalError::HashMismatch { .. } => true,
            PortalError::Rejected { status, .. } => matches!(status, 408 | 429),
            PortalError::Config(_)
            | PortalError::Unauthorized { .. }
            | PortalError::InvalidResponse { .. } => false,
        }
    }

    /// The HTTP status the portal answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PortalError::Server { status, .. } | PortalError::Rejected { status, .. } => {
                Some(*status)
            }
            PortalError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }
}

/// A bearer token and when to stop using it.
pub(super) struct Token {
    pub(super) value: String,
    pub(super) refresh_at: Instant,
}

impl From<&wire::TokenResponse> for Token {
    fn from(t: &wire::TokenResponse) -> Token {
        // Refresh a little early (a tenth of the lifetime, at most 60 s), so a token does not
        // expire between being read here and reaching the portal.
        let life = Duration::from_secs(t.expires_in);
        let margin = (life / 10).min(Duration::from_secs(60));
        Token {
            value: t.access_token.clone(),
            refresh_at: Instant::now() + life.saturating_sub(margin),
        }
    }
}

pub(super) struct ClientInner {
    pub(super) http: reqwest::Client,
    pub(super) base: Url,
    pub(super) config: PortalConfig,
    /// One token for all calls; the lock also keeps concurrent callers from each fetching one.
    pub(super) token: tokio::sync::Mutex<Option<Token>>,
}

/// A client of the portal contract. Cheap to clone; clones share the connection pool and
/// the token.
#[derive(Clone)]
pub struct PortalClient {
    pub(super) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for PortalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalClient")
            .field("base_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The full chain of an error's causes: reqwest's top-level message alone ("error sending
/// request") says nothing an operator can act on.
pub(super) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

impl PortalClient {
    pub fn new(config: PortalConfig) -> Result<PortalClient, PortalError> {
        let mut base = Url::parse(&config.base_url)
            .map_err(|e| PortalError::Config(format!("base URL `{}`: {e}", config.base_url)))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(PortalError::Config(format!(
                "base URL `{}` must be an http(s) URL",
                config.base_url
            )));
        }
        // `Url::join` drops the last path segment unless the path ends with a slash.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("tthc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PortalError::Config(causes(&e)))?;
        Ok(PortalClient {
            inner: Arc::new(ClientInner {
                http,
                base,
                config,
                token: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn config(&self) -> &PortalConfig {
        &self.inner.config
    }

    /// The URL of an endpoint; each segment is percent-encoded (paper ids hold dots and
    /// dashes, and whatever else an adapter chooses).
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> PortalError {
        if e.is_timeout() {
            PortalError::Timeout {
                what: what.to_owned(),
                timeout: self.inner.config.request_timeout,
            }
        } else if e.is_decode() || e.is_body() && !e.is_request() {
            PortalError::InvalidResponse {
                what: what.to_owned(),
                message: causes(&e),
            }
        } else {
            PortalError::Unreachable {
                what: what.to_owned(),
                message: causes(&e),
            }
        }
    }

    /// Turns a non-2xx answer into an error, reading the contract's `{code, message}` body
    /// when there is one.
    async fn error_from(&self, what: &str, response: reqwest::Response) -> PortalError {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<wire::ErrorBody>(&text) {
            Ok(b) => (b.code, b.message),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                text.chars().take(300).collect(),
            ),
        };
        if status == StatusCode::UNAUTHORIZED {
            PortalError::Unauthorized {
                client_id: self.inner.config.client_id.clone(),
                message,
            }
        } else if status.is_server_error() {
            PortalError::Server {
                what: what.to_owned(),
                status: status.as_u16(),
                code,
                message,
            }
        } else {
            PortalError::Rejected {
                what: what.to_owned(),
                status: status.as_u16(),
                code,
                message,
            }
        }
    }

    /// Fetches a new token with the client credentials and keeps it for the next calls.
    pub async fn fetch_token(&self) -> Result<wire::TokenResponse, PortalError> {
        let mut slot = self.inner.token.lock().await;
        let fresh = self.request_token().await?;
        *slot = Some(Token::from(&fresh));
        Ok(fresh)
    }

    async fn request_token(&self) -> Result<wire::TokenResponse, PortalError> {
        let what = "POST /auth/token";
        let body = wire::TokenRequest {
            client_id: self.inner.config.client_id.clone(),
            client_secret: self.inner.config.client_secret.clone(),
        };
        let response = self
            .inner
            .http
            .post(self.url(&["auth", "token"]))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(what, e))?;
        if !response.status().is_success() {
            return Err(self.error_from(what, response).await);
        }
        let token: wire::TokenResponse = self.read_json(what, response).await?;
        if token.access_token.is_empty() {
            return Err(PortalError::InvalidResponse {
                what: what.to_owned(),
                message: "empty access_token".into(),
            });
        }
        Ok(token)
    }

    /// The current token, fetched when there is none or it is about to expire.
    async fn bearer(&self) -> Result<String, PortalError> {
        let mut slot = self.inner.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let fresh = self.request_token().await?;
        *slot = Some(Token::from(&fresh));
        Ok(fresh.access_token)
    }

    /// Drops `used` if it is still the cached token (another caller may have replaced it).
    async fn forget(&self, used: &str) {
        let mut slot = self.inner.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == used) {
            *slot = None;
        }
    }

    /// One authenticated call. On 401 the token is fetched again and the call made once more
    /// (tokens expire or are revoked, e.g. when the portal restarts).
    async fn call(
        &self,
        method: Method,
        url: Url,
        what: &str,
        idempotency_key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, PortalError> {
        let mut refreshed = false;
        loop {
            let token = self.bearer().await?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {token}"));
            if let Some(key) = idempotency_key {
                request = request.header(IDEMPOTENCY_KEY, key);
            }
            if let Some(b) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.transport_error(what, e))?;
            if response.status() == StatusCode::UNAUTHORIZED && !refreshed {
                self.forget(&token).await;
                refreshed = true;
                continue;
            }
            if !response.status().is_success() {
                return Err(self.error_from(what, response).await);
            }
            return Ok(response);
        }
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        what: &str,
        response: reqwest::Response,
    ) -> Result<T, PortalError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(what, e))?;
        serde_json::from_slice(&bytes).map_err(|e| PortalError::InvalidResponse {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        what: &str,
        idempotency_key: &str,
        body: &B,
    ) -> Result<T, PortalError> {
        if idempotency_key.is_empty() {
            return Err(PortalError::Config(format!(
                "{what} needs an idempotency key"
            )));
        }
        let body = serde_json::to_vec(body).map_err(|e| PortalError::Config(e.to_string()))?;
        let response = self
            .call(
                Method::POST,
                self.url(segments),
                what,
                Some(idempotency_key),
                Some(body),
            )
            .await?;
        self.read_json(what, response).await
    }

    /// `POST /dossiers/sync`.
    pub async fn sync_dossier(
        &self,
        idempotency_key: &str,
        dossier: &wire::SyncDossier,
    ) -> Result<wire::SyncAnswer, PortalError> {
        let what = format!("sync of dossier {}", dossier.dossier_code);
        self.write(&["dossiers", "sync"], &what, idempotency_key, dossier)
            .await
    }

    /// `GET /dossiers/{code}`: the latest state the portal holds.
    pub async fn synced_dossier(&self, code: &str) -> Result<wire::SyncedDossier, PortalError> {
        let what = format!("GET /dossiers/{code}");
        let response = self
            .call(
                Method::GET,
                self.url(&["dossiers", code]),
                &what,
                None,
                None,
            )
            .await?;
        self.read_json(&what, response).await
    }

    /// `POST /khodl/papers`.
    pub async fn push_paper(
        &self,
        idempotency_key: &str,
        paper: &wire::PushPaper,
    ) -> Result<wire::PushAnswer, PortalError> {
        let what = format!("push of paper {}", paper.metadata.paper_id);
        self.write(&["khodl", "papers"], &what, idempotency_key, paper)
            .await
    }

    /// `GET /khodl/papers?owner_id=&result_code=`: an owner's papers, optionally of one type.
    pub async fn list_papers(
        &self,
        owner_id: &str,
        result_code: Option<&str>,
    ) -> Result<Vec<wire::PaperInfo>, PortalError> {
        let mut url = self.url(&["khodl", "papers"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("owner_id", owner_id);
            if let Some(code) = result_code {
                q.append_pair("result_code", code);
            }
        }
        let what = "GET /khodl/papers";
        let response = self.call(Method::GET, url, what, None, None).await?;
        let list: wire::PaperList = self.read_json(what, response).await?;
        Ok(list.papers)
    }

    /// `GET /khodl/papers/{id}`.
    pub async fn paper(&self, paper_id: &str) -> Result<wire::PaperInfo, PortalError> {
        let what = format!("GET /khodl/papers/{paper_id}");
        let response = self
            .call(
                Method::GET,
                self.url(&["khodl", "papers", paper_id]),
                &what,
                None,
                None,
            )
            .await?;
        self.read_json(&what, response).await
    }

    /// `GET /khodl/papers/{id}/content`: the bytes, checked against the `X-Content-SHA256`
    /// header. Returns the content and its hash.
    pub async fn paper_content(&self, paper_id: &str) -> Result<(Vec<u8>, String), PortalError> {
        let what = format!("GET /khodl/papers/{paper_id}/content");
        let response = self
            .call(
                Method::GET,
                self.url(&["khodl", "papers", paper_id, "content"]),
                &what,
                None,
                None,
            )
            .await?;
        let expected = header_text(response.headers(), CONTENT_SHA256).ok_or_else(|| {
            PortalError::InvalidResponse {
                what: what.clone(),
                message: format!("no {CONTENT_SHA256} header"),
            }
        })?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&what, e))?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(PortalError::HashMismatch {
                paper_id: paper_id.to_owned(),
                expected,
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }
}

pub(super) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// The hooks
// ---------------------------------------------------------------------------------------------

/// Where the push hook reads a signed result's bytes: the blob store, addressed by SHA-256
/// (hex). `None` when it has no such content.
///
/// The call is synchronous; the hook runs it on a blocking thread, so reading a file is fine.
pub trait ContentSource: Send + Sync {
    fn content(&self, sha256: &str) -> Option<Vec<u8>>;
}

impl<F> ContentSource for F
where
    F: Fn(&str) -> Option<Vec<u8>> + Send + Sync,
{
    fn content(&self, sha256: &str) -> Option<Vec<u8>> {
        self(sha256)
    }
}
