//! HTTP routes, grouped by who calls them. Handlers parse, check who may call, build an
//! engine command, run it and answer; the rules themselves live in the engine.

pub mod admin;
pub mod audit;
pub mod dossiers;
pub mod papers;
pub mod system;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use engine::dossier::Dossier;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::auth::{Caller, UserKind};
use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

/// Whether the caller may read the dossier: its owner, an officer of its agency or holding one
/// of its tasks, an auditor, an administrator.
pub fn can_read(caller: &Caller, d: &Dossier) -> bool {
    can_read_as_holder(caller, d)
        || (caller.kind() == UserKind::Officer && {
            let agency = caller.agency().unwrap_or_default();
            d.tasks.values().any(|t| *t.agency == *agency)
        })
}

/// Whether the caller may read the dossier by what never changes after filing: its owner, the
/// agency that holds it. Any version of the dossier answers this alike.
fn can_read_as_holder(caller: &Caller, d: &Dossier) -> bool {
    match caller.kind() {
        UserKind::Citizen => caller.claims.owner_id.as_deref() == Some(d.owner.id.as_str()),
        UserKind::Officer => {
            let agency = caller.agency().unwrap_or_default();
            agency == &*d.agency_code || agency == &**d.competent_agency()
        }
        UserKind::Auditor | UserKind::Admin => true,
    }
}

/// Refuses with a plain 403 a command on a dossier the caller may not see. The owner or the
/// holding agency is answered from the version this node last saw, without a read; an
/// officer of another agency, who may see it through a task of theirs, is checked on the
/// current state.
pub async fn may_command(state: &AppState, caller: &Caller, code: &str) -> ApiResult<()> {
    match state.engine.last_seen(code) {
        Some(d) if can_read_as_holder(caller, &d) => Ok(()),
        _ => readable_dossier(state, caller, code).await.map(|_| ()),
    }
}

pub async fn readable_dossier(state: &AppState, caller: &Caller, code: &str) -> ApiResult<Dossier> {
    let d = state.engine.dossier(code).await?;
    if !can_read(caller, &d) {
        return Err(ApiError::forbidden(format!(
            "you may not see dossier {code}"
        )));
    }
    Ok(d)
}

/// Query parameters whose rejections are problem details: 400 `invalid_query`, naming the
/// parameter in the detail and in `extra.parameter`. Use it instead of axum's `Query`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| invalid_query(&e))
    }
}

fn invalid_query(e: &serde_path_to_error::Error<serde_urlencoded::de::Error>) -> ApiError {
    let message = e.inner().to_string();
    let path = e.path().to_string();
    // serde names an unknown or missing parameter only in its message: "unknown field `x`, …".
    let named = || {
        let rest = message
            .strip_prefix("unknown field `")
            .or_else(|| message.strip_prefix("missing field `"))
            .or_else(|| message.strip_prefix("duplicate field `"))?;
        Some(rest[..rest.find('`')?].to_owned())
    };
    let parameter = if path.is_empty() || path == "." {
        named()
    } else {
        Some(path)
    };
    let mut error = match &parameter {
        Some(p) => {
            ApiError::bad_request("invalid_query", format!("query parameter `{p}`: {message}"))
        }
        None => ApiError::bad_request("invalid_query", format!("the query string: {message}")),
    };
    if let Some(p) = parameter {
        error.0.extra = Some(serde_json::json!({ "parameter": p }));
    }
    error
}

/// A whole number from `MIN` to `MAX`, refused otherwise (as a query parameter: 400
/// `invalid_query` naming it). Declare the same bounds in the parameter's OpenAPI schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u32, const MAX: u32>(pub u32);

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        u32::try_from(n)
            .ok()
            .filter(|n| (MIN..=MAX).contains(n))
            .map(Bounded)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not from {MIN} to {MAX}")))
    }
}

/// Items per page: 1 to 200.
pub type Limit = Bounded<1, 200>;
/// Items skipped: 0 to 2,147,483,647.
pub type Offset = Bounded<0, { i32::MAX as u32 }>;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// At most this many items (1–200, default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<Limit>,
    /// Skip this many items (default 0).
    #[param(value_type = Option<u32>, minimum = 0, maximum = 2147483647)]
    pub offset: Option<Offset>,
}

impl Paging {
    pub fn limit(&self) -> u32 {
        self.limit.map_or(50, |l| l.0)
    }
    pub fn offset(&self) -> u32 {
        self.offset.map_or(0, |o| o.0)
    }
}

/// The request's `Idempotency-Key`, checked.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let raw = v.to_str().unwrap_or_default();
            let k = raw.trim();
            if k.is_empty() || raw.len() > 200 {
                return Err(ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 200 characters",
                ));
            }
            Ok(Some(k.to_owned()))
        }
    }
}

/// What identifies a request for an idempotency key: its route and body.
pub fn request_hash(scope: &str, body: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(format!("{scope}\n{body}").as_bytes()))
}

/// Runs `create` once per Idempotency-Key (per caller): a repeated request with the same key
/// and body gets the first answer; the same key with another body is refused.
pub async fn idempotent<F, Fut>(
    state: &AppState,
    caller: &Caller,
    headers: &axum::http::HeaderMap,
    scope: &str,
    body: &serde_json::Value,
    create: F,
) -> ApiResult<Response>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ApiResult<(StatusCode, serde_json::Value)>>,
{
    let key = idempotency_key(headers)?;
    let hash = request_hash(scope, body);
    let store = state.engine.store();
    if let Some(k) = &key
        && let Some(r) = store
            .recall_response(caller.actor.id(), k)
            .await
            .map_err(ApiError::internal)?
    {
        if r.request_hash != hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
        let value: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let mut response = (status, Json(value)).into_response();
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        return Ok(response);
    }
    let (status, value) = create().await?;
    if let Some(k) = &key {
        let remembered = engine::store::RememberedResponse {
            scope: scope.to_owned(),
            request_hash: hash,
            status: status.as_u16(),
            body: value.to_string(),
        };
        store
            .remember_response(caller.actor.id(), k, &remembered, state.engine.now())
            .await
            .map_err(ApiError::internal)?;
    }
    Ok((status, Json(value)).into_response())
}

/// A dossier answer with its version in `ETag`, for `If-Match` on the next command.
/// The view's fees come from the dossier's procedure version.
pub fn dossier_response(state: &AppState, status: StatusCode, d: &Dossier) -> Response {
    let procedure = state
        .engine
        .procedure(&d.procedure_code, Some(d.procedure_version));
    with_etag(
        (
            status,
            Json(crate::views::DossierView::of(d, procedure.as_deref())),
        )
            .into_response(),
        d,
    )
}

fn with_etag(mut r: Response, d: &Dossier) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("\"{}\"", d.seq)) {
        r.headers_mut().insert(axum::http::header::ETAG, v);
    }
    r
}

/// `304 Not Modified` (no body, the same `ETag`) when the request's `If-None-Match` names the
/// dossier's version or is `*`: a client polling a dossier is not sent what it already has.
/// The view is a function of the dossier's state alone, and the state of its version, so the
/// version is a strong validator. Answer only after the caller was allowed to read it.
pub fn not_modified(headers: &axum::http::HeaderMap, d: &Dossier) -> Option<Response> {
    let matches = headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // If-None-Match compares weakly: W/"12" names version 12 too.
        .any(|tag| tag.trim() == "*" || crate::extract::entity_tag(tag).parse() == Ok(d.seq));
    matches.then(|| with_etag(StatusCode::NOT_MODIFIED.into_response(), d))
}
