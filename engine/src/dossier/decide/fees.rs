//! Fees: recording a payment at the amount due, asking for payment before return (status 6), fees still unpaid.

#[allow(unused_imports)]
use super::*;

/// Records a fee paid: the fee's amount due for this dossier (after the reduction that applies),
/// once, with its receipt.
pub(super) fn record_payment(
    em: &mut Emitter<'_>,
    fee_code: &str,
    amount_vnd: u64,
    receipt: &Option<String>,
    channel: crate::dossier::state::PaymentChannel,
) -> Result<(), CommandError> {
    let ctx = em.ctx;
    officer_of(ctx, &em.state)?;
    let p = ctx.procedure.procedure();
    let Some(fee) = p.fees.iter().find(|f| f.code == fee_code) else {
        let codes: Vec<&str> = p.fees.iter().map(|f| f.code.as_str()).collect();
        return Err(CommandError::input_at(
            "/fee_code",
            if codes.is_empty() {
                format!("`{fee_code}` is not a fee of this procedure, which charges none")
            } else {
                format!(
                    "`{fee_code}` is not a fee of this procedure; its fees: {}",
                    codes.join(", ")
                )
            },
        ));
    };
    let receipt = receipt.as_deref().map(str::trim).unwrap_or_default();
    if receipt.is_empty() {
        return Err(CommandError::input_at(
            "/receipt",
            "a payment needs its receipt (biên lai) or transaction number",
        ));
    }
    if em.state.payments.iter().any(|x| x.fee_code == fee_code) {
        return Err(CommandError::state(format!(
            "fee {fee_code} is already paid"
        )));
    }
    let (due, reduction) = ctx.procedure.fee_amount_due(fee, &em.state);
    if amount_vnd != due {
        let why = match reduction {
            Some(r) => format!("after the reduction `{r}`"),
            None => "no reduction applies to this dossier".to_owned(),
        };
        return Err(CommandError::input_at(
            "/amount_vnd",
            format!("fee {fee_code} is {due} VND for this dossier ({why}), not {amount_vnd} VND"),
        ));
    }
    em.emit(Event::PaymentRecorded {
        fee_code: fee_code.to_owned(),
        amount_vnd,
        receipt: Some(receipt.to_owned()),
        channel: Some(channel),
    });
    if em.state.status == Status::PaymentRequested
        && unpaid_fee(ctx.procedure, &em.state, Milestone::Returned).is_ok()
    {
        em.emit(Event::PaymentsSettled);
    }
    Ok(())
}

/// On a processed dossier whose fees due before return are unpaid: status 6 (payment
/// requested) until they are paid.
pub(super) fn request_payment(em: &mut Emitter<'_>) {
    use crate::definition::FeeDue;
    let unpaid: Vec<_> = em
        .ctx
        .procedure
        .fee_balances(&em.state, |c| em.state.paid_vnd(c))
        .into_iter()
        .filter(|b| b.due != FeeDue::Anytime && b.outstanding_vnd > 0)
        .collect();
    if !unpaid.is_empty() {
        em.emit(Event::PaymentRequested {
            amount_vnd: unpaid.iter().map(|b| b.outstanding_vnd).sum(),
            fee_codes: unpaid.into_iter().map(|b| b.code).collect(),
        });
    }
}

/// The first fee that must be paid by `milestone` and is not paid in full.
pub(super) fn unpaid_fee(
    p: &CompiledProcedure,
    state: &Dossier,
    milestone: Milestone,
) -> Result<(), CommandError> {
    use crate::definition::FeeDue;
    let unpaid = p
        .fee_balances(state, |c| state.paid_vnd(c))
        .into_iter()
        .find(|b| {
            b.outstanding_vnd > 0
                && match milestone {
                    Milestone::Received => b.due == FeeDue::AtReception,
                    Milestone::Returned => b.due != FeeDue::Anytime,
                }
        });
    match unpaid {
        Some(b) => Err(CommandError::FeeUnpaid {
            fee_code: b.code,
            name: b.name,
            amount_vnd: b.outstanding_vnd,
            due: match b.due {
                FeeDue::AtReception => "at reception",
                _ => "before the result is returned",
            },
        }),
        None => Ok(()),
    }
}
