//! Documents and Kho DL: uploads, attaching and digitizing documents, downloading them, the
//! owner's papers, reuse candidates and consent, and verifying signed results.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use engine::dossier::{Command, DocumentRef, OwnerId, PaperSource, ReusedPaper};
use engine::khodl::{
    Approval, Digitization, NewPaper, PaperFile, PaperFilter, PaperKind, Provenance,
};
use engine::reuse::Pick;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::{dossier_response, readable_dossier};
use crate::auth::{Caller, UserKind};
use crate::extract::{Body, expected_seq};
use crate::integrations::Verification;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// A document's bytes, in the OpenAPI document.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, min_length = 1)]
pub struct Binary(#[allow(dead_code)] Vec<u8>);

/// A PDF's bytes, in the OpenAPI document: they start with `%PDF-`.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^%PDF-")]
pub struct Pdf(#[allow(dead_code)] Vec<u8>);

/// A text document, in the OpenAPI document.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1)]
pub struct Text(#[allow(dead_code)] String);

/// Content types accepted for documents.
const ACCEPTED: &[&str] = &[
    "application/pdf",
    "image/jpeg",
    "image/png",
    "application/xml",
    "text/plain",
];

pub fn router(upload_limit: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload).layer(DefaultBodyLimit::max(upload_limit)))
        .routes(routes!(attach_document))
        .routes(routes!(document_content))
        .routes(routes!(my_papers))
        .routes(routes!(candidates))
        .routes(routes!(reuse))
        .routes(routes!(verify_result))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadView {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
}

/// Uploads a document's content. Content-addressed: the same bytes give the same `sha256`, so
/// a retried upload stores nothing twice. Attach it to a dossier with its `sha256`.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "citizens", security(("bearer" = [])),
    request_body(description = "The document's bytes, sent with its own `Content-Type`: PDF (starting `%PDF-`), JPEG, PNG, XML or plain text; not empty",
        content((Pdf = "application/pdf"), (Binary = "image/jpeg"), (Binary = "image/png"), (Binary = "application/xml"), (Text = "text/plain"))),
    responses((status = 201, body = UploadView), (status = "default", body = Problem)))]
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require(&[UserKind::Citizen, UserKind::Officer])?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !ACCEPTED.contains(&content_type.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("documents are one of: {}", ACCEPTED.join(", ")),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_input",
            "the document is empty",
        ));
    }
    if content_type == "application/pdf" && !body.starts_with(b"%PDF-") {
        return Err(ApiError::unprocessable(
            "content_mismatch",
            "the content is not a PDF",
        ));
    }
    let blobs = state.io.blobs.clone();
    let bytes = body.clone();
    let sha = tokio::task::spawn_blocking(move || blobs.put(&bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::blob)?;
    let upload = engine::store::Upload {
        sha256: sha.clone(),
        content_type: content_type.clone(),
        size: body.len() as u64,
    };
    state
        .engine
        .store()
        .record_upload(&upload, caller.actor.id(), state.engine.now())
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(UploadView {
            sha256: sha,
            size: upload.size,
            content_type,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DigitizedInput {
    /// Number and symbol (số ký hiệu) of the paper.
    #[serde(default)]
    pub number: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub issuing_agency: String,
    #[serde(default)]
    pub summary: Option<String>,
    /// The paper type (a result code when the paper is a TTHC result issued on paper).
    #[serde(default)]
    pub paper_type: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachBody {
    pub component: String,
    pub name: String,
    /// `original`, `certified_copy`, `electronic_certified_copy` or `copy`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The `sha256` of an upload you made.
    pub sha256: String,
    /// At the one-stop desk: the scanned paper's metadata. The scan is kept in the owner's
    /// Kho DL and made an electronic certified copy sealed by the agency.
    #[serde(default)]
    pub digitized: Option<DigitizedInput>,
}

/// Attaches an uploaded document to a component (the owner before reception or when asked to
/// supplement; officers of the agency, who may digitize a paper at the desk).
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/documents", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "The dossier's seq")),
    request_body = AttachBody,
    responses((status = 200, body = crate::views::DossierView), (status = "default", body = Problem)))]
async fn attach_document(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(code): Path<String>,
    Body(body): Body<AttachBody>,
) -> ApiResult<Response> {
    caller.require(&[UserKind::Citizen, UserKind::Officer])?;
    let d = readable_dossier(&state, &caller, &code).await?;
    let upload = state
        .engine
        .store()
        .upload_of(&body.sha256, caller.actor.id())
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_upload",
                "upload the document first: no upload of yours has this sha256",
            )
        })?;
    let kind = match body.kind.as_deref() {
        None => None,
        Some(k) => Some(
            serde_json::from_value::<engine::definition::DocumentKind>(serde_json::Value::String(
                k.to_owned(),
            ))
            .map_err(|_| {
                ApiError::unprocessable("invalid_input", format!("`{k}` is not a document kind"))
            })?,
        ),
    };
    let now = state.engine.now();
    let mut provenance = None;
    let mut paper = None;
    if let Some(dz) = &body.digitized {
        if caller.kind() != UserKind::Officer {
            return Err(ApiError::forbidden(
                "papers are digitized by the one-stop desk",
            ));
        }
        let agency = caller.agency().unwrap_or_default().to_owned();
        let metadata = serde_json::json!({
            "name": body.name, "number": dz.number, "issued_at": dz.issued_at,
            "issuing_agency": dz.issuing_agency, "summary": dz.summary, "owner_id": d.owner.id.as_str(),
        });
        let ring = state.io.keys.ring_for(&[], &[&agency]);
        let copy = engine::signing::certified_copy(
            &ring,
            &agency,
            &upload.sha256,
            &metadata,
            dz.number.as_deref(),
            now,
        )
        .map_err(|e| crate::problem::signing_error(&e))?;
        provenance = Some(serde_json::json!({
            "digitized": true,
            "digitized_by": caller.actor.id(),
            "digitized_at": now,
            "certified_copy": copy.metadata,
            engine::khodl::PROVENANCE_SIGNATURES: [copy.signature.clone()],
        }));
        paper = Some(NewPaper {
            id: format!("scan:{}:{}:{}", code, body.component, &upload.sha256[..16]),
            code: format!(
                "{}.{}.{}",
                d.owner.id,
                dz.paper_type.as_deref().unwrap_or(&body.component),
                &upload.sha256[..8]
            ),
            national_code: None,
            name: body.name.clone(),
            owner: d.owner.id.clone(),
            owner_name: d.owner.name.clone(),
            paper_type: dz
                .paper_type
                .clone()
                .unwrap_or_else(|| body.component.clone()),
            number: dz.number.clone(),
            issued_at: dz.issued_at,
            issuing_agency: dz.issuing_agency.clone(),
            signer: None,
            summary: dz.summary.clone(),
            validity: None,
            scope: None,
            kind: PaperKind::Component,
            digitized: Some(Digitization {
                by: caller.actor.id().to_owned(),
                at: now,
            }),
            file: Some(PaperFile {
                sha256: upload.sha256.clone(),
                size: upload.size,
                content_type: upload.content_type.clone(),
            }),
            dossier_code: Some(code.clone()),
            procedure_code: Some(d.procedure_code.to_string()),
            field: None,
            approval: Approval::Approved,
            hidden: false,
            provenance: Provenance::DigitizedHere,
            provenance_detail: Some(serde_json::json!({ "certified_copy": copy.metadata })),
            signatures: vec![copy.signature],
        });
    }
    let document = DocumentRef {
        id: format!("doc-{}-{}", body.component, &upload.sha256[..12]),
        component: body.component.clone(),
        name: body.name.clone(),
        kind,
        sha256: upload.sha256.clone(),
        size: upload.size,
        content_type: upload.content_type.clone(),
        provenance,
    };
    let d = state
        .engine
        .execute(
            &code,
            expected_seq(&headers)?,
            &caller.actor,
            &Command::AttachDocument { document },
        )
        .await?;
    if let Some(p) = paper {
        state
            .io
            .khodl
            .save(p, now)
            .await
            .map_err(ApiError::internal)?;
    }
    Ok(dossier_response(&state, StatusCode::OK, &d))
}

/// A document's content, for those who may read the dossier.
#[utoipa::path(get, path = "/api/v1/dossiers/{code}/documents/{id}/content", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path), ("id" = String, Path, description = "Document id")),
    responses((status = 200, description = "The document's bytes, with the content type it was uploaded with (results: `text/plain`)",
            headers(("X-Content-SHA256" = String, description = "SHA-256 of the bytes, hex")),
            content((Pdf = "application/pdf"), (Binary = "image/jpeg"), (Binary = "image/png"), (Binary = "application/xml"), (Text = "text/plain"))),
        (status = "default", body = Problem)))]
async fn document_content(
    State(state): State<AppState>,
    caller: Caller,
    Path((code, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let d = readable_dossier(&state, &caller, &code).await?;
    // The owner receives the signed results when the dossier is returned, not before.
    let results = d
        .signatures
        .iter()
        .filter(|_| result_visible(&caller, &d))
        .filter_map(|s| s.document.as_ref());
    let doc = d
        .documents
        .iter()
        .chain(results)
        .find(|x| x.id == id)
        .ok_or_else(|| ApiError::not_found(format!("dossier {code} has no document {id}")))?;
    let blobs = state.io.blobs.clone();
    let sha = doc.sha256.clone();
    let bytes = tokio::task::spawn_blocking(move || blobs.get(&sha))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("the document's content is not stored here"))?;
    Ok((
        [
            (header::CONTENT_TYPE, doc.content_type.clone()),
            (
                header::HeaderName::from_static("x-content-sha256"),
                doc.sha256.clone(),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaperView {
    pub id: String,
    pub name: String,
    pub paper_type: String,
    pub number: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub issuing_agency: String,
    pub valid_until: Option<DateTime<Utc>>,
    pub kind: String,
    pub provenance: String,
    pub dossier_code: Option<String>,
    pub sha256: Option<String>,
    pub signatures: usize,
}

/// The caller's papers in this system's Kho DL (results are listed once returned).
#[utoipa::path(get, path = "/api/v1/me/papers", tag = "citizens", security(("bearer" = [])),
    responses((status = 200, body = [PaperView]), (status = "default", body = Problem)))]
async fn my_papers(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<PaperView>>> {
    caller.require(&[UserKind::Citizen])?;
    let owner = OwnerId::parse(caller.claims.owner_id.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
    let papers = state
        .io
        .khodl
        .list(&owner, &PaperFilter::default())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        papers
            .into_iter()
            .map(|p| PaperView {
                id: p.id.clone(),
                name: p.name.clone(),
                paper_type: p.paper_type.clone(),
                number: p.number.clone(),
                issued_at: p.issued_at,
                issuing_agency: p.issuing_agency.clone(),
                valid_until: match p.validity {
                    engine::khodl::PaperValidity::Permanent => None,
                    engine::khodl::PaperValidity::Until(t) => Some(t),
                },
                kind: engine::wire_name(&p.kind),
                provenance: engine::wire_name(&p.provenance),
                dossier_code: p.dossier_code.clone(),
                sha256: p.file.as_ref().map(|f| f.sha256.clone()),
                signatures: p.signatures.len(),
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateView {
    pub paper_id: String,
    /// `local` or `portal`.
    pub source: String,
    pub result_code: String,
    pub name: String,
    pub number: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    pub issuing_agency: String,
    pub sha256: String,
    /// What its signatures verify to here, against the hash it is listed with: `verified`,
    /// `untrusted_key`, `unsigned` or `altered` (docs/operations.md, "Signatures that travel").
    pub signature_check: Option<String>,
}

fn candidate_view(p: &ReusedPaper) -> CandidateView {
    CandidateView {
        paper_id: p.id.clone(),
        source: match p.source {
            PaperSource::Local => "local".into(),
            PaperSource::Portal => "portal".into(),
        },
        result_code: p.result_code.clone(),
        name: p.name.clone(),
        number: p.number.clone(),
        issued_at: p.issued_at,
        valid_until: p.valid_until,
        issuing_agency: p.issuing_agency.clone(),
        sha256: p.sha256.clone(),
        signature_check: p
            .signature_check
            .as_ref()
            .map(|c| c.outcome.as_str().to_owned()),
    }
}

fn reuse_error(e: engine::reuse::ReuseError) -> ApiError {
    match e {
        engine::reuse::ReuseError::Engine(e) => e.into(),
        engine::reuse::ReuseError::NotReusable(_)
        | engine::reuse::ReuseError::UnknownPaper(_)
        | engine::reuse::ReuseError::Unverified { .. }
        | engine::reuse::ReuseError::Altered { .. } => {
            ApiError::unprocessable(e.code(), e.to_string())
        }
        engine::reuse::ReuseError::HashMismatch { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, e.code(), e.to_string())
        }
        engine::reuse::ReuseError::Portal(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
        }
        engine::reuse::ReuseError::Storage(m) => ApiError::internal(m),
    }
}

/// The owner's earlier results that may stand in for a component: this system's Kho DL
/// first, then the portal's.
#[utoipa::path(get, path = "/api/v1/dossiers/{code}/components/{component}/candidates", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path), ("component" = String, Path)),
    responses((status = 200, body = [CandidateView]), (status = "default", body = Problem)))]
async fn candidates(
    State(state): State<AppState>,
    caller: Caller,
    Path((code, component)): Path<(String, String)>,
) -> ApiResult<Json<Vec<CandidateView>>> {
    caller.require(&[UserKind::Citizen, UserKind::Officer])?;
    let d = readable_dossier(&state, &caller, &code).await?;
    let list = state
        .io
        .reuse
        .candidates(&state.engine, &d, &component)
        .await
        .map_err(reuse_error)?;
    Ok(Json(list.iter().map(candidate_view).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReuseBody {
    pub paper_id: String,
    /// `local` or `portal`, as listed.
    pub source: String,
    /// At the desk: the owner confirmed they agree to this paper being used.
    #[serde(default)]
    pub owner_confirmed: bool,
    /// At the desk, under `reuse.unverified: confirm`: the officer checked a paper whose
    /// signatures do not verify here (untrusted key, unsigned) with its issuing agency.
    #[serde(default)]
    pub unverified_confirmed: bool,
}

/// Uses an earlier result for a component, with the owner's consent (online, choosing it is
/// the consent; at the desk the officer records the owner's confirmation).
#[utoipa::path(post, path = "/api/v1/dossiers/{code}/components/{component}/reuse", tag = "citizens", security(("bearer" = [])),
    params(("code" = String, Path), ("component" = String, Path)),
    request_body = ReuseBody,
    responses((status = 200, body = crate::views::DossierView), (status = "default", body = Problem)))]
async fn reuse(
    State(state): State<AppState>,
    caller: Caller,
    Path((code, component)): Path<(String, String)>,
    Body(body): Body<ReuseBody>,
) -> ApiResult<Response> {
    caller.require(&[UserKind::Citizen, UserKind::Officer])?;
    readable_dossier(&state, &caller, &code).await?;
    let source = match body.source.as_str() {
        "local" => PaperSource::Local,
        "portal" => PaperSource::Portal,
        other => {
            return Err(ApiError::unprocessable(
                "invalid_input",
                format!("source `{other}` is not local or portal"),
            ));
        }
    };
    let pick = Pick {
        component: &component,
        paper_id: &body.paper_id,
        source,
        owner_confirmed: body.owner_confirmed,
        unverified_confirmed: body.unverified_confirmed,
    };
    let d = state
        .io
        .reuse
        .take(&state.engine, &code, &caller.actor, pick)
        .await
        .map_err(reuse_error)?;
    Ok(dossier_response(&state, StatusCode::OK, &d))
}

/// Verifies a signed result: its content's hash, the signed metadata, the signer's Ed25519
/// signature and the agency's seal, in that order.
#[utoipa::path(get, path = "/api/v1/dossiers/{code}/results/{result_code}/verification", tag = "auditors", security(("bearer" = [])),
    params(("code" = String, Path), ("result_code" = String, Path)),
    responses((status = 200, body = Verification), (status = "default", body = Problem)))]
async fn verify_result(
    State(state): State<AppState>,
    caller: Caller,
    Path((code, result_code)): Path<(String, String)>,
) -> ApiResult<Json<Verification>> {
    let d = readable_dossier(&state, &caller, &code).await?;
    if !result_visible(&caller, &d) {
        return Err(ApiError::not_found(format!(
            "dossier {code} has no returned result {result_code}"
        )));
    }
    // Reads and re-hashes the document from disk: off the async workers.
    let verification = tokio::task::spawn_blocking(move || {
        crate::integrations::verify_result(&state.io, &d, &result_code)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(verification))
}

/// Whether the caller may see the dossier's signed results: its owner once it is returned
/// (national status 10), officers, auditors and administrators who may read it at any time.
fn result_visible(caller: &Caller, d: &engine::dossier::Dossier) -> bool {
    caller.kind() != UserKind::Citizen || d.returned_at.is_some()
}
