//! Runtime guards: a condition that cannot be evaluated holds its decision with an incident; a dossier with nothing to wait on raises a stuck one; retrying them.

#[allow(unused_imports)]
use super::*;

/// Holds `token` at `step` with a condition incident naming the expression and the values
/// it read.
pub(super) fn hold_at_condition(
    em: &mut Emitter<'_>,
    token: u32,
    step: &str,
    expression: &str,
    failure: crate::runtime::ConditionFailure,
) {
    let read = failure
        .values
        .iter()
        .map(|(k, v)| [k.as_str(), " = ", &v.to_string()].concat())
        .collect::<Vec<_>>()
        .join(", ");
    let mut error = format!("step {step}: {}", failure.message);
    if !read.is_empty() {
        error.push_str(&format!(" (read: {read})"));
    }
    em.emit(Event::GuardIncidentOpened {
        incident: next_incident(&em.state),
        kind: IncidentKind::Condition,
        step: Some(step.to_owned()),
        token: Some(token),
        expression: Some(expression.to_owned()),
        values: failure.values,
        error,
    });
}

pub(super) fn next_incident(state: &Dossier) -> String {
    numbered("i", "", state.incidents.len() + 1)
}

/// Where the tokens of a dossier that nothing will move are: `None` unless the dossier is
/// open with no open task, no pending job or timer of its steps, no supplement awaited and
/// no incident open (an incident already waits for an administrator).
pub(super) fn stuck_at(ctx: &Context<'_>, state: &Dossier) -> Option<String> {
    if state.is_closed()
        || !state.tasks.is_empty()
        || state.paused.is_some()
        || state
            .jobs
            .values()
            .any(|j| j.token.is_some() && j.state == JobState::Pending)
        || state.incidents.values().any(|i| i.resolution.is_none())
    {
        return None;
    }
    let mut places: Vec<String> = state
        .tokens
        .iter()
        .map(|(t, step)| format!("token {t} at {step}"))
        .collect();
    for (join, tokens) in &state.joins {
        let expected = ctx
            .procedure
            .procedure()
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Parallel(p) if p.join == *join => Some(p.branches.len()),
                _ => None,
            })
            .unwrap_or(1);
        let list = tokens
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        places.push(format!(
            "join {join} waits with {} of {expected} branches (token {list})",
            tokens.len()
        ));
    }
    Some(format!(
        "stuck: no open task, job or timer; {}",
        if places.is_empty() {
            "no token left".to_owned()
        } else {
            places.join("; ")
        }
    ))
}

/// Opens a stuck incident when the decision leaves the dossier with nothing to wait on.
pub(super) fn raise_if_stuck(em: &mut Emitter<'_>) {
    if let Some(error) = stuck_at(em.ctx, &em.state) {
        // An administrator who skipped this very situation acknowledged it: a later event
        // (a status sync's outcome, say) does not raise it again.
        let acknowledged = em.state.incidents.values().any(|i| {
            i.kind == IncidentKind::Stuck
                && i.resolution == Some(IncidentResolution::Skipped)
                && i.error == error
        });
        if acknowledged {
            return;
        }
        em.emit(Event::GuardIncidentOpened {
            incident: next_incident(&em.state),
            kind: IncidentKind::Stuck,
            step: None,
            token: None,
            expression: None,
            values: BTreeMap::new(),
            error,
        });
    }
}

/// Retries or skips a condition or stuck incident. A retry evaluates the step again and is
/// refused, changing nothing, while it still fails; a condition has no branch to skip to.
pub(super) fn resolve_guard_incident(
    em: &mut Emitter<'_>,
    incident: &Incident,
    action: IncidentAction,
    note: &Option<String>,
    data: &BTreeMap<String, Value>,
) -> Result<(), CommandError> {
    let closed = em.state.is_closed();
    let resolution = match action {
        IncidentAction::Retry => IncidentResolution::Retried,
        IncidentAction::Skip => IncidentResolution::Skipped,
    };
    if incident.kind == IncidentKind::Condition && action == IncidentAction::Skip && !closed {
        return Err(CommandError::state(format!(
            "incident {}: a decision has no branch to skip to; retry it (after correcting the \
             data it reads), or stop the dossier",
            incident.id
        )));
    }
    if !data.is_empty() {
        if closed || action != IncidentAction::Retry {
            return Err(CommandError::input_at(
                "/data",
                "corrected data goes with the retry of an open dossier's condition incident",
            ));
        }
        let p = em.ctx.procedure.procedure();
        for id in data.keys() {
            if p.form_path(id).is_none() {
                return Err(CommandError::input_at(
                    data_pointer(id),
                    format!("`{id}` is not a form of this procedure"),
                ));
            }
        }
        validate_forms(em.ctx.procedure, data)?;
        em.emit(Event::DataCorrected {
            incident: incident.id.clone(),
            data: shared_forms(data),
        });
    }
    em.emit(Event::IncidentResolved {
        incident: incident.id.clone(),
        resolution,
        note: note.clone(),
    });
    if closed || action == IncidentAction::Skip {
        return Ok(());
    }
    match (incident.kind, &incident.step, incident.token) {
        (IncidentKind::Condition, Some(step), Some(token)) => {
            let before = em.state.incidents.len();
            enter(em, token, step)?;
            let again = em
                .state
                .incidents
                .values()
                .filter(|i| i.resolution.is_none() && i.kind == IncidentKind::Condition)
                .find(|i| i.step.as_deref() == Some(step.as_str()) && i.token == Some(token));
            if em.state.incidents.len() > before
                && let Some(i) = again
            {
                return Err(CommandError::state(format!(
                    "incident {} still holds: {}",
                    incident.id, i.error
                )));
            }
        }
        _ => {
            if let Some(error) = stuck_at(em.ctx, &em.state) {
                return Err(CommandError::state(format!(
                    "incident {} still holds: {error}; stop the dossier, or skip the incident \
                     to acknowledge it",
                    incident.id
                )));
            }
        }
    }
    Ok(())
}
