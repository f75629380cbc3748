//! Who may act: officers on their tasks and agencies, the owner, document changes.

#[allow(unused_imports)]
use super::*;

/// An officer may work on a task of their agency with the task's role.
pub(super) fn may_work_on(
    ctx: &Context<'_>,
    _state: &Dossier,
    t: &Task,
) -> Result<(), CommandError> {
    match ctx.actor {
        Actor::Officer { agency, .. } if **agency == *t.agency && ctx.actor.has_role(&t.role) => {
            Ok(())
        }
        Actor::Officer { agency, .. } if **agency != *t.agency => Err(CommandError::forbidden(
            format!("task {} belongs to agency {}", t.id, t.agency),
        )),
        Actor::Officer { .. } => Err(CommandError::forbidden(format!(
            "task {} needs the role {}",
            t.id, t.role
        ))),
        _ => Err(CommandError::forbidden("tasks are done by officers")),
    }
}

/// An officer of the agency that received the dossier or of the one competent to decide it.
pub(super) fn officer_of(ctx: &Context<'_>, state: &Dossier) -> Result<(), CommandError> {
    match ctx.actor {
        Actor::Officer { agency, .. }
            if **agency == *state.agency_code || **agency == **state.competent_agency() =>
        {
            Ok(())
        }
        Actor::Officer { .. } => Err(CommandError::forbidden(format!(
            "dossier {} belongs to agency {}",
            state.code, state.agency_code
        ))),
        _ => Err(CommandError::forbidden(
            "only officers of the handling agency may do this",
        )),
    }
}

/// The owner (online) or an officer of the agency recording the owner's request at the desk.
pub(super) fn acts_for_owner(ctx: &Context<'_>, state: &Dossier) -> Result<(), CommandError> {
    match ctx.actor {
        Actor::Citizen { owner_id, .. } if owner_id == &state.owner.id => Ok(()),
        Actor::Citizen { .. } => Err(CommandError::forbidden(
            "this dossier belongs to another owner",
        )),
        _ => officer_of(ctx, state),
    }
}

/// Documents change while the dossier is at the desk or waits for a supplement (owner or
/// officer), or at any time by an officer of the agency.
pub(super) fn may_change_documents(ctx: &Context<'_>, state: &Dossier) -> Result<(), CommandError> {
    match ctx.actor {
        Actor::Citizen { .. } => {
            acts_for_owner(ctx, state)?;
            if state.received_at.is_some() && state.paused.is_none() {
                return Err(CommandError::state(
                    "after reception the owner changes documents only when a supplement is requested",
                ));
            }
            Ok(())
        }
        _ => officer_of(ctx, state),
    }
}
