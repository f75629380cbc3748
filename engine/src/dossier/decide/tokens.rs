//! The token runtime: moving tokens along the step graph, entering each kind of step, timers' dates.

#[allow(unused_imports)]
use super::*;

/// Moves `token` into step `to` and runs automatic steps until every token waits on a task,
/// a job or a join, or the dossier ends.
pub(super) fn advance(
    em: &mut Emitter<'_>,
    token: u32,
    from: Option<&str>,
    to: &str,
    via: &str,
) -> Result<(), CommandError> {
    em.emit(Event::Advanced {
        token,
        from: from.map(str::to_owned),
        to: to.into(),
        via: via.to_owned(),
    });
    enter(em, token, to)
}

pub(super) fn enter(em: &mut Emitter<'_>, token: u32, step_id: &str) -> Result<(), CommandError> {
    let ctx = em.ctx;
    // The loader proved the graph sound; a guard still bounds a runaway decision.
    if em.events.len() > 10_000 {
        return Err(CommandError::state(
            "the procedure loops without waiting on anything",
        ));
    }
    let Some(step) = ctx.procedure.procedure().step(step_id) else {
        return Err(CommandError::state(format!(
            "step {step_id} is not in the procedure"
        )));
    };
    match step {
        Step::UserTask(t) => {
            let n = em.state.tasks_opened + 1;
            let due_at = t.sla.map(|sla| ctx.calendar.add(ctx.now, sla));
            em.emit(Event::TaskOpened {
                task: numbered(&t.id, ".", n as usize).into(),
                step: t.id.as_str().into(),
                name: t.name.as_deref().unwrap_or(&t.id).into(),
                role: t.role.as_str().into(),
                // The engine resolved kinds to this deployment's codes when it deployed the
                // procedure; `receiving` and no agency stay for the dossier to say.
                agency: match t.agency.as_deref() {
                    Some(RECEIVING) => std::sync::Arc::clone(&em.state.agency_code),
                    Some(a) => a.into(),
                    None => std::sync::Arc::clone(em.state.competent_agency()),
                },
                token,
                due_at,
            });
            Ok(())
        }
        Step::Decision(d) => {
            for b in &d.when {
                match ctx.procedure.condition(&b.condition, &em.state) {
                    Ok(true) => {
                        return advance(
                            em,
                            token,
                            Some(&d.id),
                            &b.then,
                            &["if ", b.condition.as_str()].concat(),
                        );
                    }
                    Ok(false) => {}
                    // Never a guess: the token holds here until an administrator retries.
                    Err(f) => {
                        hold_at_condition(em, token, &d.id, &b.condition, f);
                        return Ok(());
                    }
                }
            }
            let target = d.otherwise.clone().unwrap_or_default();
            advance(em, token, Some(&d.id), &target, "else")
        }
        Step::Parallel(par) => {
            let first = em.state.next_token;
            let branches: Vec<(u32, String)> = par
                .branches
                .iter()
                .enumerate()
                .map(|(i, b)| (first + i as u32, b.clone()))
                .collect();
            em.emit(Event::Forked {
                token,
                at: par.id.clone(),
                branches: branches.clone(),
            });
            for (t, b) in branches {
                enter(em, t, &b)?;
            }
            Ok(())
        }
        Step::Join(j) => {
            em.emit(Event::Arrived {
                token,
                join: j.id.clone(),
            });
            let expected = ctx
                .procedure
                .procedure()
                .steps
                .iter()
                .find_map(|s| match s {
                    Step::Parallel(p) if p.join == j.id => Some(p.branches.len()),
                    _ => None,
                })
                .unwrap_or(1);
            let arrived = em.state.joins.get(&j.id).map_or(0, |s| s.len());
            if arrived >= expected {
                let new = em.state.next_token;
                em.emit(Event::Joined {
                    join: j.id.clone(),
                    token: new,
                });
                return advance(em, new, Some(&j.id), &j.next, "all branches done");
            }
            Ok(())
        }
        Step::Timer(t) => {
            let fire_at = match (&t.wait, &t.until) {
                (Some(w), _) => ctx.calendar.add(ctx.now, *w),
                (None, Some(expr)) => match until(ctx, &em.state, expr) {
                    Ok(at) => at,
                    // A date the command itself brings is refused, pointing at the field, so
                    // its sender corrects it.
                    Err(message) if brought_by_command(em, expr) => {
                        return Err(refuse_until(expr, message));
                    }
                    // A date nobody sending this command can correct holds the dossier here
                    // with an incident, as a failing condition does.
                    Err(message) => {
                        let values = ctx.procedure.values_read(expr, &em.state);
                        hold_at_condition(
                            em,
                            token,
                            &t.id,
                            expr,
                            crate::runtime::ConditionFailure { message, values },
                        );
                        return Ok(());
                    }
                },
                (None, None) => ctx.now,
            };
            let job = numbered("j", "", em.state.jobs_scheduled() + 1);
            em.emit(Event::TimerScheduled {
                job,
                token,
                step: t.id.clone(),
                fire_at,
            });
            Ok(())
        }
        Step::Hook(h) => {
            let job = numbered("j", "", em.state.jobs_scheduled() + 1);
            em.emit(Event::HookScheduled {
                job,
                token: Some(token),
                step: Some(h.id.clone()),
                call: h.call.clone(),
                args: h.args.clone(),
                retry: h.retry,
                run_at: ctx.now,
            });
            Ok(())
        }
        Step::End(e) => {
            cancel_tasks(em);
            em.emit(Event::Ended {
                outcome: e.outcome,
                step: e.id.clone(),
            });
            Ok(())
        }
    }
}

/// The instant a `until` timer fires: the expression gives a date (`YYYY-MM-DD`, start of
/// that day in the calendar's time zone) or an RFC 3339 timestamp.
pub(super) fn until(
    ctx: &Context<'_>,
    state: &Dossier,
    expr: &str,
) -> Result<DateTime<Utc>, String> {
    let value = ctx.procedure.evaluate(expr, state)?;
    let text = match value {
        cel::Value::String(s) => s.to_string(),
        cel::Value::Timestamp(t) => return Ok(t.with_timezone(&Utc)),
        other => return Err(format!("`{expr}` gave {other:?}, not a date")),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map_err(|_| format!("`{expr}` gave `{text}`, not a date (YYYY-MM-DD) that exists"))?;
    let local = day
        .and_hms_opt(0, 0, 0)
        .and_then(|n| n.and_local_timezone(ctx.calendar.timezone()).earliest())
        .ok_or_else(|| format!("`{text}` does not exist in the calendar's time zone"))?;
    Ok(local.with_timezone(&Utc))
}

/// A timer reading one field of a form blames that field; another expression, the input.
pub(super) fn refuse_until(expr: &str, message: String) -> CommandError {
    match form_field(expr) {
        Some((form, field)) => CommandError::InvalidForm {
            violations: vec![crate::runtime::FormViolation::new(
                form,
                &["/", field].concat(),
                message,
            )],
        },
        None => CommandError::input(message),
    }
}

/// Whether the expression reads a form the command being decided brings.
pub(super) fn brought_by_command(em: &Emitter<'_>, expr: &str) -> bool {
    em.brought.iter().any(|form| {
        let prefix = ["data.", form.as_str()].concat();
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .any(|word| word == prefix || word.starts_with(&[prefix.as_str(), "."].concat()))
    })
}

/// The forms a command brings, by id.
pub(super) fn brought_forms(state: &Dossier, command: &Command) -> Vec<String> {
    match command {
        Command::CompleteTask {
            task,
            data: Some(_),
            ..
        } => state
            .tasks
            .get(task.as_str())
            .map(|t| vec![t.step.to_string()])
            .unwrap_or_default(),
        Command::Supplement { data, .. } | Command::ResolveIncident { data, .. } => {
            data.keys().cloned().collect()
        }
        _ => Vec::new(),
    }
}
