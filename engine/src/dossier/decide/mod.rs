//! The decision core: a command and the current state in, events out. No IO.
//!
//! Each event is applied to a scratch copy of the state as it is emitted, so the runtime
//! that advances tokens through automatic steps (decisions, forks, joins, hooks, timers,
//! ends) always sees the state the events so far produce.
//!
//! Here: filing and the commands; beside it `tokens` (the step graph's runtime), `access`
//! (who may act), `fees` (payments) and `guards` (condition and stuck incidents).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::command::{Command, CommandError, Filing, HookOutcome, IncidentAction};
use super::event::{DocumentRef, Event, IncidentKind, IncidentResolution};
use super::state::{Dossier, Incident, JobKind, JobState, Task};
use super::types::{Actor, Channel, OnlineLevel, Status};
use crate::calendar::Calendar;
use crate::definition::model::RECEIVING;
use crate::definition::{Milestone, RetryPolicy, Step};
use crate::runtime::CompiledProcedure;

mod access;
mod fees;
mod guards;
mod tokens;
#[allow(unused_imports)]
use {access::*, fees::*, guards::*, tokens::*};

/// What a decision needs besides the state: the procedure version the dossier runs on,
/// the calendar, the time and who asks.
pub struct Context<'a> {
    pub procedure: &'a CompiledProcedure,
    pub calendar: &'a Calendar,
    pub now: DateTime<Utc>,
    pub actor: &'a Actor,
    /// Whether every change of the dossier's status is synced to the national portal (a
    /// `portal.sync_dossier` job outside the graph).
    pub sync_status: bool,
}

/// Events to append, with the state they lead to.
pub struct Decision {
    pub events: Vec<Event>,
    pub state: Dossier,
}

struct Emitter<'a> {
    ctx: &'a Context<'a>,
    state: Dossier,
    events: Vec<Event>,
    /// The forms the command brings (filing, task, supplement or corrected data): a timer
    /// date read from one of them is refused for its sender to correct.
    brought: Vec<String>,
}

impl Emitter<'_> {
    fn emit(&mut self, e: Event) {
        self.state.apply(self.ctx.now, &e);
        self.events.push(e);
    }

    fn finish(self) -> Decision {
        Decision {
            events: self.events,
            state: self.state,
        }
    }
}

/// Decides a new dossier. `code` was allocated by the store for the agency and day.
pub fn decide_filing(
    ctx: &Context<'_>,
    code: &str,
    filing: &Filing,
) -> Result<Decision, CommandError> {
    let p = ctx.procedure.procedure();
    match ctx.actor {
        Actor::Citizen { owner_id, .. } => {
            if owner_id != &filing.owner.id {
                return Err(CommandError::forbidden(
                    "a citizen files only for themselves",
                ));
            }
            if filing.channel != Channel::Online {
                return Err(CommandError::forbidden(
                    "citizens file online; the one-stop desk files in person",
                ));
            }
        }
        Actor::Officer { agency, .. } => {
            if agency != &filing.agency_code {
                return Err(CommandError::forbidden(
                    "an officer files only at their own agency",
                ));
            }
            if filing.channel == Channel::Online {
                return Err(CommandError::forbidden(
                    "online dossiers are filed by their owner",
                ));
            }
        }
        _ => {
            return Err(CommandError::forbidden(
                "only citizens and officers file dossiers",
            ));
        }
    }
    if filing.owner.name.trim().is_empty() {
        return Err(CommandError::input_at(
            "/owner/name",
            "the owner's name is empty",
        ));
    }
    check_agency_code(&filing.agency_code)?;
    for id in filing.data.keys() {
        match p.component(id) {
            Some(c) if c.form.is_some() => {}
            Some(_) => {
                return Err(CommandError::input_at(
                    data_pointer(id),
                    format!("component `{id}` takes documents, not form data"),
                ));
            }
            None => {
                return Err(CommandError::input_at(
                    data_pointer(id),
                    format!("`{id}` is not a component of procedure {}", p.code),
                ));
            }
        }
    }
    validate_forms(ctx.procedure, &filing.data)?;
    for d in &filing.documents {
        check_document(ctx.procedure, d)?;
    }
    let filed = Event::Filed {
        code: code.to_owned(),
        procedure_code: p.code.clone(),
        procedure_version: p.version,
        procedure_name: p.name.clone(),
        agency_code: filing.agency_code.clone(),
        competent_agency: filing
            .competent_agency
            .clone()
            .filter(|c| *c != filing.agency_code),
        online_level: (filing.channel == Channel::Online)
            .then(|| p.online.unwrap_or(OnlineLevel::Partial)),
        owner: Box::new(filing.owner.clone()),
        channel: filing.channel,
        data: shared_forms(&filing.data),
        documents: filing.documents.clone(),
    };
    let state = Dossier::from_filed(ctx.now, &filed)
        .ok_or_else(|| CommandError::state("internal: filing produced no state"))?;
    // Forms that are required now must be filled in at filing; documents are checked when
    // the desk receives the dossier.
    let missing: Vec<String> = p
        .components
        .iter()
        .filter(|c| c.form.is_some() && is_required(ctx.procedure, c, &state))
        .filter(|c| !filing.data.contains_key(&c.id))
        .map(|c| c.id.clone())
        .collect();
    if !missing.is_empty() {
        return Err(CommandError::MissingComponents {
            components: missing,
        });
    }
    let mut em = Emitter {
        ctx,
        state,
        events: vec![filed],
        brought: filing.data.keys().cloned().collect(),
    };
    let first = p
        .steps
        .first()
        .map(|s| s.id().to_owned())
        .unwrap_or_default();
    advance(&mut em, 1, None, &first, "start")?;
    raise_if_stuck(&mut em);
    if ctx.sync_status {
        system_job(&mut em, "portal.sync_dossier", BTreeMap::new());
    }
    Ok(em.finish())
}

/// Decides a command on an existing dossier.
pub fn decide(
    ctx: &Context<'_>,
    state: &Dossier,
    command: &Command,
) -> Result<Decision, CommandError> {
    let mut em = Emitter {
        ctx,
        state: state.clone(),
        // A decision emits up to about eight events: one allocation, no regrowth (each
        // regrowth copied the events emitted so far).
        events: Vec::with_capacity(8),
        brought: brought_forms(state, command),
    };
    let system_only = matches!(
        command,
        Command::RecordHookOutcome { .. } | Command::FireTimer { .. } | Command::FlagOverdue
    );
    if system_only && ctx.actor != &Actor::System {
        return Err(CommandError::forbidden(
            "only the engine records job outcomes and timers",
        ));
    }
    if matches!(ctx.actor, Actor::Auditor { .. }) {
        return Err(CommandError::forbidden(
            "auditors read; they never change a dossier",
        ));
    }
    let closed_ok = matches!(
        command,
        Command::RecordHookOutcome { .. } | Command::ResolveIncident { .. }
    );
    if state.is_closed() && !closed_ok {
        return Err(CommandError::state(format!(
            "dossier {} is closed ({})",
            state.code,
            state.status.label()
        )));
    }
    match command {
        Command::ClaimTask { task } => {
            let t = open_task(ctx.procedure, state, task)?;
            may_work_on(ctx, state, t)?;
            not_paused(state)?;
            match &t.claimed_by {
                Some(by) if by == ctx.actor.id() => {
                    return Err(CommandError::state(format!("task {task} is already yours")));
                }
                Some(_) => {
                    return Err(CommandError::state(format!(
                        "task {task} is claimed by {}",
                        t.claimed_by_name.as_deref().unwrap_or("another officer")
                    )));
                }
                None => em.emit(Event::TaskClaimed {
                    task: task.clone(),
                    by: ctx.actor.id().to_owned(),
                    by_name: ctx.actor.name().to_owned(),
                }),
            }
        }
        Command::ReleaseTask { task } => {
            let t = open_task(ctx.procedure, state, task)?;
            may_work_on(ctx, state, t)?;
            if t.claimed_by.as_deref() != Some(ctx.actor.id()) {
                return Err(CommandError::state(format!(
                    "task {task} is not claimed by you"
                )));
            }
            em.emit(Event::TaskReleased { task: task.clone() });
        }
        Command::CompleteTask {
            task,
            outcome,
            data,
            reason,
        } => complete_task(&mut em, task, outcome.clone(), data.clone(), reason.clone())?,
        Command::Receive => {
            let task = milestone_task(ctx, state, Milestone::Received)?;
            complete_task(&mut em, &task, Some("accept".into()), None, None)?;
        }
        Command::RefuseReception { reason } => {
            non_empty(reason, "reason")?;
            let task = milestone_task(ctx, state, Milestone::Received)?;
            complete_task(
                &mut em,
                &task,
                Some("refuse".into()),
                None,
                Some(reason.clone()),
            )?;
        }
        Command::ReturnResult => {
            let task = milestone_task(ctx, state, Milestone::Returned)?;
            complete_task(&mut em, &task, None, None, None)?;
        }
        Command::ReusePaper {
            component,
            paper,
            owner_confirmed,
        } => reuse_paper(&mut em, component, paper, *owner_confirmed)?,
        Command::RequestSupplement { reason, missing } => {
            non_empty(reason, "reason")?;
            not_paused(state)?;
            let holds_task = state
                .tasks
                .values()
                .any(|t| t.claimed_by.as_deref() == Some(ctx.actor.id()));
            if !holds_task {
                officer_of(ctx, state)?;
                return Err(CommandError::state(
                    "claim a task of this dossier first: the officer working on it requests a supplement",
                ));
            }
            let p = ctx.procedure.procedure();
            for m in missing {
                if p.component(m).is_none() {
                    return Err(CommandError::input(format!(
                        "`{m}` is not a component of this procedure"
                    )));
                }
            }
            let remaining = state.due_at.map(|due| {
                if ctx.procedure.counts_working_time() {
                    ctx.calendar.working_minutes_between(ctx.now, due)
                } else {
                    (due - ctx.now).num_minutes().max(0)
                }
            });
            em.emit(Event::SupplementRequested {
                reason: reason.clone(),
                missing: missing.clone(),
                remaining_minutes: remaining,
            });
            notify(&mut em, "bo_sung");
        }
        Command::Supplement { data, documents } => {
            acts_for_owner(ctx, state)?;
            let Some(pause) = &state.paused else {
                return Err(CommandError::state("no supplement was requested"));
            };
            // Documents come attached beforehand (or with the command): a supplement of
            // documents alone needs no form data sent again.
            if data.is_empty() && documents.is_empty() && pause.documents_brought == 0 {
                return Err(CommandError::input_at(
                    "/data",
                    "a supplement brings form data or documents: attach the documents asked for \
                     (POST /api/v1/dossiers/{code}/documents) or send the corrected forms in `data`",
                ));
            }
            let p = ctx.procedure.procedure();
            for id in data.keys() {
                if p.component(id).and_then(|c| c.form.as_ref()).is_none() {
                    return Err(CommandError::input_at(
                        data_pointer(id),
                        format!("`{id}` is not a form component of this procedure"),
                    ));
                }
            }
            validate_forms(ctx.procedure, data)?;
            for d in documents {
                check_document(ctx.procedure, d)?;
            }
            let due_at = pause.remaining_minutes.map(|m| {
                if ctx.procedure.counts_working_time() {
                    ctx.calendar.add_working_minutes(ctx.now, m)
                } else {
                    ctx.now + chrono::Duration::minutes(m)
                }
            });
            em.emit(Event::Supplemented {
                data: shared_forms(data),
                documents: documents.clone(),
                due_at,
            });
        }
        Command::Withdraw { reason } => {
            non_empty(reason, "reason")?;
            acts_for_owner(ctx, state)?;
            if state.processed_at.is_some() {
                return Err(CommandError::state(
                    "the result is ready: a processed dossier cannot be withdrawn",
                ));
            }
            cancel_tasks(&mut em);
            em.emit(Event::Withdrawn {
                reason: reason.clone(),
            });
        }
        Command::Stop { reason } => {
            non_empty(reason, "reason")?;
            officer_of(ctx, state)?;
            cancel_tasks(&mut em);
            em.emit(Event::Stopped {
                reason: reason.clone(),
            });
        }
        Command::RecordPayment {
            fee_code,
            amount_vnd,
            receipt,
            channel,
        } => record_payment(&mut em, fee_code, *amount_vnd, receipt, *channel)?,
        Command::AttachDocument { document } => {
            may_change_documents(ctx, state)?;
            check_document(ctx.procedure, document)?;
            if state.documents.iter().any(|d| d.id == document.id) {
                return Err(CommandError::state(format!(
                    "document {} is already attached",
                    document.id
                )));
            }
            em.emit(Event::DocumentAttached {
                document: Box::new(document.clone()),
            });
        }
        Command::ReplaceDocument { replaced, document } => {
            may_change_documents(ctx, state)?;
            check_document(ctx.procedure, document)?;
            if !state.documents.iter().any(|d| &d.id == replaced) {
                return Err(CommandError::not_found(format!("document {replaced}")));
            }
            em.emit(Event::DocumentReplaced {
                replaced: replaced.clone(),
                document: Box::new(document.clone()),
            });
        }
        Command::SignResult {
            result_code,
            number,
            document,
        } => {
            let p = ctx.procedure.procedure();
            let task = state.tasks.values().find(|t| {
                t.claimed_by.as_deref() == Some(ctx.actor.id())
                    && matches!(p.step(&t.step), Some(Step::UserTask(u)) if u.signs.as_deref() == Some(result_code.as_str()))
            });
            if task.is_none() {
                officer_of(ctx, state)?;
                return Err(CommandError::state(format!(
                    "claim the task that signs {result_code} first"
                )));
            }
            if state
                .signatures
                .iter()
                .any(|s| &s.result_code == result_code)
            {
                return Err(CommandError::state(format!(
                    "{result_code} is already signed"
                )));
            }
            if let Some(d) = document {
                check_sha256(&d.sha256)?;
            }
            em.emit(Event::ResultSigned {
                result_code: result_code.clone(),
                number: number.clone(),
                document: document.clone().map(Box::new),
                signer: ctx.actor.name().to_owned(),
            });
        }
        Command::RecordHookOutcome {
            job,
            attempt,
            outcome,
        } => record_hook_outcome(&mut em, job, *attempt, outcome)?,
        Command::FireTimer { job } => {
            let j = state
                .job(job)
                .filter(|j| j.kind == JobKind::Timer)
                .ok_or_else(|| CommandError::not_found(format!("timer {job}")))?;
            if j.state != JobState::Pending {
                return Err(CommandError::StaleJob {
                    job: job.clone(),
                    attempt: j.attempts + 1,
                });
            }
            if j.run_at > ctx.now {
                return Err(CommandError::state(format!(
                    "timer {job} fires at {}",
                    j.run_at
                )));
            }
            let (token, step) = (j.token.unwrap_or(0), j.step.clone().unwrap_or_default());
            em.emit(Event::TimerFired { job: job.clone() });
            let next = match ctx.procedure.procedure().step(&step) {
                Some(Step::Timer(t)) => t.next.clone(),
                _ => return Err(CommandError::state(format!("step {step} is not a timer"))),
            };
            advance(&mut em, token, Some(&step), &next, "timer fired")?;
        }
        Command::ResolveIncident {
            incident,
            action,
            note,
            data,
        } => {
            if !matches!(ctx.actor, Actor::Admin { .. }) {
                return Err(CommandError::forbidden(
                    "incidents are resolved by administrators",
                ));
            }
            let i = state
                .incidents
                .get(incident)
                .ok_or_else(|| CommandError::not_found(format!("incident {incident}")))?;
            if i.resolution.is_some() {
                return Err(CommandError::state(format!(
                    "incident {incident} is already resolved"
                )));
            }
            if i.kind != IncidentKind::Condition && !data.is_empty() {
                return Err(CommandError::input_at(
                    "/data",
                    "corrected data goes with the retry of a condition incident",
                ));
            }
            if i.kind != IncidentKind::Hook {
                resolve_guard_incident(&mut em, i, *action, note, data)?;
                // An acknowledged stuck dossier is not raised again at once.
                return Ok(conclude(em, state, i.kind != IncidentKind::Stuck));
            }
            let job = state
                .job(&i.job)
                .cloned()
                .ok_or_else(|| CommandError::not_found(format!("job {}", i.job)))?;
            let resolution = match action {
                IncidentAction::Retry => IncidentResolution::Retried,
                IncidentAction::Skip => IncidentResolution::Skipped,
            };
            em.emit(Event::IncidentResolved {
                incident: incident.clone(),
                resolution,
                note: note.clone(),
            });
            if *action == IncidentAction::Skip && !state.is_closed() {
                continue_after_hook(&mut em, &job.step, job.token, "skipped by an administrator")?;
            }
        }
        Command::Apologize { reason, new_due_at } => {
            non_empty(reason, "reason")?;
            if ctx.actor != &Actor::System {
                officer_of(ctx, state)?;
            }
            let Some(due) = state.due_at else {
                return Err(CommandError::state("the dossier has no due date yet"));
            };
            if *new_due_at <= due {
                return Err(CommandError::input(
                    "the new date must be after the due date",
                ));
            }
            em.emit(Event::ApologySent {
                reason: reason.clone(),
                new_due_at: *new_due_at,
            });
            notify(&mut em, "xin_loi");
        }
        Command::FlagOverdue => match state.due_at {
            Some(due) if due < ctx.now && !state.overdue && state.paused.is_none() => {
                em.emit(Event::OverdueFlagged { due_at: due });
            }
            _ => return Err(CommandError::state("the dossier is not overdue")),
        },
    }
    Ok(conclude(em, state, true))
}

/// The end of every decision on an existing dossier: the stuck guard, then the status sync.
fn conclude(mut em: Emitter<'_>, before: &Dossier, check_stuck: bool) -> Decision {
    if check_stuck {
        raise_if_stuck(&mut em);
    }
    // The portal follows the status: each change is synced, the latest state winning by
    // its sequence number, so a late retry never overwrites a newer status.
    if em.ctx.sync_status && em.state.status != before.status {
        system_job(&mut em, "portal.sync_dossier", BTreeMap::new());
    }
    em.finish()
}

fn non_empty(s: &str, what: &str) -> Result<(), CommandError> {
    if s.trim().is_empty() {
        return Err(CommandError::input(format!("the {what} is empty")));
    }
    Ok(())
}

fn check_agency_code(code: &str) -> Result<(), CommandError> {
    let ok = !code.is_empty()
        && code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'.');
    if !ok {
        return Err(CommandError::input_at(
            "/agency_code",
            format!("`{code}` is not an agency code like 000.00.01.H59"),
        ));
    }
    Ok(())
}

fn check_sha256(h: &str) -> Result<(), CommandError> {
    if h.len() != 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(CommandError::input(
            "a document's sha256 is 64 lower-case hex digits",
        ));
    }
    Ok(())
}

fn check_document(p: &CompiledProcedure, d: &DocumentRef) -> Result<(), CommandError> {
    if p.procedure().component(&d.component).is_none() {
        return Err(CommandError::input(format!(
            "`{}` is not a component of this procedure",
            d.component
        )));
    }
    if d.id.trim().is_empty() || d.name.trim().is_empty() {
        return Err(CommandError::input("a document needs an id and a name"));
    }
    check_sha256(&d.sha256)
}

/// `/data/{form}`: a form as a filing or a supplement carries it.
fn data_pointer(form: &str) -> String {
    ["/data/", form].concat()
}

/// `data.{form}.{field}` and nothing else: the form and field an expression reads.
fn form_field(expr: &str) -> Option<(&str, &str)> {
    let mut parts = expr.trim().split('.');
    let (Some("data"), Some(form), Some(field), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    (ident(form) && ident(field)).then_some((form, field))
}

/// A task completion carries the task's own form as `data`: violations of that form point
/// at `/data/...`, not at `/data/{task}/...`.
fn task_form_error(e: CommandError, step: &str) -> CommandError {
    match e {
        CommandError::InvalidForm { mut violations } => {
            for v in violations.iter_mut().filter(|v| v.form == step) {
                v.pointer = ["/data", v.path.as_str()].concat();
            }
            CommandError::InvalidForm { violations }
        }
        other => other,
    }
}

fn validate_forms(
    p: &CompiledProcedure,
    data: &BTreeMap<String, Value>,
) -> Result<(), CommandError> {
    let violations: Vec<_> = data
        .iter()
        .flat_map(|(id, value)| p.validate_form(id, value))
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(CommandError::InvalidForm { violations })
    }
}

fn is_required(p: &CompiledProcedure, c: &crate::definition::Component, state: &Dossier) -> bool {
    match &c.required_when {
        Some(cond) => p.holds(cond, state),
        None => c.required,
    }
}

fn open_task<'s>(
    p: &CompiledProcedure,
    state: &'s Dossier,
    task: &str,
) -> Result<&'s Task, CommandError> {
    if let Some(t) = state.tasks.get(task) {
        return Ok(t);
    }
    if was_opened(p, state, task) {
        return Err(CommandError::TaskNotOpen {
            task: task.to_owned(),
            dossier: state.code.to_string(),
        });
    }
    Err(CommandError::not_found(format!(
        "open task {task} on dossier {}",
        state.code
    )))
}

/// Whether `task` names a task this dossier opened: `{user task step}.{n}`, with `n` one
/// of the task numbers handed out so far (tasks are numbered in the order they open).
fn was_opened(p: &CompiledProcedure, state: &Dossier, task: &str) -> bool {
    let Some((step, n)) = task.rsplit_once('.') else {
        return false;
    };
    let numbered = !n.starts_with('0') && n.parse::<u32>().is_ok_and(|n| n <= state.tasks_opened);
    numbered && matches!(p.procedure().step(step), Some(Step::UserTask(_)))
}

fn not_paused(state: &Dossier) -> Result<(), CommandError> {
    if state.paused.is_some() {
        return Err(CommandError::state(
            "the dossier waits for the owner's supplement",
        ));
    }
    Ok(())
}

/// The open task whose step marks `milestone`, which the actor may work on.
fn milestone_task(
    ctx: &Context<'_>,
    state: &Dossier,
    milestone: Milestone,
) -> Result<String, CommandError> {
    let p = ctx.procedure.procedure();
    state
        .tasks
        .values()
        .find(|t| matches!(p.step(&t.step), Some(Step::UserTask(u)) if u.marks == Some(milestone)))
        .map(|t| (*t.id).to_owned())
        .ok_or_else(|| {
            CommandError::state(match milestone {
                Milestone::Received => "the dossier is not waiting at reception",
                Milestone::Returned => "the result is not waiting to be returned",
            })
        })
}

fn complete_task(
    em: &mut Emitter<'_>,
    task: &str,
    outcome: Option<String>,
    data: Option<Value>,
    reason: Option<String>,
) -> Result<(), CommandError> {
    let ctx = em.ctx;
    // Only what is needed after the events change the state: the step (borrowed from the
    // definition, which outlives the decision), the token and whether the task was claimed.
    let (step, token, claimed) = {
        let t = open_task(ctx.procedure, &em.state, task)?;
        may_work_on(ctx, &em.state, t)?;
        not_paused(&em.state)?;
        if let Some(by) = &t.claimed_by
            && by != ctx.actor.id()
        {
            return Err(CommandError::state(format!(
                "task {task} is claimed by {}",
                t.claimed_by_name.as_deref().unwrap_or("another officer")
            )));
        }
        let Some(Step::UserTask(step)) = ctx.procedure.procedure().step(&t.step) else {
            return Err(CommandError::state(format!(
                "step {} is not a user task",
                t.step
            )));
        };
        (step, t.token, t.claimed_by.is_some())
    };
    let next = match (&outcome, step.outcomes.is_empty()) {
        (Some(o), false) => step.outcomes.get(o).map(String::as_str).ok_or_else(|| {
            CommandError::input_at(
                "/outcome",
                format!(
                    "`{o}` is not an outcome of {}; choose one of: {}",
                    step.id,
                    step.outcomes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?,
        (None, false) => {
            return Err(CommandError::input_at(
                "/outcome",
                format!(
                    "task {task} needs an outcome: {}",
                    step.outcomes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        (Some(o), true) if o != "done" => {
            return Err(CommandError::input_at(
                "/outcome",
                format!("task {task} has no outcomes to choose from"),
            ));
        }
        (_, true) => step.next.as_deref().unwrap_or_default(),
    };
    match (&step.form, &data) {
        (Some(_), Some(d)) => {
            let violations = ctx.procedure.validate_form(&step.id, d);
            if !violations.is_empty() {
                return Err(task_form_error(
                    CommandError::InvalidForm { violations },
                    &step.id,
                ));
            }
        }
        (Some(_), None) => {
            return Err(CommandError::input_at(
                "/data",
                format!("task {task} needs its form data"),
            ));
        }
        (None, Some(_)) => {
            return Err(CommandError::input_at(
                "/data",
                format!("task {task} has no form"),
            ));
        }
        (None, None) => {}
    }
    if let Some(code) = &step.signs
        && !em.state.signatures.iter().any(|s| &s.result_code == code)
    {
        return Err(CommandError::state(format!(
            "sign {code} before completing the task"
        )));
    }
    let receives = step.marks == Some(Milestone::Received) && outcome.as_deref() == Some("accept");
    if receives {
        let missing = missing_components(ctx.procedure, &em.state);
        if !missing.is_empty() {
            return Err(CommandError::MissingComponents {
                components: missing,
            });
        }
        unpaid_fee(ctx.procedure, &em.state, Milestone::Received)?;
    }
    if step.marks == Some(Milestone::Returned) {
        unpaid_fee(ctx.procedure, &em.state, Milestone::Returned)?;
    }
    if step.marks == Some(Milestone::Received)
        && outcome.as_deref() == Some("refuse")
        && reason.is_none()
    {
        return Err(CommandError::input_at(
            "/reason",
            "a refusal needs a reason",
        ));
    }
    if !claimed {
        em.emit(Event::TaskClaimed {
            task: task.to_owned(),
            by: ctx.actor.id().to_owned(),
            by_name: ctx.actor.name().to_owned(),
        });
    }
    em.emit(Event::TaskCompleted {
        task: task.to_owned(),
        outcome: outcome.clone(),
        data: data.map(Arc::new),
        reason,
    });
    if receives {
        let due_at = ctx
            .calendar
            .add(ctx.now, ctx.procedure.processing_time_for(&em.state));
        em.emit(Event::Received { due_at });
    }
    if step.signs.is_some() && em.state.processed_at.is_none() {
        em.emit(Event::Processed);
        request_payment(em);
    }
    if step.marks == Some(Milestone::Returned) {
        em.emit(Event::ResultReturned);
    }
    let via = outcome.as_deref().unwrap_or("done");
    // What the steps after it refuse (a timer date) is the task's form's fault when it reads
    // that form: point into the body the officer sent.
    advance(em, token, Some(&step.id), next, via).map_err(|e| task_form_error(e, &step.id))?;
    // A returned result becomes visible to its owner in Kho DL: a job, like every effect
    // outside the dossier's own records.
    let saves = ctx
        .procedure
        .procedure()
        .results
        .iter()
        .any(|r| r.save_to_khodl);
    if step.marks == Some(Milestone::Returned) && saves {
        system_job(em, "khodl.unhide", BTreeMap::new());
    }
    Ok(())
}

/// Components that are required and have neither data nor a document.
fn missing_components(p: &CompiledProcedure, state: &Dossier) -> Vec<String> {
    p.procedure()
        .components
        .iter()
        .filter(|c| is_required(p, c, state))
        .filter(|c| {
            !state.data.contains_key(&c.id) && !state.documents.iter().any(|d| d.component == c.id)
        })
        .map(|c| c.id.clone())
        .collect()
}

/// Attaches an earlier result from Kho DL, after checking it may stand in for the component:
/// the owner's own paper, an accepted result code, still valid, not too old, with consent.
fn reuse_paper(
    em: &mut Emitter<'_>,
    component: &str,
    paper: &super::command::ReusedPaper,
    owner_confirmed: bool,
) -> Result<(), CommandError> {
    let ctx = em.ctx;
    let state = &em.state;
    let consent_by_owner = match ctx.actor {
        Actor::Citizen { .. } => {
            acts_for_owner(ctx, state)?;
            true
        }
        Actor::Officer { .. } => {
            officer_of(ctx, state)?;
            if !owner_confirmed {
                return Err(CommandError::forbidden(
                    "reuse needs the owner's consent: record that the owner confirmed it",
                ));
            }
            false
        }
        _ => {
            return Err(CommandError::forbidden(
                "only the owner or the desk takes papers from Kho DL",
            ));
        }
    };
    if state.processed_at.is_some() {
        return Err(CommandError::state("the dossier is already processed"));
    }
    let Some(c) = ctx.procedure.procedure().component(component) else {
        return Err(CommandError::input(format!(
            "`{component}` is not a component of this procedure"
        )));
    };
    let Some(reuse) = &c.reuse else {
        return Err(CommandError::input(format!(
            "component `{component}` does not take papers from Kho DL"
        )));
    };
    if paper.owner_id != state.owner.id {
        return Err(CommandError::forbidden(
            "this paper belongs to another owner",
        ));
    }
    if !reuse.result_codes.contains(&paper.result_code) {
        return Err(CommandError::input(format!(
            "`{component}` accepts {}, not {}",
            reuse.result_codes.join(", "),
            paper.result_code
        )));
    }
    if paper.valid_until.is_some_and(|v| v < ctx.now) {
        return Err(CommandError::input(format!(
            "paper {} has expired",
            paper.id
        )));
    }
    if let Some(max_age) = reuse.max_age
        && ctx.calendar.add(paper.issued_at, max_age) < ctx.now
    {
        return Err(CommandError::input(format!(
            "paper {} was issued more than {max_age} ago",
            paper.id
        )));
    }
    check_sha256(&paper.sha256)?;
    if state.documents.iter().any(|d| {
        d.component == component
            && d.provenance
                .as_ref()
                .and_then(|p| p.get("paper_id"))
                .and_then(Value::as_str)
                == Some(paper.id.as_str())
    }) {
        return Err(CommandError::state(format!(
            "paper {} is already attached",
            paper.id
        )));
    }
    let source = match paper.source {
        super::command::PaperSource::Local => "local",
        super::command::PaperSource::Portal => "portal",
    };
    let document = DocumentRef {
        id: format!("reuse-{}", paper.id),
        component: component.to_owned(),
        name: paper.name.clone(),
        kind: Some(crate::definition::DocumentKind::ElectronicCertifiedCopy),
        sha256: paper.sha256.clone(),
        size: paper.size,
        content_type: paper.content_type.clone(),
        provenance: Some(json!({
            "reused": true,
            "paper_id": paper.id,
            "result_code": paper.result_code,
            "number": paper.number,
            "issued_at": paper.issued_at,
            "valid_until": paper.valid_until,
            "issuing_agency": paper.issuing_agency,
            "from_portal": paper.source == super::command::PaperSource::Portal,
            "signature_check": paper.signature_check,
        })),
    };
    em.emit(Event::PaperReused {
        component: component.to_owned(),
        paper_id: paper.id.clone(),
        result_code: paper.result_code.clone(),
        source: source.to_owned(),
        consent_by_owner,
        document: Box::new(document),
    });
    Ok(())
}

fn cancel_tasks(em: &mut Emitter<'_>) {
    let open: Vec<String> = em.state.tasks.keys().map(|k| (**k).to_owned()).collect();
    for task in open {
        em.emit(Event::TaskCancelled { task });
    }
}

/// A notification outside the graph (supplement request, apology), sent through a job.
fn notify(em: &mut Emitter<'_>, template: &str) {
    let mut args = BTreeMap::new();
    args.insert("template".to_owned(), Value::String(template.to_owned()));
    system_job(em, "notify", args);
}

/// Forms as an event carries them: each behind its own `Arc`, which the dossier's state then
/// shares instead of copying.
fn shared_forms(forms: &BTreeMap<String, Value>) -> BTreeMap<String, Arc<Value>> {
    forms
        .iter()
        .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
        .collect()
}

/// `prefix`, `separator` and `n` in decimal (`j3`, `tham_dinh.2`): the ids of the jobs and
/// tasks a dossier opens, made without the formatting machinery (which cost as much as the
/// rest of opening a task).
fn numbered(prefix: &str, separator: &str, n: usize) -> String {
    let mut digits = itoa::Buffer::new();
    [prefix, separator, digits.format(n)].concat()
}

/// A hook job outside the graph: no token waits for it.
fn system_job(em: &mut Emitter<'_>, call: &str, args: BTreeMap<String, Value>) {
    let job = numbered("j", "", em.state.jobs_scheduled() + 1);
    em.emit(Event::HookScheduled {
        job,
        token: None,
        step: None,
        call: call.into(),
        args: std::sync::Arc::new(args),
        retry: RetryPolicy::default(),
        run_at: em.ctx.now,
    });
}

fn record_hook_outcome(
    em: &mut Emitter<'_>,
    job_id: &str,
    attempt: u32,
    outcome: &HookOutcome,
) -> Result<(), CommandError> {
    let ctx = em.ctx;
    let job = em
        .state
        .job(job_id)
        .cloned()
        .ok_or_else(|| CommandError::not_found(format!("job {job_id}")))?;
    if job.state != JobState::Pending || attempt != job.attempts + 1 {
        return Err(CommandError::StaleJob {
            job: job_id.to_owned(),
            attempt,
        });
    }
    match outcome {
        HookOutcome::Succeeded {
            detail,
            notification,
        } => {
            em.emit(Event::HookSucceeded {
                job: job_id.to_owned(),
                attempt,
                detail: detail.clone(),
            });
            if let Some(n) = notification {
                em.emit(Event::NotificationRecorded {
                    notification: n.clone(),
                });
            }
            if !em.state.is_closed() {
                continue_after_hook(em, &job.step, job.token, "done")?;
            }
        }
        HookOutcome::Failed { error } => {
            if attempt < job.retry.max_attempts {
                let retry_at = ctx.now + backoff(&job.retry, attempt, &em.state.code, job_id);
                em.emit(Event::HookFailed {
                    job: job_id.to_owned(),
                    attempt,
                    error: error.clone(),
                    retry_at: Some(retry_at),
                });
                return Ok(());
            }
            em.emit(Event::HookFailed {
                job: job_id.to_owned(),
                attempt,
                error: error.clone(),
                retry_at: None,
            });
            let on_failure = match job
                .step
                .as_deref()
                .and_then(|s| ctx.procedure.procedure().step(s))
            {
                Some(Step::Hook(h)) => h.on_failure.clone(),
                _ => None,
            };
            match (on_failure, job.token, &job.step) {
                (Some(target), Some(token), Some(step)) if !em.state.is_closed() => {
                    advance(em, token, Some(step), &target, "hook failed")?;
                }
                _ => {
                    let incident = format!("i{}", em.state.incidents.len() + 1);
                    em.emit(Event::IncidentOpened {
                        incident,
                        job: job_id.to_owned(),
                        error: error.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn continue_after_hook(
    em: &mut Emitter<'_>,
    step: &Option<String>,
    token: Option<u32>,
    via: &str,
) -> Result<(), CommandError> {
    let (Some(step), Some(token)) = (step, token) else {
        return Ok(());
    };
    let next = match em.ctx.procedure.procedure().step(step) {
        Some(Step::Hook(h)) => h.next.clone(),
        _ => return Err(CommandError::state(format!("step {step} is not a hook"))),
    };
    advance(em, token, Some(step), &next, via)
}

/// Exponential backoff with jitter. The jitter comes from a hash of the dossier, job and
/// attempt rather than a random source, so deciding stays a pure function while retries
/// of many dossiers still spread out.
pub fn backoff(policy: &RetryPolicy, attempt: u32, dossier: &str, job: &str) -> chrono::Duration {
    let base = u64::from(policy.initial_backoff_seconds.max(1));
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(u64::from(
        policy
            .max_backoff_seconds
            .max(policy.initial_backoff_seconds),
    ));
    let digest = Sha256::digest(format!("{dossier}/{job}/{attempt}").as_bytes());
    let jitter_per_mille = u64::from(u16::from_be_bytes([digest[0], digest[1]]) % 250);
    // Up to 25% less than the full delay.
    let millis = capped * 1000 - capped * jitter_per_mille;
    chrono::Duration::milliseconds(i64::try_from(millis).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn ids_are_numbered_in_decimal() {
        assert_eq!(numbered("j", "", 0), "j0");
        assert_eq!(numbered("j", "", 7), "j7");
        assert_eq!(numbered("j", "", 10), "j10");
        assert_eq!(numbered("tham_dinh", ".", 2), "tham_dinh.2");
        assert_eq!(
            numbered("j", "", usize::MAX),
            format!("j{}", usize::MAX),
            "the widest number"
        );
    }
}
