//! Events: the facts recorded in a dossier's stream. State is a fold over them.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{Channel, OnlineLevel, Owner};
use crate::definition::{DocumentKind, EndOutcome, RetryPolicy};

/// A document attached to a dossier component. The content lives in the blob store under its
/// hash; the event records what it is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRef {
    pub id: String,
    pub component: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DocumentKind>,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    /// Where it came from, when not uploaded by the filer (digitized at the desk, reused from
    /// Kho DL…), with whatever metadata that source keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Value>,
}

/// A notification rendered from a template, kept in the dossier's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub template: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentResolution {
    /// Run the hook again from its first attempt.
    Retried,
    /// Consider the hook done and move on (the administrator did its work by hand).
    Skipped,
}

/// What an incident is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// A hook that failed for good.
    #[default]
    Hook,
    /// A decision condition (or a timer's `until`) that could not be evaluated: the token
    /// waits at that step.
    Condition,
    /// A dossier not ended with no open task, job or timer: nothing will move it.
    Stuck,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Hook => "hook",
            IncidentKind::Condition => "condition",
            IncidentKind::Stuck => "stuck",
        }
    }
}

/// One fact about a dossier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Filed {
        code: String,
        procedure_code: String,
        procedure_version: u32,
        procedure_name: String,
        agency_code: String,
        /// The agency competent to decide, when it is not the one that received the dossier
        /// (a service centre receives, a department or commune decides).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        competent_agency: Option<String>,
        /// For an online filing, the level of online service it is recorded with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        online_level: Option<OnlineLevel>,
        /// Boxed, like the documents below: every event is as big as the biggest variant,
        /// and each one is moved a few times as it is decided and stored.
        owner: Box<Owner>,
        channel: Channel,
        /// Each form shared with the dossier's state (serialized as the form itself).
        data: BTreeMap<String, Arc<Value>>,
        documents: Vec<DocumentRef>,
    },
    /// The token `token` entered step `to`.
    Advanced {
        token: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Shared with the state's token position.
        to: Arc<str>,
        /// Why: the outcome, the decision branch taken, `start`…
        via: String,
    },
    Forked {
        token: u32,
        at: String,
        /// New tokens and the step each starts at.
        branches: Vec<(u32, String)>,
    },
    /// A branch's token reached its join and waits for the others.
    Arrived {
        token: u32,
        join: String,
    },
    /// Every branch reached the join: a new token carries on from it.
    Joined {
        join: String,
        token: u32,
    },
    /// The names come from the definition and stay in the state's task: shared, not copied.
    TaskOpened {
        task: Arc<str>,
        step: Arc<str>,
        name: Arc<str>,
        role: Arc<str>,
        agency: Arc<str>,
        token: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_at: Option<DateTime<Utc>>,
    },
    TaskClaimed {
        task: String,
        by: String,
        by_name: String,
    },
    TaskReleased {
        task: String,
    },
    TaskCompleted {
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
        /// Shared with the dossier's state, like the filing's forms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Arc<Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    TaskCancelled {
        task: String,
    },
    /// The dossier is accepted as complete: the processing clock starts.
    Received {
        due_at: DateTime<Utc>,
    },
    /// The result is ready (đã xử lý xong).
    Processed,
    /// The result was handed to the owner.
    ResultReturned,
    ResultSigned {
        result_code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        number: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        document: Option<Box<DocumentRef>>,
        signer: String,
    },
    HookScheduled {
        job: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        call: String,
        #[serde(default, skip_serializing_if = "crate::definition::no_args")]
        args: std::sync::Arc<BTreeMap<String, Value>>,
        retry: RetryPolicy,
        run_at: DateTime<Utc>,
    },
    HookSucceeded {
        job: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        detail: Value,
    },
    HookFailed {
        job: String,
        attempt: u32,
        error: String,
        /// When the next attempt runs; none after the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<DateTime<Utc>>,
    },
    IncidentOpened {
        incident: String,
        job: String,
        error: String,
    },
    IncidentResolved {
        incident: String,
        resolution: IncidentResolution,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    TimerScheduled {
        job: String,
        token: u32,
        step: String,
        fire_at: DateTime<Utc>,
    },
    TimerFired {
        job: String,
    },
    NotificationRecorded {
        notification: Notification,
    },
    SupplementRequested {
        reason: String,
        missing: Vec<String>,
        /// Processing time left when the clock stopped, in minutes of the procedure's unit
        /// (working minutes for working days and hours).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remaining_minutes: Option<i64>,
    },
    Supplemented {
        data: BTreeMap<String, Arc<Value>>,
        documents: Vec<DocumentRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_at: Option<DateTime<Utc>>,
    },
    DocumentAttached {
        document: Box<DocumentRef>,
    },
    /// An earlier result taken from Kho DL for a component, with the owner's consent. The
    /// document's provenance names the paper and where it came from.
    PaperReused {
        component: String,
        paper_id: String,
        result_code: String,
        /// `local` or `portal`.
        source: String,
        /// True when the owner chose it online; false when an officer recorded the owner's
        /// confirmation at the desk.
        consent_by_owner: bool,
        document: Box<DocumentRef>,
    },
    DocumentReplaced {
        replaced: String,
        document: Box<DocumentRef>,
    },
    PaymentRecorded {
        fee_code: String,
        amount_vnd: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<String>,
        /// Absent from events recorded before channels were.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<super::state::PaymentChannel>,
    },
    Withdrawn {
        reason: String,
    },
    Stopped {
        reason: String,
    },
    ApologySent {
        reason: String,
        new_due_at: DateTime<Utc>,
    },
    OverdueFlagged {
        due_at: DateTime<Utc>,
    },
    Ended {
        outcome: EndOutcome,
        step: String,
    },
    /// Processed, but fees due before return are unpaid: status 6 (Yêu cầu thực hiện nghĩa vụ
    /// tài chính) until they are paid.
    PaymentRequested {
        fee_codes: Vec<String>,
        amount_vnd: u64,
    },
    /// The fees due before return are paid: back to status 9 (processed).
    PaymentsSettled,
    /// The engine stopped the dossier for an administrator: a condition that could not be
    /// evaluated (the token holds at `step`), or nothing left to wait on (stuck).
    GuardIncidentOpened {
        incident: String,
        kind: IncidentKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expression: Option<String>,
        /// The fields the expression reads, with the dossier's values.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        values: BTreeMap<String, Value>,
        error: String,
    },
    /// An administrator corrected forms to retry a condition incident.
    DataCorrected {
        incident: String,
        /// Each form shared with the dossier's state (serialized as the form itself).
        data: BTreeMap<String, Arc<Value>>,
    },
}

impl Event {
    /// The event's type name as stored (`filed`, `task_completed`…).
    pub fn type_name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            _ => "unknown".to_owned(),
        }
    }
}

/// An event as stored: its place in the stream, when, by whom, and its link in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub dossier: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor_id: String,
    pub actor_name: String,
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

impl Event {
    /// One line for a person reading the dossier's history.
    pub fn summary(&self) -> String {
        match self {
            Event::Filed {
                procedure_name,
                owner,
                channel,
                ..
            } => format!(
                "filed {procedure_name} for {} ({}) via {}",
                owner.name,
                owner.id,
                channel.as_str()
            ),
            Event::Advanced { to, via, .. } => format!("moved to {to} ({via})"),
            Event::Forked { at, branches, .. } => format!(
                "{at} split into {}",
                branches
                    .iter()
                    .map(|(_, s)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
            Event::Arrived { join, .. } => format!("a branch reached {join}"),
            Event::Joined { join, .. } => format!("all branches met at {join}"),
            Event::TaskOpened {
                name, role, agency, ..
            } => format!("task opened: {name} (role {role}, agency {agency})"),
            Event::TaskClaimed { task, by_name, .. } => format!("{by_name} took task {task}"),
            Event::TaskReleased { task } => format!("task {task} released"),
            Event::TaskCompleted {
                task,
                outcome,
                reason,
                ..
            } => format!(
                "task {task} completed{}{}",
                outcome
                    .as_ref()
                    .map(|o| format!(": {o}"))
                    .unwrap_or_default(),
                reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            Event::TaskCancelled { task } => format!("task {task} cancelled"),
            Event::Received { due_at } => format!("received; due {}", due_at.to_rfc3339()),
            Event::Processed => "result ready (processed)".into(),
            Event::ResultReturned => "result returned to the owner".into(),
            Event::ResultSigned {
                result_code,
                signer,
                ..
            } => format!("{signer} signed {result_code}"),
            Event::HookScheduled { call, job, .. } => format!("{call} scheduled ({job})"),
            Event::HookSucceeded { job, attempt, .. } => {
                format!("{job} succeeded on attempt {attempt}")
            }
            Event::HookFailed {
                job,
                attempt,
                error,
                retry_at,
            } => format!(
                "{job} attempt {attempt} failed: {error}{}",
                retry_at
                    .map(|r| format!("; retry at {}", r.to_rfc3339()))
                    .unwrap_or_else(|| "; no more attempts".into())
            ),
            Event::IncidentOpened {
                incident, error, ..
            } => format!("incident {incident} opened: {error}"),
            Event::IncidentResolved {
                incident,
                resolution,
                ..
            } => format!("incident {incident} resolved: {resolution:?}"),
            Event::TimerScheduled { step, fire_at, .. } => {
                format!("timer {step} set for {}", fire_at.to_rfc3339())
            }
            Event::TimerFired { job } => format!("timer {job} fired"),
            Event::NotificationRecorded { notification } => format!(
                "notification {} ({}) to {}",
                notification.id, notification.template, notification.recipient
            ),
            Event::SupplementRequested {
                reason, missing, ..
            } => format!("supplement requested: {reason} [{}]", missing.join(", ")),
            Event::Supplemented {
                documents, data, ..
            } => format!(
                "supplemented ({} form(s), {} document(s))",
                data.len(),
                documents.len()
            ),
            Event::DocumentAttached { document } => format!(
                "document attached: {} to {}",
                document.name, document.component
            ),
            Event::PaperReused {
                component,
                result_code,
                source,
                consent_by_owner,
                ..
            } => format!(
                "{result_code} reused from the {} Kho DL for {component} ({})",
                if source == "portal" {
                    "portal's"
                } else {
                    "local"
                },
                if *consent_by_owner {
                    "chosen by the owner"
                } else {
                    "owner's consent recorded at the desk"
                }
            ),
            Event::DocumentReplaced { replaced, document } => {
                format!("document {replaced} replaced by {}", document.name)
            }
            Event::PaymentRecorded {
                fee_code,
                amount_vnd,
                ..
            } => format!("fee {fee_code} paid: {amount_vnd} VND"),
            Event::Withdrawn { reason } => format!("withdrawn by the owner: {reason}"),
            Event::Stopped { reason } => format!("stopped: {reason}"),
            Event::ApologySent { new_due_at, .. } => {
                format!("apology letter sent; new date {}", new_due_at.to_rfc3339())
            }
            Event::OverdueFlagged { .. } => "overdue".into(),
            Event::Ended { outcome, step } => format!("ended {} at {step}", outcome.label()),
            Event::PaymentRequested {
                fee_codes,
                amount_vnd,
            } => format!(
                "payment requested before return: {} ({amount_vnd} VND)",
                fee_codes.join(", ")
            ),
            Event::PaymentsSettled => "fees due before return paid".into(),
            Event::GuardIncidentOpened {
                incident,
                kind,
                error,
                ..
            } => format!("{} incident {incident} opened: {error}", kind.as_str()),
            Event::DataCorrected { incident, data } => format!(
                "data corrected for incident {incident}: {}",
                data.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The step an event concerns, when it concerns one.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::Advanced { to, .. } => Some(to),
            Event::Forked { at, .. } => Some(at),
            Event::Arrived { join, .. } | Event::Joined { join, .. } => Some(join),
            Event::TaskOpened { step, .. } => Some(step),
            Event::HookScheduled { step, .. } => step.as_deref(),
            Event::TimerScheduled { step, .. } => Some(step),
            Event::Ended { step, .. } => Some(step),
            Event::GuardIncidentOpened { step, .. } => step.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Events are stored as their JSON text and chained by its hash: sharing a form with the
    /// state (`Arc<Value>`) must store the form itself, exactly as a plain value would be.
    #[test]
    fn forms_in_events_are_stored_as_the_forms_themselves() {
        let form = Arc::new(json!({ "ho_ten": "Nguyễn Văn A", "so_ban": 2 }));
        let completed = Event::TaskCompleted {
            task: "tham_dinh.1".into(),
            outcome: Some("dat".into()),
            data: Some(Arc::clone(&form)),
            reason: None,
        };
        let (text, kind) = crate::audit::event_text(&completed);
        assert_eq!(kind, "task_completed");
        assert_eq!(
            text,
            r#"{"type":"task_completed","task":"tham_dinh.1","outcome":"dat","data":{"ho_ten":"Nguyễn Văn A","so_ban":2}}"#
        );
        let supplemented = Event::Supplemented {
            data: BTreeMap::from([("to_khai".to_owned(), Arc::clone(&form))]),
            documents: Vec::new(),
            due_at: None,
        };
        let (text, _) = crate::audit::event_text(&supplemented);
        assert_eq!(
            text,
            r#"{"type":"supplemented","data":{"to_khai":{"ho_ten":"Nguyễn Văn A","so_ban":2}},"documents":[]}"#
        );
        // And read back as they were.
        for e in [completed, supplemented] {
            let text = crate::audit::event_text(&e).0;
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
        }
    }
}
