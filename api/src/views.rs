//! Wire types of the API. Engine types stay inside; these are what clients see and send.

use chrono::{DateTime, Utc};
use engine::dossier::{Dossier, EventRecord, Task};
use engine::store::{DossierRow, IncidentRow, NotificationRow, TaskRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    /// Portal status code (TrangThaiHoSo), 1–10.
    pub code: u8,
    pub label: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerView {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub component: String,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    /// Where the document came from (digitized at the desk, reused from Kho DL); null for an
    /// upload.
    #[schema(value_type = Object, nullable)]
    pub provenance: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub dossier_code: String,
    pub task_id: String,
    pub step: String,
    pub name: String,
    pub role: String,
    pub agency_code: String,
    pub claimed_by: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
}

impl TaskView {
    pub fn of(code: &str, t: &Task) -> TaskView {
        TaskView {
            dossier_code: code.to_owned(),
            task_id: t.id.to_string(),
            step: t.step.to_string(),
            name: t.name.to_string(),
            role: t.role.to_string(),
            agency_code: t.agency.to_string(),
            claimed_by: t.claimed_by.clone(),
            opened_at: t.opened_at,
            due_at: t.due_at,
        }
    }
}

impl From<TaskRow> for TaskView {
    fn from(t: TaskRow) -> TaskView {
        TaskView {
            dossier_code: t.dossier_code,
            task_id: t.task_id,
            step: t.step,
            name: t.name,
            role: t.role,
            agency_code: t.agency_code,
            claimed_by: t.claimed_by,
            opened_at: t.opened_at,
            due_at: t.due_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PauseView {
    pub since: DateTime<Utc>,
    pub missing: Vec<String>,
}

/// A dossier as its readers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DossierView {
    pub code: String,
    pub procedure_code: String,
    pub procedure_version: u32,
    pub procedure_name: String,
    /// The agency that received the dossier.
    pub agency_code: String,
    /// The agency competent to decide it (the receiving one unless a service centre received).
    pub competent_agency: String,
    pub owner: OwnerView,
    pub channel: String,
    /// For an online filing: `full` (toàn trình) or `partial` (một phần), Decree 42/2022.
    pub online_level: Option<String>,
    pub status: StatusView,
    /// The dossier's event number: send it back in `If-Match` to act on this version.
    pub seq: u64,
    pub filed_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub promised_at: Option<DateTime<Utc>>,
    pub processed_at: Option<DateTime<Utc>>,
    pub returned_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub overdue: bool,
    pub paused: Option<PauseView>,
    pub supplement_rounds: u32,
    pub reason: Option<String>,
    /// Form data by component or task id.
    #[schema(value_type = Object)]
    pub data: Value,
    pub documents: Vec<DocumentView>,
    pub tasks: Vec<TaskView>,
    pub signed_results: Vec<String>,
    /// The signed results, once the dossier is returned (status 10); empty before. Download
    /// one at `documents/{document_id}/content`, verify it at `results/{result_code}/verification`.
    pub results: Vec<ResultView>,
    /// Each fee of the procedure version: what this dossier owes after reductions, what it paid.
    pub fees: Vec<FeeView>,
}

/// One fee of a dossier, in VND.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeeView {
    pub code: String,
    pub name: String,
    /// When it must be paid: `anytime`, `at_reception` (before the desk receives the dossier)
    /// or `before_return` (before the result is handed over).
    pub due: String,
    /// The fee before reductions.
    pub full_amount_vnd: u64,
    /// The reduction that applies to this dossier's data, by name.
    pub reduction: Option<String>,
    /// What this dossier owes: the reduced amount when a reduction applies.
    pub amount_due_vnd: u64,
    pub paid_vnd: u64,
    /// What is still to pay.
    pub outstanding_vnd: u64,
    pub payments: Vec<PaymentView>,
}

/// A payment recorded on a dossier.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    pub amount_vnd: u64,
    /// `counter`, `online` or `postal`; none for payments recorded before channels were.
    pub channel: Option<String>,
    pub receipt: Option<String>,
    pub paid_at: DateTime<Utc>,
}

impl FeeView {
    fn of(d: &Dossier, p: &engine::runtime::CompiledProcedure) -> Vec<FeeView> {
        p.fee_balances(d, |c| d.paid_vnd(c))
            .into_iter()
            .map(|b| FeeView {
                payments: d
                    .payments
                    .iter()
                    .filter(|x| x.fee_code == b.code)
                    .map(|x| PaymentView {
                        amount_vnd: x.amount_vnd,
                        channel: x.channel.map(|c| c.as_str().to_owned()),
                        receipt: x.receipt.clone(),
                        paid_at: x.at,
                    })
                    .collect(),
                code: b.code,
                name: b.name,
                due: engine::wire_name(&b.due),
                full_amount_vnd: b.full_amount_vnd,
                reduction: b.reduction,
                amount_due_vnd: b.amount_due_vnd,
                paid_vnd: b.paid_vnd,
                outstanding_vnd: b.outstanding_vnd,
            })
            .collect()
    }
}

/// A signed result as its owner receives it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultView {
    pub result_code: String,
    /// Số ký hiệu.
    pub number: Option<String>,
    pub name: Option<String>,
    /// The electronic document's id; none when the result was issued on paper only.
    pub document_id: Option<String>,
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    /// Who signed (the competent person's name).
    pub signer: String,
    /// The organization whose seal the result carries (its agency code).
    pub organization: Option<String>,
    /// When it was signed, in Vietnam time (`+07:00`).
    #[schema(value_type = String, format = DateTime)]
    pub signed_at: chrono::DateTime<chrono::FixedOffset>,
    /// The signatures the document carries: the signer's, then the organization's seal.
    pub signatures: Vec<crate::integrations::SignerView>,
}

impl ResultView {
    /// The results of a dossier its owner may see: none before it is returned.
    pub fn returned(d: &Dossier) -> Vec<ResultView> {
        if d.returned_at.is_none() {
            return Vec::new();
        }
        d.signatures
            .iter()
            .map(|s| {
                let records: Vec<engine::signing::SignatureRecord> = s
                    .document
                    .as_ref()
                    .and_then(|doc| doc.provenance.as_ref())
                    .and_then(|p| p.get(engine::khodl::PROVENANCE_SIGNATURES))
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                ResultView {
                    result_code: s.result_code.clone(),
                    number: s.number.clone(),
                    name: s.document.as_ref().map(|doc| doc.name.clone()),
                    document_id: s.document.as_ref().map(|doc| doc.id.clone()),
                    sha256: s.document.as_ref().map(|doc| doc.sha256.clone()),
                    content_type: s.document.as_ref().map(|doc| doc.content_type.clone()),
                    signer: s.signer.clone(),
                    organization: records
                        .iter()
                        .find(|r| r.signer_kind == engine::signing::SignerKind::Agency)
                        .map(|r| r.signer_id.clone()),
                    signed_at: engine::calendar::vietnam_time(s.at),
                    signatures: records
                        .iter()
                        .map(crate::integrations::SignerView::of)
                        .collect(),
                }
            })
            .collect()
    }
}

impl DossierView {
    /// The view of a dossier; its fees need its procedure version (none: no fees shown).
    pub fn of(d: &Dossier, procedure: Option<&engine::runtime::CompiledProcedure>) -> DossierView {
        DossierView {
            code: d.code.to_string(),
            procedure_code: d.procedure_code.to_string(),
            procedure_version: d.procedure_version,
            procedure_name: d.procedure_name.to_string(),
            agency_code: d.agency_code.to_string(),
            competent_agency: d.competent_agency().to_string(),
            online_level: d.online_level.as_ref().map(engine::wire_name),
            owner: OwnerView {
                id: d.owner.id.to_string(),
                name: d.owner.name.clone(),
            },
            channel: d.channel.as_str().to_owned(),
            status: StatusView {
                code: d.status.code(),
                label: d.status.label().to_owned(),
            },
            seq: d.seq,
            filed_at: d.filed_at,
            received_at: d.received_at,
            due_at: d.due_at,
            promised_at: d.promised_at,
            processed_at: d.processed_at,
            returned_at: d.returned_at,
            closed_at: d.closed_at,
            outcome: d.end.map(|e| e.label().to_owned()),
            overdue: d.overdue,
            paused: d.paused.as_ref().map(|p| PauseView {
                since: p.since,
                missing: p.missing.clone(),
            }),
            supplement_rounds: d.supplement_rounds,
            reason: d.reason.clone(),
            data: Value::Object(
                d.data
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::clone(v)))
                    .collect(),
            ),
            documents: d
                .documents
                .iter()
                .map(|x| DocumentView {
                    id: x.id.clone(),
                    component: x.component.clone(),
                    name: x.name.clone(),
                    sha256: x.sha256.clone(),
                    size: x.size,
                    content_type: x.content_type.clone(),
                    provenance: x.provenance.clone(),
                })
                .collect(),
            tasks: d.tasks.values().map(|t| TaskView::of(&d.code, t)).collect(),
            signed_results: d.signatures.iter().map(|s| s.result_code.clone()).collect(),
            results: ResultView::returned(d),
            fees: procedure.map(|p| FeeView::of(d, p)).unwrap_or_default(),
        }
    }
}

/// One line of a dossier list.
#[derive(Debug, Serialize, ToSchema)]
pub struct DossierSummary {
    pub code: String,
    pub procedure_code: String,
    pub agency_code: String,
    pub owner_id: String,
    pub owner_name: String,
    pub status: u8,
    pub filed_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub closed: bool,
}

impl From<DossierRow> for DossierSummary {
    fn from(r: DossierRow) -> DossierSummary {
        DossierSummary {
            code: r.code,
            procedure_code: r.procedure_code,
            agency_code: r.agency_code,
            owner_id: r.owner_id,
            owner_name: r.owner_name,
            status: r.status,
            filed_at: r.filed_at,
            due_at: r.due_at,
            overdue: r.overdue,
            closed: r.closed,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor_id: String,
    pub actor_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub summary: String,
    pub step: Option<String>,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl EventView {
    pub fn of(e: &EventRecord) -> EventView {
        EventView {
            seq: e.seq,
            at: e.at,
            actor_id: e.actor_id.clone(),
            actor_name: e.actor_name.clone(),
            kind: e.event.type_name(),
            summary: e.event.summary(),
            step: e.event.step().map(str::to_owned),
            payload: serde_json::to_value(&e.event).unwrap_or_default(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    pub template: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl From<NotificationRow> for NotificationView {
    fn from(n: NotificationRow) -> NotificationView {
        NotificationView {
            id: n.notification_id,
            template: n.template,
            recipient: n.recipient,
            subject: n.subject,
            body: n.body,
            created_at: n.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentView {
    pub dossier_code: String,
    pub incident_id: String,
    pub job_id: String,
    pub error: String,
    pub opened_at: DateTime<Utc>,
    pub resolution: Option<String>,
    /// `hook` (a hook failed for good: `job_id` names it), `condition` (a decision could not
    /// evaluate its condition; `error` names the step, the expression and the values read) or
    /// `stuck` (nothing left to wait on; `error` says where the tokens are).
    pub kind: String,
}

impl From<IncidentRow> for IncidentView {
    fn from(i: IncidentRow) -> IncidentView {
        IncidentView {
            dossier_code: i.dossier_code,
            incident_id: i.incident_id,
            job_id: i.job_id,
            error: i.error,
            opened_at: i.opened_at,
            resolution: i.resolution,
            kind: i.kind,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    pub events: usize,
    pub matches: bool,
    pub differences: Vec<String>,
    pub status: StatusView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    pub intact: bool,
    pub dossiers: u64,
    pub events: u64,
    pub breaks: Vec<BreakView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakView {
    pub dossier: String,
    pub seq: u64,
    pub problem: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcedureView {
    pub code: String,
    pub version: u32,
    pub name: String,
    pub agency_level: String,
    pub field: String,
    pub processing_time: String,
    /// The definition as deployed (the typed model, as JSON).
    #[schema(value_type = Object)]
    pub definition: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiagnosticView {
    pub line: u64,
    pub column: u64,
    pub severity: String,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeployView {
    pub code: String,
    pub version: u32,
    /// `deployed`, or `unchanged` when that version was already deployed with the same text.
    pub result: String,
    pub warnings: Vec<DiagnosticView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ValidateView {
    pub valid: bool,
    pub diagnostics: Vec<DiagnosticView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HolidayView {
    pub date: chrono::NaiveDate,
    pub name: String,
}

// Requests.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerInput {
    /// 12-digit citizen ID, passport number, or tax code.
    pub id: String,
    /// Not blank.
    #[schema(pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    pub procedure_code: String,
    /// The agency receiving the dossier (a service centre, a department, a commune): one of
    /// this deployment's agency codes, e.g. `000.00.01.H59`.
    #[schema(pattern = "^[A-Z0-9.]{1,32}$")]
    pub agency_code: String,
    /// The agency competent to decide, when the receiving one is not and the procedure's
    /// kind of competent agency has several in the province (communes): which commune.
    #[serde(default)]
    #[schema(pattern = "^[A-Z0-9.]{1,32}$")]
    pub competent_agency: Option<String>,
    /// Citizens file for themselves: leave out, or give their own identifier. Officers at the
    /// desk name the owner.
    #[serde(default)]
    pub owner: Option<OwnerInput>,
    /// `online` (citizens), `in_person` or `postal` (officers).
    #[serde(default)]
    #[schema(pattern = "^(online|in_person|postal)$")]
    pub channel: Option<String>,
    /// Form data by component id.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Not blank.
    #[schema(pattern = r"\S")]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplementRequestBody {
    /// Not blank.
    #[schema(pattern = r"\S")]
    pub reason: String,
    /// Component ids the owner must provide.
    #[serde(default)]
    pub missing: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplementBody {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    pub fee_code: String,
    /// The amount due for this dossier (the fee after the reduction that applies); any other
    /// amount is refused.
    #[serde(deserialize_with = "whole_number")]
    pub amount_vnd: u64,
    /// The receipt (biên lai) or payment transaction number: required.
    #[serde(default)]
    pub receipt: Option<String>,
    /// `counter` (when left out or null), `online` or `postal`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub channel: Option<engine::dossier::PaymentChannel>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    pub result_code: String,
    #[serde(default)]
    pub number: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// `retry` runs the hook (or evaluates the condition) again; `skip` treats a hook as done
    /// and moves on, or acknowledges a stuck dossier (a condition has no skip).
    #[schema(pattern = "^(retry|skip)$")]
    pub action: String,
    #[serde(default)]
    pub note: Option<String>,
    /// With `retry` of a `condition` incident: corrected forms by component or task id,
    /// validated against their schemas and recorded before the decision is evaluated again.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A whole number in a JSON body, `12` or `12.0` alike: JSON Schema's `integer` is any number
/// without a fractional part, and clients (JavaScript's among them) may write either.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = <serde_json::Number as Deserialize>::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number of at least 0")))
}
