//! Errors as RFC 9457 problem details (`application/problem+json`) with stable codes.
//! Every error the API returns is built here, so codes and statuses stay consistent.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::EngineError;
use engine::dossier::CommandError;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A problem detail. `code` is stable: clients branch on it, not on `title` or `detail`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// Field-level problems, when the code has them (omitted otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// With 409 `conflict` only (omitted otherwise): the dossier's current event number, to
    /// re-read and retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = u64, required = false)]
    pub current_seq: Option<u64>,
    /// Details some codes carry, an object (omitted otherwise): with `invalid_query`, the
    /// `parameter` that was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, required = false)]
    pub extra: Option<Value>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Where: a JSON pointer into the request body the client sent (`/data/to_khai/ngay_sinh`),
    /// or `line L, column C` in a procedure definition.
    pub pointer: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> ApiError {
        ApiError(Box::new(Problem {
            kind: format!("https://tthc.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            errors: Vec::new(),
            current_seq: None,
            extra: None,
        }))
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> ApiError {
        self.0.errors = errors;
        self
    }

    pub fn unauthenticated(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    /// An error the caller cannot fix, logged. A storage error that has a problem of its own
    /// ([`ApiError::storage`]: a damaged archive, a full disk) gets that one instead, whichever
    /// route met it.
    pub fn internal(detail: impl std::fmt::Display + 'static) -> ApiError {
        let any = &detail as &dyn std::any::Any;
        let store = any.downcast_ref::<engine::store::StoreError>().or_else(|| {
            match any.downcast_ref::<EngineError>() {
                Some(EngineError::Store(s)) => Some(s),
                _ => None,
            }
        });
        if let Some(p) = store.and_then(ApiError::storage) {
            return p;
        }
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it was logged",
        )
    }
}

impl ApiError {
    /// The problems of storage errors that are not internal: a dossier whose archive is
    /// damaged (409 `archive_damaged`, naming it) and a full disk (503 `storage_full`, with
    /// `Retry-After`).
    pub fn storage(e: &engine::store::StoreError) -> Option<ApiError> {
        use engine::store::StoreError;
        if e.is_storage_full() {
            tracing::error!(error = %e, "storage full: writes are refused until space returns");
            return Some(ApiError::storage_full());
        }
        match e {
            StoreError::ArchiveDamaged { .. } => {
                tracing::error!(error = %e, "damaged archive");
                Some(ApiError::new(
                    StatusCode::CONFLICT,
                    "archive_damaged",
                    e.to_string(),
                ))
            }
            _ => None,
        }
    }
}

impl ApiError {
    /// 503 `storage_full` (sent with `Retry-After`): the database or the blobs' disk is full.
    fn storage_full() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_full",
            "the server's storage is full: nothing was written; try again later",
        )
    }

    /// A blob store's failure: a full disk is `storage_full` (503, retry later), like a full
    /// database; anything else is internal.
    pub fn blob(e: engine::khodl::BlobError) -> ApiError {
        if e.is_storage_full() {
            tracing::error!(error = %e, "blob storage full: uploads are refused until space returns");
            return ApiError::storage_full();
        }
        ApiError::internal(e.to_string())
    }
}

/// How long a client waits before trying a write again after `storage_full`.
pub const STORAGE_FULL_RETRY_AFTER_SECONDS: u32 = 60;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let full = self.0.code == "storage_full";
        let mut response = (status, Json(*self.0)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if full {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(STORAGE_FULL_RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let detail = e.to_string();
        let e_code = e.code();
        match e {
            EngineError::Command(c) => command_error(c),
            EngineError::Conflict { current, .. } => {
                let mut p = ApiError::new(StatusCode::CONFLICT, "conflict", detail);
                p.0.current_seq = Some(current);
                p
            }
            EngineError::DossierNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "dossier_not_found", detail)
            }
            EngineError::UnknownProcedure(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_procedure",
                detail,
            ),
            EngineError::Definition(_) => ApiError::unprocessable("invalid_definition", detail),
            EngineError::IdempotencyKeyReused => {
                ApiError::unprocessable("idempotency_key_reused", detail)
            }
            EngineError::UnknownAgency(_) => ApiError::unprocessable("unknown_agency", detail)
                .with_errors(vec![FieldError {
                    pointer: "/agency_code".into(),
                    message: "not one of this deployment's agencies".into(),
                }]),
            EngineError::Agency { pointer, .. } => ApiError::unprocessable(e_code, detail.clone())
                .with_errors(vec![FieldError {
                    pointer: pointer.into(),
                    message: detail,
                }]),
            EngineError::AgencyKindUnmapped { .. } => {
                ApiError::unprocessable("agency_kind_unmapped", detail)
            }
            EngineError::Store(s) => ApiError::internal(s),
        }
    }
}

/// A refused filing: the forms it lacks are named where its body carries them (`/data/{id}`).
pub fn filing_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Command(CommandError::MissingComponents { components }) => {
            let detail = format!("required forms are missing: {}", components.join(", "));
            ApiError::unprocessable("missing_components", detail).with_errors(
                components
                    .into_iter()
                    .map(|c| FieldError {
                        pointer: format!("/data/{c}"),
                        message: "this form is required: fill it in".into(),
                    })
                    .collect(),
            )
        }
        other => other.into(),
    }
}

/// A 422 about one field of the request body.
pub fn field_problem(code: &str, pointer: &str, detail: impl Into<String>) -> ApiError {
    let detail = detail.into();
    ApiError::unprocessable(code, detail.clone()).with_errors(vec![FieldError {
        pointer: pointer.into(),
        message: detail,
    }])
}

/// Signing refused for want of a key: the deployment's keys file lacks the officer's or the
/// agency's. The operator's to fix, never a server error; nothing was signed.
pub fn signing_error(e: &engine::signing::SigningError) -> ApiError {
    use engine::signing::{SignerKind, SigningError};
    match e {
        SigningError::UnknownSigner { kind, id } => {
            let (who, section) = match kind {
                SignerKind::Officer => (format!("officer `{id}`"), "officers"),
                SignerKind::Agency => (format!("agency `{id}` (its seal)"), "agencies"),
            };
            ApiError::new(
                StatusCode::CONFLICT,
                "signing_key_missing",
                format!(
                    "this deployment has no signing key for {who}, so nothing was signed: the \
                     operator adds its Ed25519 seed under `{section}:` in the keys file \
                     (`keys_file`, see docs/operations.md) and restarts the server; until then \
                     an officer who has a key signs"
                ),
            )
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// [`signing_error`] when the signing failure is inside a wider error.
pub fn signing_failure(e: anyhow::Error) -> ApiError {
    match e.downcast_ref::<engine::signing::SigningError>() {
        Some(s) => signing_error(s),
        None => ApiError::internal(e),
    }
}

fn command_error(c: CommandError) -> ApiError {
    let detail = c.to_string();
    let code = c.code();
    match c {
        CommandError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, code, detail),
        CommandError::Forbidden { .. } => ApiError::new(StatusCode::FORBIDDEN, code, detail),
        CommandError::InvalidState { .. }
        | CommandError::StaleJob { .. }
        | CommandError::TaskNotOpen { .. }
        | CommandError::FeeUnpaid { .. } => ApiError::new(StatusCode::CONFLICT, code, detail),
        CommandError::InvalidForm { violations } => ApiError::unprocessable(code, detail)
            .with_errors(
                violations
                    .into_iter()
                    .map(|v| FieldError {
                        pointer: if v.pointer.is_empty() {
                            format!("/data/{}{}", v.form, v.path)
                        } else {
                            v.pointer
                        },
                        message: v.message,
                    })
                    .collect(),
            ),
        CommandError::MissingComponents { components } => ApiError::unprocessable(code, detail)
            .with_errors(
                components
                    .into_iter()
                    .map(|c| FieldError {
                        pointer: format!("/components/{c}"),
                        message: "required component is missing".into(),
                    })
                    .collect(),
            ),
        CommandError::InvalidInput { .. } => ApiError::unprocessable(code, detail),
        CommandError::InvalidField { pointer, message } => {
            ApiError::unprocessable(code, detail).with_errors(vec![FieldError { pointer, message }])
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            JsonRejection::JsonDataError(e) => {
                ApiError::unprocessable("invalid_body", body_text(&e.body_text()))
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed_body", body_text(&e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is too large",
                )
            }
            other => ApiError::bad_request("malformed_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

/// axum's messages name Rust types; keep the part a client can act on.
fn body_text(s: &str) -> String {
    s.replace(
        "Failed to deserialize the JSON body into the target type: ",
        "",
    )
    .replace("Failed to parse the request body as JSON: ", "")
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_under_the_blobs_is_storage_full_with_retry_after() {
        let full = engine::khodl::BlobError::Io {
            path: "/var/lib/tthc/blobs".into(),
            // ENOSPC, as a write on a full file system fails.
            source: std::io::Error::from_raw_os_error(28),
        };
        let r = ApiError::blob(full).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "60");
        let denied = engine::khodl::BlobError::Io {
            path: "/var/lib/tthc/blobs".into(),
            source: std::io::Error::from_raw_os_error(13),
        };
        let r = ApiError::blob(denied).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
