//! Auditors: a dossier's full history, its replay with the state check, chain verification.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Query, readable_dossier};
use crate::auth::{Caller, UserKind};
use crate::problem::{ApiResult, Problem};
use crate::state::AppState;
use crate::views::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes(routes!(replay))
        .routes(routes!(verify))
}

/// Every event of the dossier, with who, when, the step and the hash chain.
#[utoipa::path(get, path = "/api/v1/dossiers/{code}/events", tag = "auditors", security(("bearer" = [])),
    params(("code" = String, Path, description = "Dossier code")),
    responses((status = 200, body = [EventView]), (status = "default", body = Problem)))]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> ApiResult<Json<Vec<EventView>>> {
    readable_dossier(&state, &caller, &code).await?;
    let events = state
        .engine
        .store()
        .events(&code)
        .await
        .map_err(crate::problem::ApiError::internal)?;
    Ok(Json(events.iter().map(EventView::of).collect()))
}

/// Rebuilds the dossier from its events and checks it equals the stored read models.
#[utoipa::path(get, path = "/api/v1/dossiers/{code}/replay", tag = "auditors", security(("bearer" = [])),
    params(("code" = String, Path, description = "Dossier code")),
    responses((status = 200, body = ReplayView), (status = "default", body = Problem)))]
async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> ApiResult<Json<ReplayView>> {
    caller.require(&[UserKind::Auditor, UserKind::Admin])?;
    let r = state.engine.replay(&code).await?;
    Ok(Json(ReplayView {
        events: r.events.len(),
        matches: r.matches,
        differences: r.differences,
        status: StatusView {
            code: r.state.status.code(),
            label: r.state.status.label().to_owned(),
        },
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    /// Only this dossier.
    dossier: Option<String>,
}

/// Verifies the hash chains, naming the first altered event of each broken dossier.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "auditors", security(("bearer" = [])), params(VerifyQuery),
    responses((status = 200, body = VerifyView), (status = "default", body = Problem)))]
async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<Json<VerifyView>> {
    caller.require(&[UserKind::Auditor, UserKind::Admin])?;
    let r = state.engine.verify(q.dossier.as_deref()).await?;
    Ok(Json(VerifyView {
        intact: r.is_intact(),
        dossiers: r.dossiers,
        events: r.events,
        breaks: r
            .breaks
            .into_iter()
            .map(|b| BreakView {
                dossier: b.dossier,
                seq: b.seq,
                problem: b.problem,
            })
            .collect(),
    }))
}
