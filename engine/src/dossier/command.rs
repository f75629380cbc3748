//! Commands: everything that can be asked of a dossier, and why it may be refused.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{DocumentRef, Notification};
use super::types::{Channel, Owner};
use crate::runtime::FormViolation;

/// A new dossier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filing {
    pub procedure_code: String,
    /// The agency that receives it (its code per Circular 10/2016/TT-BTTTT).
    pub agency_code: String,
    /// The agency competent to decide, when the receiving one is not (a commune, for a
    /// commune procedure filed at the provincial service centre). The engine fills it in
    /// from the procedure's competent kind when the filing leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub competent_agency: Option<String>,
    pub owner: Owner,
    pub channel: Channel,
    /// Form data by component id.
    #[serde(default)]
    pub data: BTreeMap<String, Value>,
    #[serde(default)]
    pub documents: Vec<DocumentRef>,
}

/// Where a reused paper comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaperSource {
    /// This system's Kho DL.
    Local,
    /// The portal's Kho DL (downloaded, its hash checked, stored locally before reuse).
    Portal,
}

/// A paper from Kho DL offered for reuse, with what the decision needs to judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReusedPaper {
    pub id: String,
    pub source: PaperSource,
    pub owner_id: super::types::OwnerId,
    pub result_code: String,
    pub name: String,
    #[serde(default)]
    pub number: Option<String>,
    pub issued_at: DateTime<Utc>,
    /// None: permanent.
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
    pub issuing_agency: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    /// What checking the paper's signatures found (recorded in the reuse event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_check: Option<crate::signing::PaperVerification>,
}

/// What an administrator decides about an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentAction {
    Retry,
    Skip,
}

/// Every command on an existing dossier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    ClaimTask {
        task: String,
    },
    ReleaseTask {
        task: String,
    },
    CompleteTask {
        task: String,
        #[serde(default)]
        outcome: Option<String>,
        #[serde(default)]
        data: Option<Value>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// The one-stop desk accepts the dossier as complete (completes the reception task with
    /// outcome `accept`).
    Receive,
    /// The one-stop desk refuses the dossier (outcome `refuse` of the reception task).
    RefuseReception {
        reason: String,
    },
    RequestSupplement {
        reason: String,
        missing: Vec<String>,
    },
    Supplement {
        #[serde(default)]
        data: BTreeMap<String, Value>,
        #[serde(default)]
        documents: Vec<DocumentRef>,
    },
    Withdraw {
        reason: String,
    },
    Stop {
        reason: String,
    },
    RecordPayment {
        fee_code: String,
        amount_vnd: u64,
        /// The receipt (biên lai) or transaction number; required.
        #[serde(default)]
        receipt: Option<String>,
        #[serde(default)]
        channel: super::state::PaymentChannel,
    },
    AttachDocument {
        document: DocumentRef,
    },
    ReplaceDocument {
        replaced: String,
        document: DocumentRef,
    },
    SignResult {
        result_code: String,
        #[serde(default)]
        number: Option<String>,
        #[serde(default)]
        document: Option<DocumentRef>,
    },
    /// The one-stop desk hands the result over (completes the task marked `returned`).
    ReturnResult,
    /// Takes an earlier result from Kho DL for a component, with the owner's consent: online the
    /// owner picks it; at the desk the officer records that the owner confirmed.
    ReusePaper {
        component: String,
        paper: ReusedPaper,
        #[serde(default)]
        owner_confirmed: bool,
    },
    /// The outcome of one attempt at a hook job, recorded by the worker.
    RecordHookOutcome {
        job: String,
        attempt: u32,
        outcome: HookOutcome,
    },
    FireTimer {
        job: String,
    },
    ResolveIncident {
        incident: String,
        action: IncidentAction,
        #[serde(default)]
        note: Option<String>,
        /// Corrected forms (by component or task id), recorded with the retry of a condition
        /// incident before the decision is evaluated again.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        data: BTreeMap<String, Value>,
    },
    /// Sends the apology letter (Mẫu 04) with a new date.
    Apologize {
        reason: String,
        new_due_at: DateTime<Utc>,
    },
    FlagOverdue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HookOutcome {
    Succeeded {
        #[serde(default)]
        detail: Value,
        #[serde(default)]
        notification: Option<Notification>,
    },
    Failed {
        error: String,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::ClaimTask { .. } => "claim_task",
            Command::ReleaseTask { .. } => "release_task",
            Command::CompleteTask { .. } => "complete_task",
            Command::Receive => "receive",
            Command::RefuseReception { .. } => "refuse_reception",
            Command::RequestSupplement { .. } => "request_supplement",
            Command::Supplement { .. } => "supplement",
            Command::Withdraw { .. } => "withdraw",
            Command::Stop { .. } => "stop",
            Command::RecordPayment { .. } => "record_payment",
            Command::AttachDocument { .. } => "attach_document",
            Command::ReplaceDocument { .. } => "replace_document",
            Command::SignResult { .. } => "sign_result",
            Command::ReturnResult => "return_result",
            Command::ReusePaper { .. } => "reuse_paper",
            Command::RecordHookOutcome { .. } => "record_hook_outcome",
            Command::FireTimer { .. } => "fire_timer",
            Command::ResolveIncident { .. } => "resolve_incident",
            Command::Apologize { .. } => "apologize",
            Command::FlagOverdue => "flag_overdue",
        }
    }
}

/// Why a command was refused. Nothing is stored when a command is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("not allowed: {reason}")]
    Forbidden { reason: String },
    #[error("{message}")]
    InvalidState { message: String },
    #[error("form data is invalid ({} problem(s))", violations.len())]
    InvalidForm { violations: Vec<FormViolation> },
    #[error("{message}")]
    InvalidInput { message: String },
    /// Invalid input at one place of the command (and of the request body it came from).
    /// The same stable code as [`CommandError::InvalidInput`].
    #[error("{message}")]
    InvalidField { pointer: String, message: String },
    /// The task was opened on this dossier but is no longer open: another officer completed
    /// it first, or it was completed or cancelled before. A conflict, never a "not found".
    #[error(
        "task {task} of dossier {dossier} is no longer open (completed or cancelled): read the dossier again"
    )]
    TaskNotOpen { task: String, dossier: String },
    #[error("required components are missing: {}", components.join(", "))]
    MissingComponents { components: Vec<String> },
    /// The job attempt was already recorded (a duplicate worker, or a retry after a crash).
    #[error("job {job} attempt {attempt} is not the current one")]
    StaleJob { job: String, attempt: u32 },
    /// A fee that must be paid before this step is not paid yet.
    #[error(
        "fee {fee_code} ({name}) is unpaid: {amount_vnd} VND is due {due}; record its payment first"
    )]
    FeeUnpaid {
        fee_code: String,
        name: String,
        amount_vnd: u64,
        due: &'static str,
    },
}

impl CommandError {
    /// A stable code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NotFound { .. } => "not_found",
            CommandError::Forbidden { .. } => "forbidden",
            CommandError::InvalidState { .. } => "invalid_state",
            CommandError::InvalidForm { .. } => "invalid_form",
            CommandError::InvalidInput { .. } | CommandError::InvalidField { .. } => {
                "invalid_input"
            }
            CommandError::MissingComponents { .. } => "missing_components",
            CommandError::StaleJob { .. } => "stale_job",
            CommandError::TaskNotOpen { .. } => "task_not_open",
            CommandError::FeeUnpaid { .. } => "fee_unpaid",
        }
    }

    pub(crate) fn state(message: impl Into<String>) -> CommandError {
        CommandError::InvalidState {
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(reason: impl Into<String>) -> CommandError {
        CommandError::Forbidden {
            reason: reason.into(),
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> CommandError {
        CommandError::InvalidInput {
            message: message.into(),
        }
    }

    pub(crate) fn input_at(pointer: impl Into<String>, message: impl Into<String>) -> CommandError {
        CommandError::InvalidField {
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    pub(crate) fn not_found_job(job: &str) -> CommandError {
        CommandError::NotFound {
            what: format!("job {job}"),
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> CommandError {
        CommandError::NotFound { what: what.into() }
    }
}
