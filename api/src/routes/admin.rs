//! Procedures (everyone reads; administrators validate and deploy), incidents and the
//! holiday catalog.

use std::path::Path;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use engine::definition::{Diagnostic, Loader, Severity};
use engine::dossier::{Command, IncidentAction};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Query, idempotent};
use crate::auth::{Caller, UserKind};
use crate::extract::Body;
use crate::problem::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::views::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_procedures))
        .routes(routes!(show_procedure))
        .routes(routes!(validate_procedure))
        .routes(routes!(deploy_procedure))
        .routes(routes!(list_incidents))
        .routes(routes!(resolve_incident))
        .routes(routes!(holidays))
}

fn view(p: &engine::runtime::CompiledProcedure) -> ProcedureView {
    let d = p.procedure();
    ProcedureView {
        code: d.code.clone(),
        version: d.version,
        name: d.name.clone(),
        agency_level: format!("{:?}", d.agency.level).to_lowercase(),
        field: d.agency.field.clone(),
        processing_time: d.processing_time.to_string(),
        definition: serde_json::to_value(d).unwrap_or_default(),
    }
}

/// Deployed procedure versions.
#[utoipa::path(get, path = "/api/v1/procedures", tag = "procedures", security(("bearer" = [])),
    responses((status = 200, body = [ProcedureView]), (status = "default", body = Problem)))]
async fn list_procedures(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<ProcedureView>>> {
    // Versions deployed through other nodes too.
    state.engine.refresh().await?;
    Ok(Json(
        state.engine.procedures().iter().map(|p| view(p)).collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    /// A version other than the newest.
    version: Option<u32>,
}

/// One procedure: the newest version, or the one asked for.
#[utoipa::path(get, path = "/api/v1/procedures/{code}", tag = "procedures", security(("bearer" = [])),
    params(("code" = String, Path, description = "National procedure code"), VersionQuery),
    responses((status = 200, body = ProcedureView), (status = "default", body = Problem)))]
async fn show_procedure(
    State(state): State<AppState>,
    _caller: Caller,
    UrlPath(code): UrlPath<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<ProcedureView>> {
    state.engine.refresh().await?;
    state
        .engine
        .procedure(&code, q.version)
        .map(|p| Json(view(&p)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_procedure",
                format!("procedure {code} is not deployed"),
            )
        })
}

fn diagnostic_views(ds: &[Diagnostic]) -> Vec<DiagnosticView> {
    ds.iter()
        .map(|d| DiagnosticView {
            line: d.position.line,
            column: d.position.column,
            severity: match d.severity {
                Severity::Error => "error".into(),
                Severity::Warning => "warning".into(),
            },
            message: d.message.clone(),
            hint: d.hint.clone(),
        })
        .collect()
}

fn yaml_body(headers: &HeaderMap) -> ApiResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/plain" => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the definition as YAML with `Content-Type: application/yaml`",
        )),
    }
}

/// A checked definition with its warnings, or every problem found.
type Loaded = Result<(engine::definition::Definition, Vec<Diagnostic>), Vec<Diagnostic>>;

fn load(state: &AppState, text: &str) -> ApiResult<Loaded> {
    let loader = Loader::new(state.loader.clone())
        .map_err(|d| ApiError::internal(format!("the catalog has errors: {d:?}")))?;
    Ok(loader.load_str(Path::new("definition.yaml"), text))
}

/// Checks a definition without deploying it: any YAML text is checked and answered with its
/// diagnostics.
#[utoipa::path(post, path = "/api/v1/admin/procedures/validate", tag = "administrators", security(("bearer" = [])),
    request_body(content = inline(serde_json::Value), content_type = "application/yaml",
        description = "A procedure definition in YAML (docs/authoring.md); also `application/x-yaml`, `text/yaml`, `text/plain`"),
    responses((status = 200, body = ValidateView), (status = "default", body = Problem)))]
async fn validate_procedure(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    text: String,
) -> ApiResult<Json<ValidateView>> {
    caller.require(&[UserKind::Admin])?;
    yaml_body(&headers)?;
    Ok(Json(match load(&state, &text)? {
        Ok((_, warnings)) => ValidateView {
            valid: true,
            diagnostics: diagnostic_views(&warnings),
        },
        Err(diagnostics) => ValidateView {
            valid: false,
            diagnostics: diagnostic_views(&diagnostics),
        },
    }))
}

/// Validates and deploys a definition. Dossiers already running keep their version.
#[utoipa::path(post, path = "/api/v1/admin/procedures", tag = "administrators", security(("bearer" = [])),
    request_body(content = Object, content_type = "application/yaml",
        description = "A procedure definition, a YAML mapping (docs/authoring.md); also `application/x-yaml`, `text/yaml`, `text/plain`"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    responses((status = 201, body = DeployView), (status = 200, body = DeployView), (status = "default", body = Problem)))]
async fn deploy_procedure(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    text: String,
) -> ApiResult<Response> {
    caller.require(&[UserKind::Admin])?;
    yaml_body(&headers)?;
    let body = serde_json::Value::String(text.clone());
    idempotent(&state, &caller, &headers, "deploy", &body, || async {
        let (definition, warnings) = match load(&state, &text)? {
            Ok(v) => v,
            Err(diagnostics) => {
                return Err(ApiError::unprocessable(
                    "invalid_definition",
                    "the definition has errors",
                )
                .with_errors(
                    diagnostics
                        .iter()
                        .filter(|d| d.is_error())
                        .map(|d| FieldError {
                            pointer: format!(
                                "line {}, column {}",
                                d.position.line, d.position.column
                            ),
                            message: match &d.hint {
                                Some(h) => format!("{} (hint: {h})", d.message),
                                None => d.message.clone(),
                            },
                        })
                        .collect(),
                ));
            }
        };
        let outcome = state.engine.deploy(&definition).await?;
        let (status, code, version, result) = match outcome {
            engine::engine::Deployed::New { code, version } => {
                (StatusCode::CREATED, code, version, "deployed")
            }
            engine::engine::Deployed::Unchanged { code, version } => {
                (StatusCode::OK, code, version, "unchanged")
            }
        };
        let view = DeployView {
            code,
            version,
            result: result.into(),
            warnings: diagnostic_views(&warnings),
        };
        Ok((status, serde_json::to_value(view).unwrap_or_default()))
    })
    .await
}

/// Open incidents, waiting for an administrator: hooks that failed for good (`hook`), conditions
/// that could not be evaluated (`condition`), dossiers with nothing to wait on (`stuck`).
#[utoipa::path(get, path = "/api/v1/admin/incidents", tag = "administrators", security(("bearer" = [])),
    responses((status = 200, body = [IncidentView]), (status = "default", body = Problem)))]
async fn list_incidents(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<IncidentView>>> {
    caller.require(&[UserKind::Admin])?;
    let rows = state
        .engine
        .store()
        .open_incidents()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rows.into_iter().map(IncidentView::from).collect()))
}

/// Retries or skips an incident: a hook runs again, a condition is evaluated again (with
/// corrected forms in `data`, if given); 409 while a condition or stuck incident still holds.
#[utoipa::path(post, path = "/api/v1/admin/incidents/{code}/{incident}", tag = "administrators", security(("bearer" = [])),
    params(("code" = String, Path, description = "Dossier code"), ("incident" = String, Path, description = "Incident id")),
    request_body = ResolveBody,
    responses((status = 200, body = DossierView), (status = "default", body = Problem)))]
async fn resolve_incident(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((code, incident)): UrlPath<(String, String)>,
    Body(body): Body<ResolveBody>,
) -> ApiResult<Response> {
    caller.require(&[UserKind::Admin])?;
    let action = match body.action.as_str() {
        "retry" => IncidentAction::Retry,
        "skip" => IncidentAction::Skip,
        other => {
            return Err(ApiError::unprocessable(
                "invalid_input",
                format!("action `{other}` is not `retry` or `skip`"),
            ));
        }
    };
    let d = state
        .engine
        .execute(
            &code,
            None,
            &caller.actor,
            &Command::ResolveIncident {
                incident,
                action,
                note: body.note,
                data: body.data,
            },
        )
        .await?;
    Ok(super::dossier_response(&state, StatusCode::OK, &d))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct YearQuery {
    year: Option<i32>,
}

/// Public holidays of a year in the working-day calendar.
#[utoipa::path(get, path = "/api/v1/holidays", tag = "procedures", security(("bearer" = [])), params(YearQuery),
    responses((status = 200, body = [HolidayView]), (status = "default", body = Problem)))]
async fn holidays(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<YearQuery>,
) -> Json<Vec<HolidayView>> {
    use chrono::Datelike;
    let year = q.year.unwrap_or_else(|| state.engine.now().year());
    Json(
        state
            .engine
            .calendar()
            .holidays_in(year)
            .into_iter()
            .map(|(date, name)| HolidayView { date, name })
            .collect(),
    )
}
