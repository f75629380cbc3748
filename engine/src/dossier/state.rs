//! The state of a dossier: a pure fold over its events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{DocumentRef, Event, IncidentKind, IncidentResolution, Notification};
use super::types::{Channel, OnlineLevel, Owner, Status};
use crate::definition::{EndOutcome, RetryPolicy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    // Fixed when the task opens: shared between copies (claiming copies the task).
    pub id: Arc<str>,
    pub step: Arc<str>,
    pub name: Arc<str>,
    pub role: Arc<str>,
    pub agency: Arc<str>,
    pub token: u32,
    pub opened_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    pub claimed_by: Option<String>,
    pub claimed_by_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Hook,
    Timer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for `run_at`.
    Pending,
    Done,
    /// Gave up: an incident is open, or the dossier moved to `on_failure`.
    Failed,
    /// The dossier ended before it ran.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The same allocation as the job's key in [`Dossier::jobs`].
    pub id: Arc<str>,
    pub kind: JobKind,
    pub call: String,
    /// Shared between copies of the job (a state change copies the job, never its arguments).
    pub args: Arc<BTreeMap<String, Value>>,
    pub step: Option<String>,
    pub token: Option<u32>,
    pub state: JobState,
    /// Attempts made so far.
    pub attempts: u32,
    pub retry: RetryPolicy,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

impl Job {
    /// The key external systems deduplicate this job's effect by: the same on every attempt.
    pub fn idempotency_key(&self, dossier: &str) -> String {
        format!("{dossier}/{}", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub job: String,
    pub error: String,
    pub opened_at: DateTime<Utc>,
    pub resolution: Option<IncidentResolution>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub kind: IncidentKind,
    /// The step a condition incident holds its token at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, Value>,
}

/// The clock stopped while the owner supplements the dossier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub since: DateTime<Utc>,
    pub remaining_minutes: Option<i64>,
    pub missing: Vec<String>,
    pub previous_status: Status,
    /// Documents attached, replaced or reused since the request: what a supplement that
    /// sends no form data brings.
    #[serde(default)]
    pub documents_brought: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub result_code: String,
    pub number: Option<String>,
    pub document: Option<DocumentRef>,
    pub signer: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub fee_code: String,
    pub amount_vnd: u64,
    pub receipt: Option<String>,
    pub at: DateTime<Utc>,
    /// How it was paid; none for payments recorded before channels were.
    #[serde(default)]
    pub channel: Option<PaymentChannel>,
}

/// How a fee was paid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentChannel {
    /// Cash or card at the one-stop desk (nộp trực tiếp).
    #[default]
    Counter,
    /// Through the national portal's payment platform or a bank transfer (nộp trực tuyến).
    Online,
    /// Collected by the public postal service (qua dịch vụ bưu chính công ích).
    Postal,
}

impl PaymentChannel {
    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentChannel::Counter => "counter",
            PaymentChannel::Online => "online",
            PaymentChannel::Postal => "postal",
        }
    }
}

/// Everything known about a dossier, as of its last event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dossier {
    // The identity below never changes after filing: shared between copies of a state (a
    // decision copies the state it decides on).
    pub code: Arc<str>,
    pub procedure_code: Arc<str>,
    pub procedure_version: u32,
    pub procedure_name: Arc<str>,
    /// The agency that received the dossier (its code starts the dossier code).
    pub agency_code: Arc<str>,
    /// The agency competent to decide, when it is not the receiving one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub competent_agency: Option<Arc<str>>,
    /// For an online filing: fully or partly online (Decree 42/2022).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_level: Option<OnlineLevel>,
    /// Shared between copies of a state: it never changes after filing.
    pub owner: Arc<Owner>,
    pub channel: Channel,
    pub status: Status,
    pub seq: u64,
    pub filed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    /// The legal due date (ngày hẹn trả), moved only by supplement pauses.
    pub due_at: Option<DateTime<Utc>>,
    /// The new date promised in an apology letter.
    pub promised_at: Option<DateTime<Utc>>,
    pub processed_at: Option<DateTime<Utc>>,
    pub returned_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub end: Option<EndOutcome>,
    pub overdue: bool,
    pub apology_sent: bool,
    pub paused: Option<Pause>,
    pub supplement_rounds: u32,
    /// The officer who last took a task, named on the notifications they cause.
    pub last_officer: Option<Arc<str>>,
    /// The latest reason given (refusal, supplement request, apology, withdrawal, stop).
    pub reason: Option<String>,
    /// Form data by component or task id. Shared between copies of a state (a decision copies
    /// the state it decides on, and most leave the data alone): changed copy-on-write, each
    /// form shared too, so adding one copies none of the others.
    pub data: Arc<BTreeMap<String, Arc<Value>>>,
    /// Shared copy-on-write like `data`.
    pub documents: Arc<Vec<DocumentRef>>,
    /// Where the dossier is: token → step.
    pub tokens: BTreeMap<u32, Arc<str>>,
    pub next_token: u32,
    /// Tokens waiting at each join.
    pub joins: BTreeMap<String, BTreeSet<u32>>,
    /// Open tasks by id, shared copy-on-write like `jobs`: the map, and each task in it.
    pub tasks: Arc<BTreeMap<Arc<str>, Arc<Task>>>,
    pub tasks_opened: u32,
    /// Open jobs by id (pending, or failed with an incident open), shared copy-on-write like
    /// `data`: the map, and each job in it. A job that finishes moves to `finished_jobs`, so
    /// the map a decision copies stays as small as the work still to do.
    pub jobs: Arc<BTreeMap<Arc<str>, Arc<Job>>>,
    /// Jobs done or cancelled, newest first: a list a new state extends without copying.
    pub finished_jobs: FinishedJobs,
    pub incidents: BTreeMap<String, Incident>,
    /// Shared copy-on-write like `jobs`: the list, and each letter in it (the letters are the
    /// biggest part of a state).
    pub notifications: Arc<Vec<Arc<Notification>>>,
    /// Shared copy-on-write like `data`.
    pub signatures: Arc<Vec<Signature>>,
    pub payments: Vec<Payment>,
}

/// What expressions read of a dossier: its forms and the `dossier` fields.
impl crate::runtime::Facts for Dossier {
    fn forms(&self) -> &BTreeMap<String, Arc<Value>> {
        &self.data
    }

    /// One of the fields of the `dossier` variable of expressions
    /// ([`crate::definition::DOSSIER_FIELDS`]), as text.
    fn field(&self, name: &str) -> Option<String> {
        Some(match name {
            "channel" => self.channel.as_str().to_owned(),
            "owner_type" => crate::wire_name(&self.owner.id.owner_type()),
            "owner_id" => self.owner.id.as_str().to_owned(),
            "agency_code" => self.agency_code.to_string(),
            "procedure_code" => self.procedure_code.to_string(),
            _ => return None,
        })
    }
}

impl Dossier {
    /// What has been paid of a fee, in VND.
    pub fn paid_vnd(&self, fee_code: &str) -> u64 {
        self.payments
            .iter()
            .filter(|p| p.fee_code == fee_code)
            .map(|p| p.amount_vnd)
            .sum()
    }

    /// The agency competent to decide: the receiving one unless the filing named another.
    pub fn competent_agency(&self) -> &Arc<str> {
        self.competent_agency.as_ref().unwrap_or(&self.agency_code)
    }

    /// Folds a whole stream. `None` when the stream does not start with `Filed`.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = (DateTime<Utc>, &'a Event)>,
    ) -> Option<Dossier> {
        let mut iter = events.into_iter();
        let (at, first) = iter.next()?;
        let mut d = Dossier::from_filed(at, first)?;
        for (at, e) in iter {
            d.apply(at, e);
        }
        Some(d)
    }

    /// The state right after `Filed`.
    pub fn from_filed(at: DateTime<Utc>, event: &Event) -> Option<Dossier> {
        let Event::Filed {
            code,
            procedure_code,
            procedure_version,
            procedure_name,
            agency_code,
            competent_agency,
            online_level,
            owner,
            channel,
            data,
            documents,
        } = event
        else {
            return None;
        };
        Some(Dossier {
            code: code.as_str().into(),
            procedure_code: procedure_code.as_str().into(),
            procedure_version: *procedure_version,
            procedure_name: procedure_name.as_str().into(),
            agency_code: agency_code.as_str().into(),
            competent_agency: competent_agency.as_deref().map(Into::into),
            online_level: *online_level,
            owner: Arc::new(Owner::clone(owner)),
            channel: *channel,
            status: Status::Filed,
            seq: 1,
            filed_at: at,
            updated_at: at,
            received_at: None,
            due_at: None,
            promised_at: None,
            processed_at: None,
            returned_at: None,
            closed_at: None,
            end: None,
            overdue: false,
            apology_sent: false,
            paused: None,
            supplement_rounds: 0,
            last_officer: None,
            reason: None,
            data: Arc::new(data.clone()),
            documents: Arc::new(documents.clone()),
            tokens: BTreeMap::new(),
            next_token: 1,
            joins: BTreeMap::new(),
            tasks: Arc::default(),
            tasks_opened: 0,
            jobs: Arc::default(),
            finished_jobs: FinishedJobs::default(),
            incidents: BTreeMap::new(),
            notifications: Arc::default(),
            signatures: Arc::default(),
            payments: Vec::new(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// Applies one event. Total: an event that does not fit the state changes nothing,
    /// since the decision core only emits events that fit.
    pub fn apply(&mut self, at: DateTime<Utc>, event: &Event) {
        self.seq += 1;
        self.updated_at = at;
        match event {
            Event::Filed { .. } => {}
            Event::Advanced { token, to, .. } => {
                self.tokens.insert(*token, Arc::clone(to));
                self.next_token = self.next_token.max(token + 1);
            }
            Event::Forked {
                token, branches, ..
            } => {
                self.tokens.remove(token);
                for (t, step) in branches {
                    self.tokens.insert(*t, step.as_str().into());
                    self.next_token = self.next_token.max(t + 1);
                }
            }
            Event::Arrived { token, join } => {
                self.tokens.remove(token);
                self.joins.entry(join.clone()).or_default().insert(*token);
            }
            Event::Joined { join, token } => {
                self.joins.remove(join);
                self.tokens.insert(*token, join.as_str().into());
                self.next_token = self.next_token.max(token + 1);
            }
            Event::TaskOpened {
                task,
                step,
                name,
                role,
                agency,
                token,
                due_at,
            } => {
                self.tasks_opened += 1;
                // The key is the task's own id: shared, not copied, as a copied map's key.
                Arc::make_mut(&mut self.tasks).insert(
                    Arc::clone(task),
                    Arc::new(Task {
                        id: Arc::clone(task),
                        step: Arc::clone(step),
                        name: Arc::clone(name),
                        role: Arc::clone(role),
                        agency: Arc::clone(agency),
                        token: *token,
                        opened_at: at,
                        due_at: *due_at,
                        claimed_by: None,
                        claimed_by_name: None,
                    }),
                );
            }
            Event::TaskClaimed { task, by, by_name } => {
                if let Some(t) = shared_entry_mut(&mut self.tasks, task) {
                    t.claimed_by = Some(by.clone());
                    t.claimed_by_name = Some(by_name.clone());
                }
                self.last_officer = Some(by_name.as_str().into());
                if self.status == Status::Received {
                    self.status = Status::Processing;
                }
            }
            Event::TaskReleased { task } => {
                if let Some(t) = shared_entry_mut(&mut self.tasks, task) {
                    t.claimed_by = None;
                    t.claimed_by_name = None;
                }
            }
            Event::TaskCompleted {
                task, data, reason, ..
            } => {
                if let Some(t) = remove_shared(&mut self.tasks, task) {
                    if let Some(d) = data {
                        Arc::make_mut(&mut self.data).insert((*t.step).to_owned(), Arc::clone(d));
                    }
                    self.tokens.remove(&t.token);
                }
                if reason.is_some() {
                    self.reason.clone_from(reason);
                }
            }
            Event::TaskCancelled { task } => {
                remove_shared(&mut self.tasks, task);
            }
            Event::Received { due_at } => {
                self.received_at = Some(at);
                self.due_at = Some(*due_at);
                self.status = Status::Received;
            }
            Event::Processed => {
                self.processed_at = Some(at);
                self.status = Status::Processed;
            }
            Event::ResultReturned => {
                self.returned_at = Some(at);
                self.status = Status::Returned;
            }
            Event::ResultSigned {
                result_code,
                number,
                document,
                signer,
            } => Arc::make_mut(&mut self.signatures).push(Signature {
                result_code: result_code.clone(),
                number: number.clone(),
                document: document.as_deref().cloned(),
                signer: signer.clone(),
                at,
            }),
            Event::HookScheduled {
                job,
                token,
                step,
                call,
                args,
                retry,
                run_at,
            } => {
                if let Some(t) = token {
                    self.tokens.remove(t);
                }
                let id: Arc<str> = job.as_str().into();
                Arc::make_mut(&mut self.jobs).insert(
                    Arc::clone(&id),
                    Arc::new(Job {
                        id,
                        kind: JobKind::Hook,
                        call: call.clone(),
                        args: args.clone(),
                        step: step.clone(),
                        token: *token,
                        state: JobState::Pending,
                        attempts: 0,
                        retry: *retry,
                        run_at: *run_at,
                        last_error: None,
                    }),
                );
            }
            Event::TimerScheduled {
                job,
                token,
                step,
                fire_at,
            } => {
                self.tokens.remove(token);
                let id: Arc<str> = job.as_str().into();
                Arc::make_mut(&mut self.jobs).insert(
                    Arc::clone(&id),
                    Arc::new(Job {
                        id,
                        kind: JobKind::Timer,
                        call: "timer".into(),
                        args: Arc::default(),
                        step: Some(step.clone()),
                        token: Some(*token),
                        state: JobState::Pending,
                        attempts: 0,
                        retry: RetryPolicy::default(),
                        run_at: *fire_at,
                        last_error: None,
                    }),
                );
            }
            Event::HookSucceeded { job, attempt, .. } => self.finish_job(job, |j| {
                j.state = JobState::Done;
                j.attempts = *attempt;
                j.last_error = None;
            }),
            Event::TimerFired { job } => self.finish_job(job, |j| {
                j.state = JobState::Done;
                j.attempts += 1;
            }),
            Event::HookFailed {
                job,
                attempt,
                error,
                retry_at,
            } => {
                if let Some(j) = shared_entry_mut(&mut self.jobs, job) {
                    j.attempts = *attempt;
                    j.last_error = Some(error.clone());
                    match retry_at {
                        Some(r) => j.run_at = *r,
                        None => j.state = JobState::Failed,
                    }
                }
            }
            Event::IncidentOpened {
                incident,
                job,
                error,
            } => {
                self.incidents.insert(
                    incident.clone(),
                    Incident {
                        id: incident.clone(),
                        job: job.clone(),
                        error: error.clone(),
                        opened_at: at,
                        resolution: None,
                        resolved_by: None,
                        resolved_at: None,
                        kind: IncidentKind::Hook,
                        step: None,
                        token: None,
                        expression: None,
                        values: BTreeMap::new(),
                    },
                );
            }
            Event::IncidentResolved {
                incident,
                resolution,
                ..
            } => {
                if let Some(i) = self.incidents.get_mut(incident) {
                    i.resolution = Some(resolution.clone());
                    i.resolved_at = Some(at);
                    match resolution {
                        IncidentResolution::Retried => {
                            if let Some(j) = shared_entry_mut(&mut self.jobs, &i.job) {
                                j.state = JobState::Pending;
                                j.attempts = 0;
                                j.run_at = at;
                            }
                        }
                        IncidentResolution::Skipped => {
                            let job = i.job.clone();
                            self.finish_job(&job, |j| j.state = JobState::Done);
                        }
                    }
                }
            }
            Event::NotificationRecorded { notification } => {
                Arc::make_mut(&mut self.notifications).push(Arc::new(notification.clone()));
            }
            Event::SupplementRequested {
                reason,
                missing,
                remaining_minutes,
            } => {
                self.paused = Some(Pause {
                    since: at,
                    remaining_minutes: *remaining_minutes,
                    missing: missing.clone(),
                    previous_status: self.status,
                    documents_brought: 0,
                });
                self.supplement_rounds += 1;
                self.reason = Some(reason.clone());
                self.status = Status::SupplementRequested;
            }
            Event::Supplemented {
                data,
                documents,
                due_at,
            } => {
                if let Some(p) = self.paused.take() {
                    self.status = p.previous_status;
                }
                for (k, v) in data {
                    Arc::make_mut(&mut self.data).insert(k.clone(), Arc::clone(v));
                }
                Arc::make_mut(&mut self.documents).extend(documents.iter().cloned());
                if due_at.is_some() {
                    self.due_at = *due_at;
                }
            }
            Event::DocumentAttached { document } | Event::PaperReused { document, .. } => {
                Arc::make_mut(&mut self.documents).push(DocumentRef::clone(document));
                self.document_brought();
            }
            Event::DocumentReplaced { replaced, document } => {
                let documents = Arc::make_mut(&mut self.documents);
                documents.retain(|d| &d.id != replaced);
                documents.push(DocumentRef::clone(document));
                self.document_brought();
            }
            Event::PaymentRecorded {
                fee_code,
                amount_vnd,
                receipt,
                channel,
            } => self.payments.push(Payment {
                fee_code: fee_code.clone(),
                amount_vnd: *amount_vnd,
                receipt: receipt.clone(),
                at,
                channel: *channel,
            }),
            Event::Withdrawn { reason } => {
                self.close(at);
                self.reason = Some(reason.clone());
                self.status = Status::Withdrawn;
            }
            Event::Stopped { reason } => {
                self.close(at);
                self.reason = Some(reason.clone());
                self.status = Status::Stopped;
            }
            Event::ApologySent { reason, new_due_at } => {
                self.apology_sent = true;
                self.promised_at = Some(*new_due_at);
                self.reason = Some(reason.clone());
            }
            Event::OverdueFlagged { .. } => self.overdue = true,
            Event::Ended { outcome, .. } => {
                self.close(at);
                self.end = Some(*outcome);
                self.status = match outcome {
                    EndOutcome::Completed if self.returned_at.is_some() => Status::Returned,
                    EndOutcome::Completed => Status::Processed,
                    EndOutcome::Refused if self.received_at.is_none() => Status::NotReceived,
                    // Refused after examination: the agency decided, and its answer is the
                    // written refusal with its reasons. The dossier is processed (9, Đã xử lý
                    // xong, finished at that answer); Dừng xử lý (8) is processing stopped
                    // without a decision.
                    EndOutcome::Refused => {
                        self.processed_at.get_or_insert(at);
                        Status::Processed
                    }
                    EndOutcome::Stopped => Status::Stopped,
                };
            }
            Event::PaymentRequested { .. } => self.status = Status::PaymentRequested,
            Event::PaymentsSettled => {
                if self.status == Status::PaymentRequested {
                    self.status = Status::Processed;
                }
            }
            Event::GuardIncidentOpened {
                incident,
                kind,
                step,
                token,
                expression,
                values,
                error,
            } => {
                self.incidents.insert(
                    incident.clone(),
                    Incident {
                        id: incident.clone(),
                        job: String::new(),
                        error: error.clone(),
                        opened_at: at,
                        resolution: None,
                        resolved_by: None,
                        resolved_at: None,
                        kind: *kind,
                        step: step.clone(),
                        token: *token,
                        expression: expression.clone(),
                        values: values.clone(),
                    },
                );
            }
            Event::DataCorrected { data, .. } => {
                for (k, v) in data {
                    Arc::make_mut(&mut self.data).insert(k.clone(), Arc::clone(v));
                }
            }
        }
    }

    /// A document came in: while a supplement is awaited, it is part of what the owner brings.
    fn document_brought(&mut self) {
        if let Some(p) = &mut self.paused {
            p.documents_brought += 1;
        }
    }

    fn close(&mut self, at: DateTime<Utc>) {
        self.closed_at = Some(at);
        self.tokens.clear();
        self.joins.clear();
        self.paused = None;
        // Steps no token will reach again; notifications outside the graph still go out.
        let cancelled: Vec<Arc<str>> = self
            .jobs
            .values()
            .filter(|j| j.token.is_some() && j.state == JobState::Pending)
            .map(|j| j.id.clone())
            .collect();
        for id in cancelled {
            self.finish_job(&id, |j| j.state = JobState::Cancelled);
        }
    }

    /// Moves an open job to the finished ones, changed by `finish`.
    fn finish_job(&mut self, id: &str, finish: impl FnOnce(&mut Job)) {
        if let Some(job) = remove_shared(&mut self.jobs, id) {
            let mut job = Arc::unwrap_or_clone(job);
            finish(&mut job);
            self.finished_jobs.push(Arc::new(job));
        }
    }

    /// A job by id, open or finished.
    pub fn job(&self, id: &str) -> Option<&Arc<Job>> {
        self.jobs
            .get(id)
            .or_else(|| self.finished_jobs.iter().find(|j| &*j.id == id))
    }

    /// Every job the dossier scheduled: the open ones by id, then the finished ones, newest
    /// first.
    pub fn all_jobs(&self) -> impl Iterator<Item = &Arc<Job>> {
        self.jobs.values().chain(self.finished_jobs.iter())
    }

    /// How many jobs the dossier has scheduled; the next is numbered after them.
    pub fn jobs_scheduled(&self) -> usize {
        self.jobs.len() + self.finished_jobs.len()
    }
}

/// Finished jobs, newest first: each state shares the list of the state it came from and
/// adds to its head, so finishing a job copies nothing (a map of every job would be copied
/// whole each time one changed). Compared, serialized and deserialized as a sequence.
#[derive(Clone, Default)]
pub struct FinishedJobs(Option<Arc<FinishedNode>>);

struct FinishedNode {
    job: Arc<Job>,
    len: usize,
    next: Option<Arc<FinishedNode>>,
}

impl FinishedJobs {
    pub fn push(&mut self, job: Arc<Job>) {
        let next = self.0.take();
        let len = next.as_ref().map_or(0, |n| n.len) + 1;
        self.0 = Some(Arc::new(FinishedNode { job, len, next }));
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |n| n.len)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Job>> {
        std::iter::successors(self.0.as_deref(), |n| n.next.as_deref()).map(|n| &n.job)
    }
}

impl Drop for FinishedJobs {
    // Unlinked one node at a time: dropping a long list recursively could exhaust the stack.
    fn drop(&mut self) {
        let mut next = self.0.take();
        while let Some(node) = next {
            next = match Arc::try_unwrap(node) {
                Ok(mut node) => node.next.take(),
                Err(_) => None,
            };
        }
    }
}

impl PartialEq for FinishedJobs {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for FinishedJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for FinishedJobs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for FinishedJobs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let newest_first = Vec::<Arc<Job>>::deserialize(deserializer)?;
        let mut list = FinishedJobs::default();
        for job in newest_first.into_iter().rev() {
            list.push(job);
        }
        Ok(list)
    }
}

/// An entry of a shared map (tasks, jobs) to change: the map, then the entry, copied first if
/// another state shares them, and neither copied when the map does not hold `id`.
fn shared_entry_mut<'a, K, V>(map: &'a mut Arc<BTreeMap<K, Arc<V>>>, id: &str) -> Option<&'a mut V>
where
    K: std::borrow::Borrow<str> + Ord + Clone,
    V: Clone,
{
    if !map.contains_key(id) {
        return None;
    }
    Arc::make_mut(map).get_mut(id).map(Arc::make_mut)
}

/// Removes an entry of a shared map, copying the map first if another state shares it (and
/// only if it holds the entry).
fn remove_shared<K, V>(map: &mut Arc<BTreeMap<K, Arc<V>>>, id: &str) -> Option<Arc<V>>
where
    K: std::borrow::Borrow<str> + Ord + Clone,
{
    if !map.contains_key(id) {
        return None;
    }
    Arc::make_mut(map).remove(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> Arc<Job> {
        Arc::new(Job {
            id: format!("j{n}").into(),
            kind: JobKind::Hook,
            call: "notify".into(),
            args: Arc::default(),
            step: None,
            token: None,
            state: JobState::Done,
            attempts: 1,
            retry: RetryPolicy::default(),
            run_at: DateTime::<Utc>::UNIX_EPOCH,
            last_error: None,
        })
    }

    #[test]
    fn finished_jobs_extend_a_shared_list_without_changing_it() {
        let mut older = FinishedJobs::default();
        older.push(job(1));
        older.push(job(2));
        let mut newer = older.clone();
        newer.push(job(3));
        let ids = |l: &FinishedJobs| l.iter().map(|j| j.id.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ids(&older),
            ["j2", "j1"],
            "the state decided on keeps its list"
        );
        assert_eq!(ids(&newer), ["j3", "j2", "j1"], "newest first");
        assert_eq!((older.len(), newer.len()), (2, 3));
        assert_ne!(older, newer);

        // Serialized oldest last, and read back the same.
        let json = serde_json::to_value(&newer).unwrap();
        assert_eq!(json[0]["id"], "j3");
        let back: FinishedJobs = serde_json::from_value(json).unwrap();
        assert_eq!(back, newer);
        assert_eq!(ids(&back), ids(&newer));
    }

    #[test]
    fn a_long_list_of_finished_jobs_drops_without_exhausting_the_stack() {
        let one = job(1);
        let mut list = FinishedJobs::default();
        for _ in 0..1_000_000 {
            list.push(Arc::clone(&one));
        }
        let shared = list.clone();
        drop(list);
        assert_eq!(
            shared.len(),
            1_000_000,
            "a list still shared survives the drop"
        );
        drop(shared);
        assert_eq!(Arc::strong_count(&one), 1);
    }
}
