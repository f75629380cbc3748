//! Health, readiness and metrics: for load balancers and Prometheus, no token needed.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The process can serve: the database answers, has room to write, and startup finished.
#[utoipa::path(get, path = "/ready", tag = "system", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let started = state.ready.load(std::sync::atomic::Ordering::SeqCst);
    let store = state.engine.store();
    match store.ping().await {
        Ok(()) if store.storage_full().await => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "storage full".into(),
            }),
        ),
        Ok(()) if started => (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        ),
        Ok(()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting".into(),
            }),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "database unavailable".into(),
            }),
        ),
    }
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "OpenMetrics 1.0 text", body = String, content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok((jobs, incidents, overdue)) = state.engine.store().gauges(state.engine.now()).await {
        state.metrics.jobs_pending.set(jobs);
        state.metrics.incidents_open.set(incidents);
        state.metrics.dossiers_overdue.set(overdue);
    }
    if let Ok(by_kind) = state.engine.store().open_incidents_by_kind().await {
        state.metrics.set_incidents_by_kind(&by_kind);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
