//! Dossiers: filing, reading, searching, worklists and every command on a dossier.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use engine::dossier::{Channel, Command, Filing, Owner, OwnerId};
use engine::store::DossierQuery;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    Bounded, Limit, Offset, Paging, Query, dossier_response, may_command, not_modified,
    readable_dossier,
};
use crate::auth::{Caller, UserKind};
use crate::extract::{Body, expected_seq};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::views::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(file_dossier, search_dossiers))
        .routes(routes!(my_dossiers))
        .routes(routes!(get_dossier))
        .routes(routes!(notifications))
        .routes(routes!(worklist))
        .routes(routes!(claim_task))
        .routes(routes!(release_task))
        .routes(routes!(complete_task))
        .routes(routes!(receive))
        .routes(routes!(refuse))
        .routes(routes!(request_supplement))
        .routes(routes!(supplement))
        .routes(routes!(withdraw))
        .routes(routes!(stop))
        .routes(routes!(record_payment))
        .routes(routes!(sign_result))
        .routes(routes!(return_result))
}

fn parse_channel(s: Option<&str>, kind: UserKind) -> ApiResult<Channel> {
    match (s, kind) {
        (None, UserKind::Citizen) | (Some("online"), _) => Ok(Channel::Online),
        (None, _) | (Some("in_person"), _) => Ok(Channel::InPerson),
        (Some("postal"), _) => Ok(Channel::Postal),
        (Some(other), _) => Err(crate::problem::field_problem(
            "invalid_input",
            "/channel",
            format!("channel `{other}` is not online, in_person or postal"),
        )),
    }
}

/// Files a dossier: a citizen online for themselves, or an officer at the one-stop desk for
/// the owner in front of them.
#[utoipa::path(post, path = "/api/v1/dossiers", tag = "citizens", security(("bearer" = [])),
    request_body = FileRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: a retried request files once")),
    responses((status = 201, body = DossierView), (status = "default", body = Problem)))]
async fn file_dossier(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(raw): Body<serde_json::Value>,
) -> ApiResult<Response> {
    caller.require(&[UserKind::Citizen, UserKind::Officer])?;
    let request: FileRequest = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?;
    let owner = match (&request.owner, caller.kind()) {
        (Some(o), _) => Owner {
            id: OwnerId::parse(&o.id).map_err(|e| {
                crate::problem::field_problem("invalid_owner", "/owner/id", e.to_string())
            })?,
            name: o.name.clone(),
            email: o.email.clone(),
            phone: o.phone.clone(),
        },
        (None, UserKind::Citizen) => Owner {
            id: OwnerId::parse(caller.claims.owner_id.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::unprocessable("invalid_owner", e.to_string()))?,
            name: caller.claims.name.clone(),
            email: None,
            phone: None,
        },
        (None, _) => {
            return Err(ApiError::unprocessable(
                "invalid_owner",
                "name the dossier's owner",
            ));
        }
    };
    let filing = Filing {
        procedure_code: request.procedure_code.clone(),
        agency_code: request.agency_code.clone(),
        competent_agency: request.competent_agency.clone(),
        owner,
        channel: parse_channel(request.channel.as_deref(), caller.kind())?,
        data: request.data.clone().into_iter().collect::<BTreeMap<_, _>>(),
        documents: Vec::new(),
    };
    // The key is recorded in the filing's own transaction: a retry, on any node and after
    // any crash, finds the first dossier instead of filing again.
    let key = super::idempotency_key(&headers)?;
    let hash = super::request_hash("file_dossier", &raw);
    let (d, replayed) = state
        .engine
        .file_once(
            &caller.actor,
            &filing,
            key.as_deref().map(|k| (k, hash.as_str())),
        )
        .await
        .map_err(crate::problem::filing_error)?;
    let mut response = dossier_response(&state, StatusCode::CREATED, &d);
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    code: Option<String>,
    owner_id: Option<String>,
    /// Portal status code 1–10.
    #[param(value_type = Option<u8>, minimum = 1, maximum = 10)]
    status: Option<Bounded<1, 10>>,
    /// Only dossiers past their due date.
    overdue: Option<bool>,
    /// At most this many items (1–200, default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<Limit>,
    /// Skip this many items (default 0).
    #[param(value_type = Option<u32>, minimum = 0, maximum = 2147483647)]
    offset: Option<Offset>,
}

/// Searches dossiers: officers see their agency's, auditors and administrators all.
#[utoipa::path(get, path = "/api/v1/dossiers", tag = "officers", security(("bearer" = [])), params(SearchQuery),
    responses((status = 200, body = [DossierSummary]), (status = "default", body = Problem)))]
async fn search_dossiers(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Vec<DossierSummary>>> {
    caller.require(&[UserKind::Officer, UserKind::Auditor, UserKind::Admin])?;
    let paging = Paging {
        limit: q.limit,
        offset: q.offset,
    };
    let query = DossierQuery {
        agency: match caller.kind() {
            UserKind::Officer => caller.agency().map(str::to_owned),
            _ => None,
        },
        code: q.code,
        owner_id: q.owner_id,
        status: q.status.map(|s| s.0 as u8),
        overdue_at: q.overdue.unwrap_or(false).then(|| state.engine.now()),
        limit: paging.limit(),
        offset: paging.offset(),
    };
    let rows = state
        .engine
        .store()
        .search(&query)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rows.into_iter().map(DossierSummary::from).collect()))
}

/// The caller's own dossiers, newest first.
#[utoipa::path(get, path = "/api/v1/me/dossiers", tag = "citizens", security(("bearer" = [])), params(Paging),
    responses((status = 200, body = [DossierSummary]), (status = "default", body = Problem)))]
async fn my_dossiers(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<Paging>,
) -> ApiResult<Json<Vec<DossierSummary>>> {
    caller.require(&[UserKind::Citizen])?;
    let owner = caller.claims.owner_id.clone().unwrap_or_default();
    let rows = state
        .engine
        .store()
        .dossiers_of_owner(&owner, p.limit(), p.offset())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rows.into_iter().map(DossierSummary::from).collect()))
}

/// One dossier: status, due date, data, documents, open tasks. `ETag` is its version; with
/// `If-None-Match` naming it, `304 Not Modified` and no body (for clients that poll).
#[utoipa::path(get, path = "/api/v1/dossiers/{code}", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path, description = "Dossier code"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag last seen, e.g. \"12\"")),
    responses((status = 200, body = DossierView),
        (status = 304, description = "Unchanged since the version named in If-None-Match"),
        (status = "default", body = Problem)))]
async fn get_dossier(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    let d = readable_dossier(&state, &caller, &code).await?;
    if let Some(unchanged) = not_modified(&headers, &d) {
        return Ok(unchanged);
    }
    Ok(dossier_response(&state, StatusCode::OK, &d))
}

/// Notifications sent about the dossier (receipt, supplement request, refusal, apology, result).
#[utoipa::path(get, path = "/api/v1/dossiers/{code}/notifications", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path, description = "Dossier code")),
    responses((status = 200, body = [NotificationView]), (status = "default", body = Problem)))]
async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> ApiResult<Json<Vec<NotificationView>>> {
    readable_dossier(&state, &caller, &code).await?;
    let p = state
        .engine
        .store()
        .projection(&code)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        p.map(|p| {
            p.notifications
                .into_iter()
                .map(NotificationView::from)
                .collect()
        })
        .unwrap_or_default(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct WorklistQuery {
    /// Only tasks the caller has claimed.
    mine: Option<bool>,
    /// Only tasks of this role (one of the caller's).
    role: Option<String>,
    /// At most this many items (1–200, default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<Limit>,
    /// Skip this many items (default 0).
    #[param(value_type = Option<u32>, minimum = 0, maximum = 2147483647)]
    offset: Option<Offset>,
}

/// Open tasks for the caller's roles at their agency, earliest due first.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "officers", security(("bearer" = [])), params(WorklistQuery),
    responses((status = 200, body = [TaskView]), (status = "default", body = Problem)))]
async fn worklist(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<WorklistQuery>,
) -> ApiResult<Json<Vec<TaskView>>> {
    caller.require(&[UserKind::Officer])?;
    let roles: Vec<String> = match &q.role {
        Some(r) if caller.claims.roles.contains(r) => vec![r.clone()],
        Some(r) => return Err(ApiError::forbidden(format!("you do not have the role {r}"))),
        None => caller.claims.roles.clone(),
    };
    let paging = Paging {
        limit: q.limit,
        offset: q.offset,
    };
    let mine = q
        .mine
        .unwrap_or(false)
        .then(|| caller.actor.id().to_owned());
    let rows = state
        .engine
        .store()
        .worklist(
            caller.agency().unwrap_or_default(),
            &roles,
            mine.as_deref(),
            paging.limit(),
            paging.offset(),
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rows.into_iter().map(TaskView::from).collect()))
}

/// Runs a command for the caller; `If-Match` makes it conditional on the dossier's version.
async fn run(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    code: &str,
    kinds: &[UserKind],
    command: Command,
) -> ApiResult<Response> {
    caller.require(kinds)?;
    // Checking first keeps the answer for another owner's or agency's dossier a plain 403.
    may_command(state, caller, code).await?;
    let d = state
        .engine
        .execute(code, expected_seq(headers)?, &caller.actor, &command)
        .await?;
    Ok(dossier_response(state, StatusCode::OK, &d))
}

const OFFICER: &[UserKind] = &[UserKind::Officer];
const OWNER_OR_OFFICER: &[UserKind] = &[UserKind::Citizen, UserKind::Officer];

/// Takes a task from the worklist.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/tasks/{task}/claim", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("task" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn claim_task(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((code, task)): Path<(String, String)>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OFFICER,
        Command::ClaimTask { task },
    )
    .await
}

/// Gives a claimed task back to the worklist.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/tasks/{task}/release", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("task" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn release_task(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((code, task)): Path<(String, String)>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OFFICER,
        Command::ReleaseTask { task },
    )
    .await
}

/// Completes a task with an outcome and the task form's data.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/tasks/{task}/complete", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("task" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = CompleteRequest,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn complete_task(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((code, task)): Path<(String, String)>,
    Body(body): Body<CompleteRequest>,
) -> ApiResult<Response> {
    let cmd = Command::CompleteTask {
        task,
        outcome: body.outcome,
        data: body.data,
        reason: body.reason,
    };
    run(&state, &caller, &headers, &code, OFFICER, cmd).await
}

/// The one-stop desk accepts the dossier as complete: the processing clock starts.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/receive", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn receive(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    run(&state, &caller, &headers, &code, OFFICER, Command::Receive).await
}

/// The one-stop desk refuses the dossier, with the reason sent to the owner (form 03).
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/refuse", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = ReasonRequest,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn refuse(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<ReasonRequest>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OFFICER,
        Command::RefuseReception { reason: b.reason },
    )
    .await
}

/// Asks the owner for missing papers (form 02); the clock stops until they supplement.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/request-supplement", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = SupplementRequestBody,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn request_supplement(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<SupplementRequestBody>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OFFICER,
        Command::RequestSupplement {
            reason: b.reason,
            missing: b.missing,
        },
    )
    .await
}

/// The owner (or the desk for them) brings what was asked for; the clock runs again.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/supplement", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = SupplementBody,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn supplement(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<SupplementBody>,
) -> ApiResult<Response> {
    let cmd = Command::Supplement {
        data: b.data.into_iter().collect(),
        documents: Vec::new(),
    };
    run(&state, &caller, &headers, &code, OWNER_OR_OFFICER, cmd).await
}

/// The owner withdraws the dossier (or the desk records their request).
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/withdraw", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = ReasonRequest,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<ReasonRequest>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OWNER_OR_OFFICER,
        Command::Withdraw { reason: b.reason },
    )
    .await
}

/// Stops processing (dừng xử lý).
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/stop", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = ReasonRequest,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<ReasonRequest>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OFFICER,
        Command::Stop { reason: b.reason },
    )
    .await
}

/// Records a fee payment.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/payments", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = PaymentBody,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn record_payment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<PaymentBody>,
) -> ApiResult<Response> {
    let cmd = Command::RecordPayment {
        fee_code: b.fee_code,
        amount_vnd: b.amount_vnd,
        receipt: b.receipt,
        channel: b.channel.unwrap_or_default(),
    };
    run(&state, &caller, &headers, &code, OFFICER, cmd).await
}

/// Signs a result from the signing task the caller holds: the electronic result is made,
/// signed with the officer's Ed25519 key and sealed with the agency's, and recorded.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/sign", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = SignBody,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn sign_result(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(b): Body<SignBody>,
) -> ApiResult<Response> {
    caller.require(OFFICER)?;
    let d = readable_dossier(&state, &caller, &code).await?;
    let number = b
        .number
        .clone()
        .unwrap_or_else(|| format!("{}/{}", d.code, b.result_code));
    // Refuse before anything is signed or stored.
    let probe = Command::SignResult {
        result_code: b.result_code.clone(),
        number: Some(number.clone()),
        document: None,
    };
    state.engine.check(&code, &caller.actor, &probe).await?;
    let agency = caller.agency().unwrap_or_default().to_owned();
    let result_name = state
        .io
        .catalog
        .results
        .iter()
        .find(|r| r.code == b.result_code)
        .map_or_else(|| b.result_code.clone(), |r| r.name.clone());
    let agency_name = state
        .io
        .agencies
        .get(&agency)
        .cloned()
        .unwrap_or_else(|| agency.clone());
    // Signing stores the document and syncs it to disk: blocking work, kept off the async
    // workers so that other requests do not wait behind the disk.
    let document = {
        let (state, d) = (state.clone(), d.clone());
        let (result_code, number) = (b.result_code.clone(), number.clone());
        let (signer_id, signer_name) =
            (caller.actor.id().to_owned(), caller.actor.name().to_owned());
        let now = state.engine.now();
        tokio::task::spawn_blocking(move || {
            crate::integrations::sign_result_document(
                &state.io,
                &d,
                &result_code,
                &result_name,
                &number,
                &signer_id,
                &signer_name,
                &agency,
                &agency_name,
                now,
            )
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(crate::problem::signing_failure)?
    };
    let cmd = Command::SignResult {
        result_code: b.result_code,
        number: Some(number),
        document: Some(document),
    };
    let d = state
        .engine
        .execute(&code, expected_seq(&headers)?, &caller.actor, &cmd)
        .await?;
    Ok(dossier_response(&state, StatusCode::OK, &d))
}

/// Hands the result to the owner at the desk.
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/return", tag = "officers", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn return_result(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    run(
        &state,
        &caller,
        &headers,
        &code,
        OFFICER,
        Command::ReturnResult,
    )
    .await
}
