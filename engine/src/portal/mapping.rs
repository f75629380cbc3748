//! Mapping engine state to the wire: portal times, a dossier's sync payload, its files and supplement rounds, result papers' metadata and validity.

#[allow(unused_imports)]
use super::*;

/// A time as the portal writes it: `yyyyMMddHHmmss` in Asia/Ho_Chi_Minh.
pub fn portal_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Ho_Chi_Minh)
        .format(TIME_FORMAT)
        .to_string()
}

/// Reads a portal time back. `None` unless it is exactly 14 digits of a valid local time.
pub fn parse_portal_time(s: &str) -> Option<DateTime<Utc>> {
    // chrono accepts a shorter field here and there; the contract does not.
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(s, TIME_FORMAT).ok()?;
    // Vietnam has no daylight saving time, so a local time is never ambiguous.
    Ho_Chi_Minh
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// The portal's id of the paper holding `result_code` issued for a dossier: the id the local
/// Kho DL gives it ([`crate::khodl::result_paper_id`]), so the two copies are found by one id.
/// A result code is signed at most once per dossier, so the id is stable across attempts and
/// shared by the sync (which lists it) and the push (which stores it).
pub fn paper_id(dossier_code: &str, result_code: &str) -> String {
    crate::khodl::result_paper_id(dossier_code, result_code)
}

/// How a document came to the dossier, read from its `provenance`.
///
/// A paper reused from a Kho DL (the engine's `PaperReused` event) records
/// `{"reused": true, "paper_id", "result_code", "from_portal": bool, …}`; such a paper is
/// always another procedure's result, so it is `reused` 2 with that result code. Also read:
/// `source` (`upload`, `digitized`, `khodl`, `portal_khodl`) and the explicit wire values
/// `digitized`, `reused` (0, 1, 2), `replaced_by_result_code`, `from_portal_khodl`, which win.
/// Anything else is ignored; no provenance means an upload.
pub fn submitted_file(doc: &DocumentRef) -> wire::SubmittedFile {
    let p = doc.provenance.as_ref();
    let get = |k: &str| p.and_then(|p| p.get(k));
    let text = |k: &str| get(k).and_then(Value::as_str);
    let flag = |k: &str| get(k).and_then(Value::as_bool);
    let source = text("source").unwrap_or("upload");
    let from_khodl = matches!(source, "khodl" | "portal_khodl") || flag("reused") == Some(true);
    let from_portal_khodl = flag("from_portal_khodl")
        .or_else(|| flag("from_portal"))
        .unwrap_or(source == "portal_khodl");
    let result_code = text("replaced_by_result_code")
        .or_else(|| text("result_code"))
        .map(str::to_owned);
    let reused = match get("reused").and_then(Value::as_u64) {
        Some(n @ 0..=2) => n as u8,
        // A document taken from a Kho DL is reused; when it is another procedure's result it
        // stands in for the component (2, with the result's code).
        _ if from_khodl && result_code.is_some() => 2,
        _ if from_khodl => 1,
        _ => 0,
    };
    wire::SubmittedFile {
        file_id: doc.id.clone(),
        component_code: doc.component.clone(),
        name: doc.name.clone(),
        sha256: doc.sha256.clone(),
        size: doc.size,
        content_type: doc.content_type.clone(),
        digitized: flag("digitized").unwrap_or(source == "digitized"),
        reused,
        replaced_by_result_code: if reused == 2 { result_code } else { None },
        from_portal_khodl,
    }
}

/// The supplement rounds of a dossier, with the due dates before and after each, from its
/// events up to `upto_seq` (the state being synced; later events are not part of it).
pub fn supplement_rounds(events: &[EventRecord], upto_seq: u64) -> Vec<wire::SupplementRound> {
    let mut rounds: Vec<wire::SupplementRound> = Vec::new();
    let mut due: Option<DateTime<Utc>> = None;
    for e in events.iter().take_while(|e| e.seq <= upto_seq) {
        match &e.event {
            Event::Received { due_at } => due = Some(*due_at),
            Event::SupplementRequested {
                reason, missing, ..
            } => rounds.push(wire::SupplementRound {
                round: rounds.len() as u32 + 1,
                requested_at: portal_time(e.at),
                reason: reason.clone(),
                missing: missing.clone(),
                due_before: due.map(portal_time),
                supplemented_at: None,
                due_after: None,
            }),
            Event::Supplemented { due_at, .. } => {
                if let Some(d) = due_at {
                    due = Some(*d);
                }
                if let Some(open) = rounds
                    .iter_mut()
                    .rev()
                    .find(|r| r.supplemented_at.is_none())
                {
                    open.supplemented_at = Some(portal_time(e.at));
                    open.due_after = due.map(portal_time);
                }
            }
            _ => {}
        }
    }
    rounds
}

/// The rounds that can be told from the state alone (when no history is at hand): only the
/// open one, if any. `supplement_count` still gives the total.
pub(super) fn open_round(d: &Dossier) -> Vec<wire::SupplementRound> {
    d.paused
        .iter()
        .map(|p| wire::SupplementRound {
            round: d.supplement_rounds.max(1),
            requested_at: portal_time(p.since),
            reason: d.reason.clone().unwrap_or_default(),
            missing: p.missing.clone(),
            due_before: d.due_at.map(portal_time),
            supplemented_at: None,
            due_after: None,
        })
        .collect()
}

/// The name of a result: the catalog's, else the document's, else its code.
pub(super) fn result_name(catalog: Option<&ResultCatalog>, s: &Signature) -> String {
    catalog
        .and_then(|c| c.results.iter().find(|r| r.code == s.result_code))
        .map(|r| r.name.clone())
        .or_else(|| s.document.as_ref().map(|d| d.name.clone()))
        .unwrap_or_else(|| s.result_code.clone())
}

/// The sync payload for a dossier as it is now. `field` is the procedure's field
/// (TenLinhVuc); `supplements` come from [`supplement_rounds`] when the history is at hand.
pub fn sync_payload(
    d: &Dossier,
    field: &str,
    supplements: Vec<wire::SupplementRound>,
    catalog: Option<&ResultCatalog>,
) -> wire::SyncDossier {
    let finished_at = d.processed_at.or(match d.status {
        // A dossier ended without a result finishes when it closes (counts for "on time").
        Status::NotReceived | Status::Stopped | Status::Withdrawn => d.closed_at,
        _ => None,
    });
    wire::SyncDossier {
        dossier_code: d.code.to_string(),
        sequence: d.seq,
        procedure_code: d.procedure_code.to_string(),
        procedure_name: d.procedure_name.to_string(),
        field: field.to_owned(),
        agency_code: d.agency_code.to_string(),
        owner: wire::Owner {
            id: d.owner.id.as_str().to_owned(),
            name: d.owner.name.clone(),
            owner_type: d.owner.id.owner_type().portal_code(),
        },
        channel: d.channel.portal_code(),
        online_level: d.online_level.map(OnlineLevel::portal_code),
        status: d.status.code(),
        status_name: d.status.label().to_owned(),
        filed_at: portal_time(d.filed_at),
        received_at: d.received_at.map(portal_time),
        due_at: d.due_at.map(portal_time),
        promised_at: d.promised_at.map(portal_time),
        finished_at: finished_at.map(portal_time),
        returned_at: d.returned_at.map(portal_time),
        reason: d.reason.clone(),
        files: d.documents.iter().map(submitted_file).collect(),
        fees: d
            .payments
            .iter()
            .map(|p| wire::Fee {
                fee_code: p.fee_code.clone(),
                amount_vnd: p.amount_vnd,
                receipt: p.receipt.clone(),
                paid_at: portal_time(p.at),
                channel: p.channel.map(|c| c.as_str().to_owned()),
            })
            .collect(),
        supplement_count: d.supplement_rounds,
        supplements,
        results: d
            .signatures
            .iter()
            .map(|s| wire::ResultPaper {
                paper_id: paper_id(&d.code, &s.result_code),
                result_code: s.result_code.clone(),
                name: result_name(catalog, s),
                number: s.number.clone(),
                signer: s.signer.clone(),
                signed_at: portal_time(s.at),
                sha256: s.document.as_ref().map(|doc| doc.sha256.clone()),
            })
            .collect(),
    }
}

/// The end of a validity period starting at `from`; `None` when permanent (or past year 9999).
/// With the working-day calendar, the end is what the local Kho DL computes; without it,
/// working days and hours count as calendar days and hours (validity is rarely given in
/// working time).
pub fn valid_until(
    from: DateTime<Utc>,
    validity: Validity,
    calendar: Option<&Calendar>,
) -> Option<DateTime<Utc>> {
    let Validity::For(period) = validity else {
        return None;
    };
    let end = match (period, calendar) {
        (period, Some(calendar)) => Some(calendar.add(from, period)),
        (period, None) => calendar_time(from, period),
    };
    // Past chrono's range (billions of months): as good as permanent, and a date the
    // 14-digit format could not carry anyway.
    end.filter(|t| t.year() <= 9999)
}

pub(super) fn calendar_time(from: DateTime<Utc>, period: Period) -> Option<DateTime<Utc>> {
    match period {
        Period::Months(n) => {
            // Months are added to the local date, so 31 Jan + 1 month is 28/29 Feb.
            let local = from.with_timezone(&Ho_Chi_Minh);
            local
                .checked_add_months(chrono::Months::new(n))
                .map(|t| t.with_timezone(&Utc))
        }
        Period::Days(n) | Period::WorkingDays(n) => {
            from.checked_add_signed(chrono::Duration::days(i64::from(n)))
        }
        Period::WorkingHours(n) => from.checked_add_signed(chrono::Duration::hours(i64::from(n))),
        Period::Minutes(n) => from.checked_add_signed(chrono::Duration::minutes(i64::from(n))),
    }
}

/// The validity of a result issued by `procedure`: the procedure's own, else the catalog's
/// default, else [`DEFAULT_VALIDITY`].
pub fn result_validity(
    procedure: Option<&CompiledProcedure>,
    catalog: Option<&ResultCatalog>,
    result_code: &str,
) -> Validity {
    procedure
        .and_then(|p| {
            p.procedure()
                .results
                .iter()
                .find(|r| r.result_code == result_code)
                .and_then(|r| r.validity)
        })
        .or_else(|| {
            catalog
                .and_then(|c| c.results.iter().find(|r| r.code == result_code))
                .map(|r| r.default_validity)
        })
        .unwrap_or(DEFAULT_VALIDITY)
}

/// The metadata of a signed result of a dossier, as pushed to the owner's Kho DL. `valid_until`
/// is the end of its validity (none when permanent), from [`valid_until`].
pub fn paper_metadata(
    d: &Dossier,
    signature: &Signature,
    valid_until: Option<DateTime<Utc>>,
    catalog: Option<&ResultCatalog>,
    agency_name: Option<&str>,
) -> wire::PaperMetadata {
    let provenance = signature
        .document
        .as_ref()
        .and_then(|doc| doc.provenance.as_ref());
    wire::PaperMetadata {
        paper_id: paper_id(&d.code, &signature.result_code),
        owner_id: d.owner.id.as_str().to_owned(),
        owner_name: d.owner.name.clone(),
        result_code: signature.result_code.clone(),
        name: result_name(catalog, signature),
        number: signature.number.clone(),
        issued_at: portal_time(signature.at),
        issuing_agency_code: d.agency_code.to_string(),
        issuing_agency_name: agency_name.map(str::to_owned),
        signer: signature.signer.clone(),
        permanent: valid_until.is_none(),
        valid_until: valid_until.map(portal_time),
        dossier_code: d.code.to_string(),
        procedure_code: d.procedure_code.to_string(),
        content_type: signature
            .document
            .as_ref()
            .map(|doc| doc.content_type.clone())
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        note: signature.document.is_none().then(|| {
            "the signed result has no electronic document: metadata only, empty content".to_owned()
        }),
        signed_metadata: provenance
            .and_then(|p| p.get(crate::khodl::PROVENANCE_SIGNED_METADATA))
            .cloned(),
        // Unreadable records are left out: the paper then arrives unsigned, which is what
        // the reusing side can tell.
        signatures: provenance
            .and_then(|p| p.get(crate::khodl::PROVENANCE_SIGNATURES))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default(),
    }
}

/// SHA-256 of some bytes, lowercase hex (the form `DocumentRef::sha256` uses).
pub use crate::hash::sha256_hex;
