//! Connector to the National Public Service Portal (Cổng DVCQG).
//!
//! The portal publishes no API for its Kho DL, so tthc speaks its own documented contract
//! (`docs/portal-api.md`), modelled on the real `DongBoHoSoMC` service; a real deployment puts an
//! adapter between that contract and the portal, and `tthc portal-sim` implements it for tests
//! and demos. This module holds:
//!
//! - [`wire`]: the contract's JSON types, kept apart from the engine's own types so the engine
//!   can change without changing what goes over the wire;
//! - the mapping from a [`Dossier`] to those types ([`sync_payload`], [`submitted_file`],
//!   [`supplement_rounds`], [`paper_metadata`]);
//! - [`PortalClient`]: token auth, timeouts, `Idempotency-Key` on every write, typed errors;
//! - the hooks `portal.sync_dossier` ([`PortalSyncHook`]) and `portal.push_result`
//!   ([`PortalPushHook`]). Both run as engine jobs, outside any transaction; every attempt of a
//!   job carries the same idempotency key, so a retry after a lost answer changes nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Datelike, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Asia::Ho_Chi_Minh;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::calendar::Calendar;
use crate::definition::{Duration as Period, ResultCatalog, Validity};
use crate::dossier::{
    DocumentRef, Dossier, Event, EventRecord, HookOutcome, OnlineLevel, Signature, Status,
};
use crate::engine::{HookFuture, HookHandler, HookRequest};
use crate::runtime::CompiledProcedure;
use crate::store::Store;

/// The header a write carries so the portal applies it at most once.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The header carrying the SHA-256 (hex) of a paper's content on download.
pub const CONTENT_SHA256: &str = "X-Content-SHA256";
/// `yyyyMMddHHmmss`, the portal's time format, always in Asia/Ho_Chi_Minh.
pub const TIME_FORMAT: &str = "%Y%m%d%H%M%S";
/// Validity of a paper when neither the procedure nor the result catalog gives one
/// (the default of real one-stop systems).
pub const DEFAULT_VALIDITY: Validity = Validity::For(Period::Months(6));

/// The contract's JSON types (`docs/portal-api.md`). Field names are tthc's; the document maps
/// each to its `DongBoHoSoMC` counterpart for the adapter.
pub mod wire {
    use serde::{Deserialize, Serialize};

    /// `POST /auth/token`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TokenRequest {
        pub client_id: String,
        pub client_secret: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TokenResponse {
        pub access_token: String,
        /// Seconds the token stays valid.
        pub expires_in: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token_type: Option<String>,
    }

    /// The body of every 4xx/5xx answer.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ErrorBody {
        pub code: String,
        pub message: String,
    }

    /// `POST /dossiers/sync` (DongBoHoSoMC): the whole state of one dossier. The portal keeps
    /// the one with the highest `sequence` and ignores older ones arriving late.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct SyncDossier {
        /// MaHoSo.
        pub dossier_code: String,
        /// The dossier's event sequence number when this state was read.
        pub sequence: u64,
        /// MaTTHC, TenTTHC.
        pub procedure_code: String,
        pub procedure_name: String,
        /// TenLinhVuc (the procedure's field, e.g. "Lý lịch tư pháp").
        pub field: String,
        /// DonViXuLy: agency code per Circular 10/2016/TT-BTTTT.
        pub agency_code: String,
        pub owner: Owner,
        /// KenhThucHien: 1 in person, 2 online, 3 postal.
        pub channel: u8,
        /// MucDoDVC of an online filing: 1 partly online, 2 fully online.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub online_level: Option<u8>,
        /// TrangThaiHoSo: 1..=10.
        pub status: u8,
        pub status_name: String,
        /// Times as `yyyyMMddHHmmss`, Asia/Ho_Chi_Minh.
        pub filed_at: String,
        /// NgayTiepNhan.
        #[serde(default)]
        pub received_at: Option<String>,
        /// NgayHenTra: the legal due date.
        #[serde(default)]
        pub due_at: Option<String>,
        /// The new date promised in an apology letter (Mẫu 04).
        #[serde(default)]
        pub promised_at: Option<String>,
        /// NgayKetThucXuLy: processed, or stopped / refused / withdrawn.
        #[serde(default)]
        pub finished_at: Option<String>,
        /// NgayTra.
        #[serde(default)]
        pub returned_at: Option<String>,
        /// The latest reason given (refusal, supplement request, stop…).
        #[serde(default)]
        pub reason: Option<String>,
        /// TaiLieuNop.
        #[serde(default)]
        pub files: Vec<SubmittedFile>,
        /// DanhSachLePhi.
        #[serde(default)]
        pub fees: Vec<Fee>,
        /// How many supplement requests the dossier has had (more than one counts as late).
        #[serde(default)]
        pub supplement_count: u32,
        /// DanhSachHoSoBoSung.
        #[serde(default)]
        pub supplements: Vec<SupplementRound>,
        /// DanhSachGiayToKetQua.
        #[serde(default)]
        pub results: Vec<ResultPaper>,
    }

    /// ChuHoSo, MaDoiTuong, LoaiDoiTuong.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Owner {
        /// Citizen ID (12 digits), passport number or tax code.
        pub id: String,
        pub name: String,
        /// 1 person, 2 organization.
        #[serde(rename = "type")]
        pub owner_type: u8,
    }

    /// One submitted file (TaiLieuNop) with its reuse flags.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SubmittedFile {
        pub file_id: String,
        /// MaThanhPhanHoSo.
        pub component_code: String,
        pub name: String,
        pub sha256: String,
        pub size: u64,
        pub content_type: String,
        /// DuocSoHoa: digitized at the one-stop desk.
        pub digitized: bool,
        /// DuocTaiSuDung: 0 not reused, 1 reused, 2 replaced by a result.
        pub reused: u8,
        /// MaKetQuaThayThe: the result code standing in for the component when `reused` is 2.
        #[serde(default)]
        pub replaced_by_result_code: Option<String>,
        /// DuocLayTuKhoDMQG: taken from the portal's Kho DL.
        pub from_portal_khodl: bool,
    }

    /// A fee paid (DanhSachLePhi).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Fee {
        pub fee_code: String,
        pub amount_vnd: u64,
        #[serde(default)]
        pub receipt: Option<String>,
        pub paid_at: String,
        /// HinhThucThu: how it was paid, `counter`, `online` or `postal`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub channel: Option<String>,
    }

    /// One supplement round (HoSoBoSung) with the due dates before and after it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SupplementRound {
        pub round: u32,
        pub requested_at: String,
        pub reason: String,
        #[serde(default)]
        pub missing: Vec<String>,
        /// NgayHenTraTruoc.
        #[serde(default)]
        pub due_before: Option<String>,
        /// When the owner supplemented; none while the round is open.
        #[serde(default)]
        pub supplemented_at: Option<String>,
        /// NgayHenTraMoi.
        #[serde(default)]
        pub due_after: Option<String>,
    }

    /// A signed result of the dossier (GiayToKetQua); its content goes to `POST /khodl/papers`
    /// under the same `paper_id`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ResultPaper {
        pub paper_id: String,
        /// MaGiayToKetQua.
        pub result_code: String,
        pub name: String,
        #[serde(default)]
        pub number: Option<String>,
        pub signer: String,
        pub signed_at: String,
        /// None when the signed result has no electronic document.
        #[serde(default)]
        pub sha256: Option<String>,
    }

    /// What the portal holds for a dossier after a sync.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SyncAnswer {
        pub dossier_code: String,
        /// False when the portal already held this sequence or a newer one.
        pub applied: bool,
        /// The sequence the portal now holds.
        pub sequence: u64,
        /// The status the portal now holds.
        pub status: u8,
    }

    /// `GET /dossiers/{code}`: the latest state the portal holds.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct SyncedDossier {
        pub dossier_code: String,
        pub sequence: u64,
        pub status: u8,
        pub updated_at: String,
        pub dossier: SyncDossier,
    }

    /// The metadata of a paper in the owner's Kho DL on the portal (GiayToSoHoa).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PaperMetadata {
        pub paper_id: String,
        /// MaDinhDanh.
        pub owner_id: String,
        /// ChuGiayTo.
        pub owner_name: String,
        /// MaGiayTo: the result code.
        pub result_code: String,
        /// Ten.
        pub name: String,
        /// SoKyHieu.
        #[serde(default)]
        pub number: Option<String>,
        /// NgayBanHanh, `yyyyMMddHHmmss`.
        pub issued_at: String,
        /// CoQuanBanHanh.
        pub issuing_agency_code: String,
        #[serde(default)]
        pub issuing_agency_name: Option<String>,
        /// NguoiKy.
        pub signer: String,
        /// ThoiHanHieuLuc, `yyyyMMddHHmmss`; none when permanent.
        #[serde(default)]
        pub valid_until: Option<String>,
        /// ThoiHanVinhVien.
        pub permanent: bool,
        pub dossier_code: String,
        pub procedure_code: String,
        pub content_type: String,
        /// Why the content is missing or unusual (e.g. a signed result with no document).
        #[serde(default)]
        pub note: Option<String>,
        /// The metadata the signatures cover, as signed (its canonical JSON is hashed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub signed_metadata: Option<serde_json::Value>,
        /// The result's signatures, so whoever reuses the paper can verify it: the signer's,
        /// then the organization's seal (signer, key id, time, algorithm, content hash).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub signatures: Vec<crate::signing::SignatureRecord>,
    }

    /// `POST /khodl/papers`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PushPaper {
        pub metadata: PaperMetadata,
        /// The content, standard base64; empty when the result has no document.
        pub content: String,
        /// SHA-256 of the decoded content, hex.
        pub sha256: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PushAnswer {
        pub paper_id: String,
        pub sha256: String,
        pub size: u64,
        /// False when the portal already held this paper with the same content.
        pub created: bool,
    }

    /// A stored paper as listed: metadata, hash and size, no content.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PaperInfo {
        #[serde(flatten)]
        pub metadata: PaperMetadata,
        pub sha256: String,
        pub size: u64,
        pub stored_at: String,
    }

    /// `GET /khodl/papers?owner_id=&result_code=`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PaperList {
        pub papers: Vec<PaperInfo>,
    }
}

// ---------------------------------------------------------------------------------------------
// Mapping engine state to the wire
// ---------------------------------------------------------------------------------------------

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
fn open_round(d: &Dossier) -> Vec<wire::SupplementRound> {
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
fn result_name(catalog: Option<&ResultCatalog>, s: &Signature) -> String {
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

fn calendar_time(from: DateTime<Utc>, period: Period) -> Option<DateTime<Utc>> {
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
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// Where the portal (or its adapter, or the simulator) is and how to talk to it.
#[derive(Clone)]
pub struct PortalConfig {
    /// Base URL of the contract, e.g. `http://127.0.0.1:8090/` (a path prefix is kept).
    pub base_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole request and its answer. Keep it below the engine's
    /// `hook_timeout`, so a slow portal fails as a typed timeout rather than a cut-off hook.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for PortalConfig {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl PortalConfig {
    /// A configuration with the default timeouts: 5 s to connect, 15 s per request.
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> PortalConfig {
        PortalConfig {
            base_url: base_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Why a call to the portal failed.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("invalid portal configuration: {0}")]
    Config(String),
    #[error("the portal did not answer {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("cannot reach the portal for {what}: {message}")]
    Unreachable { what: String, message: String },
    #[error("the portal refused the credentials of client `{client_id}`: {message}")]
    Unauthorized { client_id: String, message: String },
    #[error("the portal failed on {what} ({status} {code}): {message}")]
    Server {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("the portal rejected {what} ({status} {code}): {message}")]
    Rejected {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the portal to {what}: {message}")]
    InvalidResponse { what: String, message: String },
    #[error(
        "content of paper {paper_id} from the portal does not match its hash: expected {expected}, got {actual}"
    )]
    HashMismatch {
        paper_id: String,
        expected: String,
        actual: String,
    },
}

impl PortalError {
    /// Whether the same call may succeed later: timeouts, network failures, 5xx, 408 and
    /// 429, and content garbled in transit. A refusal (4xx) or bad credentials need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            PortalError::Timeout { .. }
            | PortalError::Unreachable { .. }
            | PortalError::Server { .. }
            | PortalError::HashMismatch { .. } => true,
            PortalError::Rejected { status, .. } => matches!(status, 408 | 429),
            PortalError::Config(_)
            | PortalError::Unauthorized { .. }
            | PortalError::InvalidResponse { .. } => false,
        }
    }

    /// The HTTP status the portal answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PortalError::Server { status, .. } | PortalError::Rejected { status, .. } => {
                Some(*status)
            }
            PortalError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }
}

/// A bearer token and when to stop using it.
struct Token {
    value: String,
    refresh_at: Instant,
}

impl From<&wire::TokenResponse> for Token {
    fn from(t: &wire::TokenResponse) -> Token {
        // Refresh a little early (a tenth of the lifetime, at most 60 s), so a token does not
        // expire between being read here and reaching the portal.
        let life = Duration::from_secs(t.expires_in);
        let margin = (life / 10).min(Duration::from_secs(60));
        Token {
            value: t.access_token.clone(),
            refresh_at: Instant::now() + life.saturating_sub(margin),
        }
    }
}

struct ClientInner {
    http: reqwest::Client,
    base: Url,
    config: PortalConfig,
    /// One token for all calls; the lock also keeps concurrent callers from each fetching one.
    token: tokio::sync::Mutex<Option<Token>>,
}

/// A client of the portal contract. Cheap to clone; clones share the connection pool and
/// the token.
#[derive(Clone)]
pub struct PortalClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for PortalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalClient")
            .field("base_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The full chain of an error's causes: reqwest's top-level message alone ("error sending
/// request") says nothing an operator can act on.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

impl PortalClient {
    pub fn new(config: PortalConfig) -> Result<PortalClient, PortalError> {
        let mut base = Url::parse(&config.base_url)
            .map_err(|e| PortalError::Config(format!("base URL `{}`: {e}", config.base_url)))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(PortalError::Config(format!(
                "base URL `{}` must be an http(s) URL",
                config.base_url
            )));
        }
        // `Url::join` drops the last path segment unless the path ends with a slash.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("tthc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PortalError::Config(causes(&e)))?;
        Ok(PortalClient {
            inner: Arc::new(ClientInner {
                http,
                base,
                config,
                token: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn config(&self) -> &PortalConfig {
        &self.inner.config
    }

    /// The URL of an endpoint; each segment is percent-encoded (paper ids hold dots and
    /// dashes, and whatever else an adapter chooses).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> PortalError {
        if e.is_timeout() {
            PortalError::Timeout {
                what: what.to_owned(),
                timeout: self.inner.config.request_timeout,
            }
        } else if e.is_decode() || e.is_body() && !e.is_request() {
            PortalError::InvalidResponse {
                what: what.to_owned(),
                message: causes(&e),
            }
        } else {
            PortalError::Unreachable {
                what: what.to_owned(),
                message: causes(&e),
            }
        }
    }

    /// Turns a non-2xx answer into an error, reading the contract's `{code, message}` body
    /// when there is one.
    async fn error_from(&self, what: &str, response: reqwest::Response) -> PortalError {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<wire::ErrorBody>(&text) {
            Ok(b) => (b.code, b.message),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                text.chars().take(300).collect(),
            ),
        };
        if status == StatusCode::UNAUTHORIZED {
            PortalError::Unauthorized {
                client_id: self.inner.config.client_id.clone(),
                message,
            }
        } else if status.is_server_error() {
            PortalError::Server {
                what: what.to_owned(),
                status: status.as_u16(),
                code,
                message,
            }
        } else {
            PortalError::Rejected {
                what: what.to_owned(),
                status: status.as_u16(),
                code,
                message,
            }
        }
    }

    /// Fetches a new token with the client credentials and keeps it for the next calls.
    pub async fn fetch_token(&self) -> Result<wire::TokenResponse, PortalError> {
        let mut slot = self.inner.token.lock().await;
        let fresh = self.request_token().await?;
        *slot = Some(Token::from(&fresh));
        Ok(fresh)
    }

    async fn request_token(&self) -> Result<wire::TokenResponse, PortalError> {
        let what = "POST /auth/token";
        let body = wire::TokenRequest {
            client_id: self.inner.config.client_id.clone(),
            client_secret: self.inner.config.client_secret.clone(),
        };
        let response = self
            .inner
            .http
            .post(self.url(&["auth", "token"]))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(what, e))?;
        if !response.status().is_success() {
            return Err(self.error_from(what, response).await);
        }
        let token: wire::TokenResponse = self.read_json(what, response).await?;
        if token.access_token.is_empty() {
            return Err(PortalError::InvalidResponse {
                what: what.to_owned(),
                message: "empty access_token".into(),
            });
        }
        Ok(token)
    }

    /// The current token, fetched when there is none or it is about to expire.
    async fn bearer(&self) -> Result<String, PortalError> {
        let mut slot = self.inner.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let fresh = self.request_token().await?;
        *slot = Some(Token::from(&fresh));
        Ok(fresh.access_token)
    }

    /// Drops `used` if it is still the cached token (another caller may have replaced it).
    async fn forget(&self, used: &str) {
        let mut slot = self.inner.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == used) {
            *slot = None;
        }
    }

    /// One authenticated call. On 401 the token is fetched again and the call made once more
    /// (tokens expire or are revoked, e.g. when the portal restarts).
    async fn call(
        &self,
        method: Method,
        url: Url,
        what: &str,
        idempotency_key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, PortalError> {
        let mut refreshed = false;
        loop {
            let token = self.bearer().await?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {token}"));
            if let Some(key) = idempotency_key {
                request = request.header(IDEMPOTENCY_KEY, key);
            }
            if let Some(b) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.transport_error(what, e))?;
            if response.status() == StatusCode::UNAUTHORIZED && !refreshed {
                self.forget(&token).await;
                refreshed = true;
                continue;
            }
            if !response.status().is_success() {
                return Err(self.error_from(what, response).await);
            }
            return Ok(response);
        }
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        what: &str,
        response: reqwest::Response,
    ) -> Result<T, PortalError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(what, e))?;
        serde_json::from_slice(&bytes).map_err(|e| PortalError::InvalidResponse {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        what: &str,
        idempotency_key: &str,
        body: &B,
    ) -> Result<T, PortalError> {
        if idempotency_key.is_empty() {
            return Err(PortalError::Config(format!(
                "{what} needs an idempotency key"
            )));
        }
        let body = serde_json::to_vec(body).map_err(|e| PortalError::Config(e.to_string()))?;
        let response = self
            .call(
                Method::POST,
                self.url(segments),
                what,
                Some(idempotency_key),
                Some(body),
            )
            .await?;
        self.read_json(what, response).await
    }

    /// `POST /dossiers/sync`.
    pub async fn sync_dossier(
        &self,
        idempotency_key: &str,
        dossier: &wire::SyncDossier,
    ) -> Result<wire::SyncAnswer, PortalError> {
        let what = format!("sync of dossier {}", dossier.dossier_code);
        self.write(&["dossiers", "sync"], &what, idempotency_key, dossier)
            .await
    }

    /// `GET /dossiers/{code}`: the latest state the portal holds.
    pub async fn synced_dossier(&self, code: &str) -> Result<wire::SyncedDossier, PortalError> {
        let what = format!("GET /dossiers/{code}");
        let response = self
            .call(
                Method::GET,
                self.url(&["dossiers", code]),
                &what,
                None,
                None,
            )
            .await?;
        self.read_json(&what, response).await
    }

    /// `POST /khodl/papers`.
    pub async fn push_paper(
        &self,
        idempotency_key: &str,
        paper: &wire::PushPaper,
    ) -> Result<wire::PushAnswer, PortalError> {
        let what = format!("push of paper {}", paper.metadata.paper_id);
        self.write(&["khodl", "papers"], &what, idempotency_key, paper)
            .await
    }

    /// `GET /khodl/papers?owner_id=&result_code=`: an owner's papers, optionally of one type.
    pub async fn list_papers(
        &self,
        owner_id: &str,
        result_code: Option<&str>,
    ) -> Result<Vec<wire::PaperInfo>, PortalError> {
        let mut url = self.url(&["khodl", "papers"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("owner_id", owner_id);
            if let Some(code) = result_code {
                q.append_pair("result_code", code);
            }
        }
        let what = "GET /khodl/papers";
        let response = self.call(Method::GET, url, what, None, None).await?;
        let list: wire::PaperList = self.read_json(what, response).await?;
        Ok(list.papers)
    }

    /// `GET /khodl/papers/{id}`.
    pub async fn paper(&self, paper_id: &str) -> Result<wire::PaperInfo, PortalError> {
        let what = format!("GET /khodl/papers/{paper_id}");
        let response = self
            .call(
                Method::GET,
                self.url(&["khodl", "papers", paper_id]),
                &what,
                None,
                None,
            )
            .await?;
        self.read_json(&what, response).await
    }

    /// `GET /khodl/papers/{id}/content`: the bytes, checked against the `X-Content-SHA256`
    /// header. Returns the content and its hash.
    pub async fn paper_content(&self, paper_id: &str) -> Result<(Vec<u8>, String), PortalError> {
        let what = format!("GET /khodl/papers/{paper_id}/content");
        let response = self
            .call(
                Method::GET,
                self.url(&["khodl", "papers", paper_id, "content"]),
                &what,
                None,
                None,
            )
            .await?;
        let expected = header_text(response.headers(), CONTENT_SHA256).ok_or_else(|| {
            PortalError::InvalidResponse {
                what: what.clone(),
                message: format!("no {CONTENT_SHA256} header"),
            }
        })?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&what, e))?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(PortalError::HashMismatch {
                paper_id: paper_id.to_owned(),
                expected,
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// The hooks
// ---------------------------------------------------------------------------------------------

/// Where the push hook reads a signed result's bytes: the blob store, addressed by SHA-256
/// (hex). `None` when it has no such content.
///
/// The call is synchronous; the hook runs it on a blocking thread, so reading a file is fine.
pub trait ContentSource: Send + Sync {
    fn content(&self, sha256: &str) -> Option<Vec<u8>>;
}

impl<F> ContentSource for F
where
    F: Fn(&str) -> Option<Vec<u8>> + Send + Sync,
{
    fn content(&self, sha256: &str) -> Option<Vec<u8>> {
        self(sha256)
    }
}

/// The outcome text of a failed attempt: what failed, and whether waiting can fix it (the
/// engine retries either way; a non-retryable failure will end in an incident).
fn failed(hook: &str, what: &str, e: &PortalError) -> HookOutcome {
    let advice = if e.is_retryable() {
        "retryable"
    } else {
        "not retryable: fix the cause, then retry the incident"
    };
    HookOutcome::Failed {
        error: format!("{hook}: {what}: {e} ({advice})"),
    }
}

/// `portal.sync_dossier`: sends the dossier's current state to the portal.
pub struct PortalSyncHook {
    client: PortalClient,
    history: Option<Store>,
    catalog: Option<ResultCatalog>,
}

impl PortalSyncHook {
    pub fn new(client: PortalClient) -> PortalSyncHook {
        PortalSyncHook {
            client,
            history: None,
            catalog: None,
        }
    }

    /// Reads the dossier's events from `store` to send every supplement round with its due
    /// dates; without it only the open round is sent (plus the count).
    pub fn with_history(mut self, store: Store) -> PortalSyncHook {
        self.history = Some(store);
        self
    }

    /// Names results as the catalog does.
    pub fn with_catalog(mut self, catalog: ResultCatalog) -> PortalSyncHook {
        self.catalog = Some(catalog);
        self
    }

    /// The payload this hook sends for `request`.
    pub async fn payload(&self, request: &HookRequest<'_>) -> Result<wire::SyncDossier, String> {
        let d = request.dossier;
        let supplements = match &self.history {
            Some(store) => {
                // Read outside any transaction; only events up to the state being synced.
                let events = store
                    .events(&d.code)
                    .await
                    .map_err(|e| format!("cannot read the history of {}: {e}", d.code))?;
                supplement_rounds(&events, d.seq)
            }
            None => open_round(d),
        };
        Ok(sync_payload(
            d,
            &request.procedure.procedure().agency.field,
            supplements,
            self.catalog.as_ref(),
        ))
    }
}

impl HookHandler for PortalSyncHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            const HOOK: &str = "portal.sync_dossier";
            let payload = match self.payload(&request).await {
                Ok(p) => p,
                Err(error) => {
                    return HookOutcome::Failed {
                        error: format!("{HOOK}: {error}"),
                    };
                }
            };
            match self
                .client
                .sync_dossier(&request.idempotency_key, &payload)
                .await
            {
                Ok(answer) => HookOutcome::Succeeded {
                    detail: json!({
                        "dossier_code": answer.dossier_code,
                        "sequence": payload.sequence,
                        "status": payload.status,
                        "applied": answer.applied,
                        "portal_sequence": answer.sequence,
                    }),
                    notification: None,
                },
                // The portal holds an answer for this key with another body: an earlier attempt
                // of this job was applied (its answer was lost) and this retry read a newer
                // state, which the later sync job scheduled by that change carries.
                Err(PortalError::Rejected {
                    status: 409, code, ..
                }) if code == "idempotency_key_reused" => HookOutcome::Succeeded {
                    detail: json!({
                        "sequence": payload.sequence,
                        "status": payload.status,
                        "already_applied": true,
                    }),
                    notification: None,
                },
                Err(e) => failed(HOOK, &format!("sequence {}", payload.sequence), &e),
            }
        })
    }
}

/// `portal.push_result`: pushes every signed result of the dossier to the owner's Kho DL on
/// the portal, one paper per signed result code, each under its own idempotency key derived
/// from the job's (`{job key}/{result code}`), so a retry after a partial failure re-sends
/// only what the portal does not have yet (it answers the rest from its idempotency record).
pub struct PortalPushHook {
    client: PortalClient,
    content: Arc<dyn ContentSource>,
    catalog: Option<ResultCatalog>,
    calendar: Option<Calendar>,
    agency_names: BTreeMap<String, String>,
}

/// Why a paper could not be prepared for the push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the content of {paper_id} (sha256 {sha256}) is not in the blob store")]
    MissingContent { paper_id: String, sha256: String },
    #[error(
        "the content of {paper_id} in the blob store does not match its hash: expected {expected}, got {actual}"
    )]
    ContentMismatch {
        paper_id: String,
        expected: String,
        actual: String,
    },
    #[error("reading the content of {paper_id} failed: {message}")]
    ContentRead { paper_id: String, message: String },
}

impl PortalPushHook {
    pub fn new(client: PortalClient, content: Arc<dyn ContentSource>) -> PortalPushHook {
        PortalPushHook {
            client,
            content,
            catalog: None,
            calendar: None,
            agency_names: BTreeMap::new(),
        }
    }

    /// Computes validity ends with the working-day calendar, as the local Kho DL does.
    pub fn with_calendar(mut self, calendar: Calendar) -> PortalPushHook {
        self.calendar = Some(calendar);
        self
    }

    /// Result names and default validities (`procedures/catalog/results.yaml`).
    pub fn with_catalog(mut self, catalog: ResultCatalog) -> PortalPushHook {
        self.catalog = Some(catalog);
        self
    }

    /// Agency names by code, sent as the issuing agency's name.
    pub fn with_agency_names(mut self, names: BTreeMap<String, String>) -> PortalPushHook {
        self.agency_names = names;
        self
    }

    /// The paper for one signed result, content included.
    pub async fn paper(
        &self,
        d: &Dossier,
        procedure: Option<&CompiledProcedure>,
        signature: &Signature,
    ) -> Result<wire::PushPaper, PushError> {
        let validity = result_validity(procedure, self.catalog.as_ref(), &signature.result_code);
        let metadata = paper_metadata(
            d,
            signature,
            valid_until(signature.at, validity, self.calendar.as_ref()),
            self.catalog.as_ref(),
            self.agency_names.get(&*d.agency_code).map(String::as_str),
        );
        let content = match &signature.document {
            None => Vec::new(),
            Some(doc) => {
                let source = self.content.clone();
                let sha = doc.sha256.clone();
                let bytes = tokio::task::spawn_blocking(move || source.content(&sha))
                    .await
                    .map_err(|e| PushError::ContentRead {
                        paper_id: metadata.paper_id.clone(),
                        message: e.to_string(),
                    })?
                    .ok_or_else(|| PushError::MissingContent {
                        paper_id: metadata.paper_id.clone(),
                        sha256: doc.sha256.clone(),
                    })?;
                // Never push bytes other than those signed: the hash is what the owner and
                // whoever reuses the paper will check.
                let actual = sha256_hex(&bytes);
                if !actual.eq_ignore_ascii_case(&doc.sha256) {
                    return Err(PushError::ContentMismatch {
                        paper_id: metadata.paper_id.clone(),
                        expected: doc.sha256.clone(),
                        actual,
                    });
                }
                bytes
            }
        };
        Ok(wire::PushPaper {
            sha256: sha256_hex(&content),
            content: base64::engine::general_purpose::STANDARD.encode(&content),
            metadata,
        })
    }
}

impl HookHandler for PortalPushHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            const HOOK: &str = "portal.push_result";
            let d = request.dossier;
            let mut pushed = Vec::new();
            let mut notes = Vec::new();
            for (i, signature) in d.signatures.iter().enumerate() {
                let paper = match self.paper(d, Some(request.procedure), signature).await {
                    Ok(p) => p,
                    Err(e) => {
                        return HookOutcome::Failed {
                            error: format!("{HOOK}: {e}"),
                        };
                    }
                };
                if let Some(note) = &paper.metadata.note {
                    notes.push(format!("{}: {note}", paper.metadata.paper_id));
                }
                let key = format!("{}/{}", request.idempotency_key, signature.result_code);
                match self.client.push_paper(&key, &paper).await {
                    Ok(answer) => pushed.push(json!({
                        "paper_id": answer.paper_id,
                        "sha256": answer.sha256,
                        "size": answer.size,
                        "created": answer.created,
                    })),
                    Err(e) => {
                        let what = format!(
                            "paper {} ({} of {})",
                            paper.metadata.paper_id,
                            i + 1,
                            d.signatures.len()
                        );
                        return failed(HOOK, &what, &e);
                    }
                }
            }
            if d.signatures.is_empty() {
                notes.push("the dossier has no signed result: nothing to push".to_owned());
            }
            HookOutcome::Succeeded {
                detail: json!({ "papers": pushed, "notes": notes }),
                notification: None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dossier::{Channel, Owner, OwnerId};
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn doc(provenance: Option<Value>) -> DocumentRef {
        DocumentRef {
            id: "doc-1".into(),
            component: "phieu_lltp".into(),
            name: "Phiếu LLTP số 1".into(),
            kind: None,
            sha256: "ab".repeat(32),
            size: 10,
            content_type: "application/pdf".into(),
            provenance,
        }
    }

    fn dossier() -> Dossier {
        let filed = crate::dossier::Event::Filed {
            code: "000.00.01.H59-260302-0001".into(),
            procedure_code: "2.000488".into(),
            procedure_version: 1,
            procedure_name: "Cấp Phiếu lý lịch tư pháp".into(),
            agency_code: "000.00.01.H59".into(),
            competent_agency: None,
            online_level: None,
            owner: Box::new(Owner {
                id: OwnerId::parse("001099012345").unwrap(),
                name: "Nguyễn Văn An".into(),
                email: None,
                phone: None,
            }),
            channel: Channel::Online,
            data: BTreeMap::new(),
            documents: vec![doc(None)],
        };
        Dossier::from_filed(at(2026, 3, 2, 1, 0), &filed).unwrap()
    }

    #[test]
    fn times_are_written_in_hanoi_time_to_the_second() {
        // 17:30 UTC is 00:30 the next day in Hà Nội (UTC+7).
        let t = Utc.with_ymd_and_hms(2026, 3, 2, 17, 30, 5).unwrap();
        assert_eq!(portal_time(t), "20260303003005");
        assert_eq!(parse_portal_time("20260303003005"), Some(t));
        for bad in [
            "2026030300300",
            "202603030030051",
            "20261303003005",
            "2026-03-03T00:",
            "20260230000000",
        ] {
            assert_eq!(parse_portal_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn status_channel_and_owner_type_use_the_portal_codes() {
        let mut d = dossier();
        let p = sync_payload(&d, "Lý lịch tư pháp", Vec::new(), None);
        assert_eq!(
            (p.status, p.channel, p.owner.owner_type),
            (1, 2, 1),
            "filed, online, a person"
        );
        assert_eq!(p.status_name, "Mới đăng ký");
        assert_eq!(p.sequence, 1);
        assert_eq!(p.filed_at, "20260302080000");
        assert_eq!(p.received_at, None);
        assert_eq!(p.online_level, None, "no level recorded, none sent");
        d.online_level = Some(OnlineLevel::Full);
        let p = sync_payload(&d, "Lý lịch tư pháp", Vec::new(), None);
        assert_eq!(p.online_level, Some(2), "fully online");
        d.online_level = None;

        d.status = Status::Returned;
        d.processed_at = Some(at(2026, 3, 10, 2, 0));
        d.returned_at = Some(at(2026, 3, 11, 3, 0));
        std::sync::Arc::make_mut(&mut d.owner).id = OwnerId::parse("0101234567").unwrap();
        d.channel = Channel::Postal;
        let p = sync_payload(&d, "", Vec::new(), None);
        assert_eq!((p.status, p.channel, p.owner.owner_type), (10, 3, 2));
        assert_eq!(p.finished_at.as_deref(), Some("20260310090000"));
        assert_eq!(p.returned_at.as_deref(), Some("20260311100000"));

        // Stopped without a result: finished when it closed.
        d.processed_at = None;
        d.status = Status::Stopped;
        d.closed_at = Some(at(2026, 3, 4, 1, 0));
        assert_eq!(
            sync_payload(&d, "", Vec::new(), None)
                .finished_at
                .as_deref(),
            Some("20260304080000")
        );
    }

    #[test]
    fn reuse_flags_follow_the_provenance() {
        let plain = submitted_file(&doc(None));
        assert_eq!(
            (plain.digitized, plain.reused, plain.from_portal_khodl),
            (false, 0, false)
        );
        assert_eq!(plain.component_code, "phieu_lltp");

        let scanned = submitted_file(&doc(Some(json!({"source": "digitized"}))));
        assert_eq!((scanned.digitized, scanned.reused), (true, 0));

        // A result of another procedure taken from the portal's Kho DL replaces the component.
        let from_portal = submitted_file(&doc(Some(
            json!({"source": "portal_khodl", "result_code": "KQ.LLTP.01"}),
        )));
        assert_eq!(from_portal.reused, 2);
        assert_eq!(
            from_portal.replaced_by_result_code.as_deref(),
            Some("KQ.LLTP.01")
        );
        assert!(from_portal.from_portal_khodl);

        // A digitized paper (no result code) reused from the local Kho DL.
        let local = submitted_file(&doc(Some(json!({"source": "khodl", "digitized": true}))));
        assert_eq!(
            (local.digitized, local.reused, local.from_portal_khodl),
            (true, 1, false)
        );
        assert_eq!(local.replaced_by_result_code, None);

        // What the engine records when the owner consents to reuse a paper from the portal.
        let consented = submitted_file(&doc(Some(json!({
            "reused": true, "paper_id": "P", "result_code": "KQ.LLTP.01", "from_portal": true
        }))));
        assert_eq!(
            (
                consented.reused,
                consented.replaced_by_result_code.as_deref(),
                consented.from_portal_khodl
            ),
            (2, Some("KQ.LLTP.01"), true)
        );
        let local_reuse = submitted_file(&doc(Some(
            json!({"reused": true, "result_code": "KQ.LLTP.01", "from_portal": false}),
        )));
        assert_eq!(
            (local_reuse.reused, local_reuse.from_portal_khodl),
            (2, false)
        );

        // Explicit flags win; an out-of-range `reused` is ignored.
        let explicit = submitted_file(&doc(Some(json!({"reused": 1, "from_portal_khodl": true}))));
        assert_eq!((explicit.reused, explicit.from_portal_khodl), (1, true));
        let odd = submitted_file(&doc(Some(json!({"reused": 7}))));
        assert_eq!(odd.reused, 0);
    }

    #[test]
    fn supplement_rounds_carry_the_due_dates_around_them() {
        let rec = |seq: u64, t: DateTime<Utc>, event: Event| EventRecord {
            dossier: "D".into(),
            seq,
            at: t,
            actor_id: "x".into(),
            actor_name: "x".into(),
            event,
            prev_hash: String::new(),
            hash: String::new(),
        };
        let due1 = at(2026, 3, 16, 1, 0);
        let due2 = at(2026, 3, 23, 1, 0);
        let events = vec![
            rec(2, at(2026, 3, 2, 1, 0), Event::Received { due_at: due1 }),
            rec(
                3,
                at(2026, 3, 3, 2, 0),
                Event::SupplementRequested {
                    reason: "Thiếu CCCD".into(),
                    missing: vec!["giay_to_tuy_than".into()],
                    remaining_minutes: None,
                },
            ),
            rec(
                4,
                at(2026, 3, 10, 2, 0),
                Event::Supplemented {
                    data: BTreeMap::new(),
                    documents: Vec::new(),
                    due_at: Some(due2),
                },
            ),
            rec(
                5,
                at(2026, 3, 11, 2, 0),
                Event::SupplementRequested {
                    reason: "Ảnh mờ".into(),
                    missing: Vec::new(),
                    remaining_minutes: None,
                },
            ),
        ];
        let rounds = supplement_rounds(&events, 5);
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0].due_before.as_deref(), Some("20260316080000"));
        assert_eq!(rounds[0].supplemented_at.as_deref(), Some("20260310090000"));
        assert_eq!(rounds[0].due_after.as_deref(), Some("20260323080000"));
        assert_eq!(rounds[1].round, 2);
        assert_eq!(rounds[1].due_before.as_deref(), Some("20260323080000"));
        assert_eq!(rounds[1].supplemented_at, None);
        // A state read at seq 4 does not see the second round.
        assert_eq!(supplement_rounds(&events, 4).len(), 1);
    }

    #[test]
    fn papers_get_validity_names_and_a_note_without_a_document() {
        let mut d = dossier();
        let signed = at(2026, 1, 31, 3, 0);
        std::sync::Arc::make_mut(&mut d.signatures).push(Signature {
            result_code: "KQ.LLTP.01".into(),
            number: Some("123/2026/LLTP".into()),
            document: None,
            signer: "Lãnh đạo Sở".into(),
            at: signed,
        });
        let catalog: ResultCatalog = serde_json::from_value(json!({"results": [{
            "code": "KQ.LLTP.01", "name": "Phiếu lý lịch tư pháp số 1",
            "procedure": "2.000488", "default_validity": {"months": 6}
        }]}))
        .unwrap();
        let validity = result_validity(None, Some(&catalog), "KQ.LLTP.01");
        assert_eq!(validity, Validity::For(Period::Months(6)));
        let end = valid_until(signed, validity, None);
        let m = paper_metadata(&d, &d.signatures[0], end, Some(&catalog), None);
        assert_eq!(m.paper_id, "000.00.01.H59-260302-0001:KQ.LLTP.01");
        assert_eq!(m.name, "Phiếu lý lịch tư pháp số 1");
        assert_eq!(m.issued_at, "20260131100000");
        // 31 January + 6 months is 31 July.
        assert_eq!(m.valid_until.as_deref(), Some("20260731100000"));
        assert!(!m.permanent);
        assert!(m.note.is_some(), "a result without a document is noted");
        assert_eq!(m.owner_id, "001099012345");

        let permanent = paper_metadata(&d, &d.signatures[0], None, None, None);
        assert!(permanent.permanent);
        assert_eq!(permanent.valid_until, None);
        assert_eq!(
            permanent.name, "KQ.LLTP.01",
            "no catalog: the code names it"
        );
        // Unknown results fall back to six months.
        assert_eq!(result_validity(None, None, "KQ.X"), DEFAULT_VALIDITY);
        // 31 August + 6 months ends on the last day of February.
        let end = valid_until(at(2026, 8, 31, 3, 0), DEFAULT_VALIDITY, None).unwrap();
        assert_eq!(portal_time(end), "20270228100000");
        // With the calendar, the end is the local Kho DL's: months agree, working days count
        // office days only.
        let cal = Calendar::default_vietnam().unwrap();
        assert_eq!(
            valid_until(signed, DEFAULT_VALIDITY, Some(&cal)),
            valid_until(signed, DEFAULT_VALIDITY, None)
        );
        let ten = Validity::For(Period::WorkingDays(10));
        assert_eq!(
            valid_until(signed, ten, Some(&cal)),
            Some(cal.add(signed, Period::WorkingDays(10)))
        );
    }

    #[test]
    fn results_are_listed_in_the_sync_under_their_paper_ids() {
        let mut d = dossier();
        std::sync::Arc::make_mut(&mut d.signatures).push(Signature {
            result_code: "KQ.LLTP.01".into(),
            number: None,
            document: Some(doc(None)),
            signer: "Lãnh đạo".into(),
            at: at(2026, 3, 9, 3, 0),
        });
        let p = sync_payload(&d, "", Vec::new(), None);
        assert_eq!(p.results.len(), 1);
        assert_eq!(p.results[0].paper_id, paper_id(&d.code, "KQ.LLTP.01"));
        assert_eq!(p.results[0].sha256.as_deref(), Some(&*"ab".repeat(32)));
        assert_eq!(p.files.len(), 1);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let server = PortalError::Server {
            what: "x".into(),
            status: 503,
            code: "unavailable".into(),
            message: "down".into(),
        };
        assert!(server.is_retryable());
        let rejected = |status| PortalError::Rejected {
            what: "x".into(),
            status,
            code: "c".into(),
            message: "m".into(),
        };
        assert!(!rejected(422).is_retryable());
        assert!(rejected(429).is_retryable());
        assert!(
            PortalError::Timeout {
                what: "x".into(),
                timeout: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(
            !PortalError::Unauthorized {
                client_id: "c".into(),
                message: "m".into()
            }
            .is_retryable()
        );
        let HookOutcome::Failed { error } = failed("portal.x", "sync", &server) else {
            panic!("a failure")
        };
        assert!(
            error.contains("503") && error.ends_with("(retryable)"),
            "{error}"
        );
    }

    #[test]
    fn the_base_url_keeps_its_path_prefix_and_encodes_segments() {
        let c =
            PortalClient::new(PortalConfig::new("http://127.0.0.1:9/adapter", "a", "b")).unwrap();
        assert_eq!(
            c.url(&["khodl", "papers", "a b/c"]).as_str(),
            "http://127.0.0.1:9/adapter/khodl/papers/a%20b%2Fc"
        );
        assert!(PortalClient::new(PortalConfig::new("not a url", "a", "b")).is_err());
        assert!(PortalClient::new(PortalConfig::new("ftp://x/", "a", "b")).is_err());
    }
}
