//! The local Kho DL (Kho quản lý dữ liệu điện tử của tổ chức, cá nhân): each owner's papers
//! with the metadata one-stop systems keep (Decree 45/2020 art. 16.3; Circular 01/2023/TT-VPCP
//! art. 24), their files in a content-addressed [`BlobStore`], and the `khodl.save` hook that
//! files a dossier's signed results into it.
//!
//! Papers are the owner's alone: every read takes the owner's identifier and never returns
//! another owner's paper, not even to say that it exists. A result stays hidden from its owner
//! until it is returned (seed §III), so reads leave hidden papers out unless the caller asks
//! for them with [`Visibility::IncludeHidden`] (officers do; the owner's own view does not).
//!
//! Saving is idempotent by the paper id the caller gives: saving it again stores nothing new,
//! so hook retries and duplicate job executions keep one paper.

mod blob;
mod hook;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{Backend, Store, sql, sql_dyn};

use crate::calendar::Calendar;
use crate::definition::Duration;
use crate::dossier::OwnerId;
use crate::signing::SignatureRecord;
use crate::store::{from_micros, micros};

pub use blob::{BlobError, BlobStore, DEFAULT_MAX_BLOB_BYTES, is_sha256_hex, sha256_hex};
pub use hook::{
    KhoDlSaveHook, KhoDlUnhideHook, PROVENANCE_SIGNATURES, PROVENANCE_SIGNED_METADATA, SavedPaper,
    result_paper_id,
};

/// How long a paper is valid when nothing says otherwise (DOMAIN.md: 6 months).
pub const DEFAULT_VALIDITY: Duration = Duration::Months(6);

/// Longest paper id accepted.
const MAX_ID_CHARS: usize = 160;
/// Longest text field accepted (a summary is the longest).
const MAX_TEXT_CHARS: usize = 8 * 1024;
/// Most papers one list returns.
pub const MAX_LIST: u32 = 1000;

/// Why the Kho DL refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KhoDlError {
    #[error("invalid paper: {0}")]
    Invalid(String),
    /// The id is taken by a paper with other content (or of another owner: the message is the
    /// same, so it tells nothing about other owners' papers).
    #[error("paper {id} already exists with different content")]
    Conflict { id: String },
    #[error("paper {id} not found")]
    NotFound { id: String },
    #[error("paper {id} is {from}: it cannot become {to}")]
    Approval {
        id: String,
        from: Approval,
        to: Approval,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored paper {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

impl KhoDlError {
    /// A stable code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            KhoDlError::Invalid(_) => "invalid_paper",
            KhoDlError::Conflict { .. } => "paper_conflict",
            KhoDlError::NotFound { .. } => "paper_not_found",
            KhoDlError::Approval { .. } => "approval_state",
            KhoDlError::Database(_) => "storage",
            KhoDlError::Corrupt { .. } => "storage_corrupt",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            KhoDlError::Database(_) => true,
            KhoDlError::Invalid(_)
            | KhoDlError::Conflict { .. }
            | KhoDlError::NotFound { .. }
            | KhoDlError::Approval { .. }
            | KhoDlError::Corrupt { .. } => false,
        }
    }
}

fn invalid(msg: impl Into<String>) -> KhoDlError {
    KhoDlError::Invalid(msg.into())
}

/// Component of a dossier, or result of a procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaperKind {
    Component,
    Result,
}

/// Approval of a stored paper (chờ phê duyệt / đã phê duyệt / từ chối).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    Awaiting,
    Approved,
    Rejected,
}

impl std::fmt::Display for Approval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::wire_name(self).as_str())
    }
}

/// Where the paper came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// A result this system issued.
    IssuedHere,
    /// Scanned at this system's one-stop desk.
    DigitizedHere,
    /// Taken from the portal's Kho DL.
    FromPortal,
}

/// Until when a paper is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaperValidity {
    /// ThoiHanVinhVien.
    Permanent,
    /// ThoiHanHieuLuc.
    Until(DateTime<Utc>),
}

impl PaperValidity {
    /// A validity as definitions and the catalog write it, counted from the issue date in the
    /// calendar's time zone.
    pub fn from_definition(
        validity: crate::definition::Validity,
        issued_at: DateTime<Utc>,
        calendar: &Calendar,
    ) -> PaperValidity {
        match validity {
            crate::definition::Validity::Permanent => PaperValidity::Permanent,
            crate::definition::Validity::For(d) => PaperValidity::Until(calendar.add(issued_at, d)),
        }
    }

    /// Whether a paper with this validity is still valid at `at`.
    pub fn is_valid_at(&self, at: DateTime<Utc>) -> bool {
        match self {
            PaperValidity::Permanent => true,
            PaperValidity::Until(end) => *end >= at,
        }
    }
}

/// The file of a paper, in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperFile {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
}

/// Who digitized the paper, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digitization {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// A paper to save: everything the caller knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewPaper {
    /// The caller's id for the paper: letters, digits and `. _ : -`. Saving the same id
    /// again stores nothing new.
    pub id: String,
    /// Mã giấy tờ.
    pub code: String,
    /// MaGiayToKhoQuocGia, when the national warehouse gave one.
    pub national_code: Option<String>,
    pub name: String,
    pub owner: OwnerId,
    pub owner_name: String,
    /// MaGiayTo: the result code when the paper is a TTHC result.
    pub paper_type: String,
    /// Số ký hiệu.
    pub number: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub issuing_agency: String,
    pub signer: Option<String>,
    /// Trích yếu nội dung.
    pub summary: Option<String>,
    /// `None`: [`DEFAULT_VALIDITY`] from the issue date.
    pub validity: Option<PaperValidity>,
    /// Phạm vi hiệu lực.
    pub scope: Option<String>,
    pub kind: PaperKind,
    pub digitized: Option<Digitization>,
    pub file: Option<PaperFile>,
    pub dossier_code: Option<String>,
    pub procedure_code: Option<String>,
    pub field: Option<String>,
    pub approval: Approval,
    /// A result saved before it is returned is hidden from its owner until then.
    pub hidden: bool,
    pub provenance: Provenance,
    /// What the source keeps about the paper (the portal's ids, the digitization record…).
    pub provenance_detail: Option<Value>,
    pub signatures: Vec<SignatureRecord>,
}

/// A stored paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paper {
    pub id: String,
    pub code: String,
    pub national_code: Option<String>,
    pub name: String,
    pub owner: OwnerId,
    pub owner_name: String,
    pub paper_type: String,
    pub number: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub issuing_agency: String,
    pub signer: Option<String>,
    pub summary: Option<String>,
    pub validity: PaperValidity,
    pub scope: Option<String>,
    pub kind: PaperKind,
    pub digitized: Option<Digitization>,
    pub file: Option<PaperFile>,
    pub dossier_code: Option<String>,
    pub procedure_code: Option<String>,
    pub field: Option<String>,
    pub approval: Approval,
    pub approval_by: Option<String>,
    pub approval_at: Option<DateTime<Utc>>,
    pub hidden: bool,
    pub provenance: Provenance,
    pub provenance_detail: Option<Value>,
    pub signatures: Vec<SignatureRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Paper {
    pub fn is_valid_at(&self, at: DateTime<Utc>) -> bool {
        self.validity.is_valid_at(at)
    }

    /// Whether the caller-given content equals `other`'s. What changes after saving (the
    /// hidden flag, approval, timestamps) is left out: a repeated save compares the rest.
    fn same_content(&self, other: &Paper) -> bool {
        let strip = |p: &Paper| Paper {
            hidden: false,
            approval: Approval::Awaiting,
            approval_by: None,
            approval_at: None,
            created_at: DateTime::<Utc>::MIN_UTC,
            updated_at: DateTime::<Utc>::MIN_UTC,
            ..p.clone()
        };
        strip(self) == strip(other)
    }
}

/// Which papers a read shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    /// What the owner may see: hidden results are left out.
    #[default]
    OwnerView,
    /// Hidden papers too: for officers of the agency.
    IncludeHidden,
}

/// Papers issued no longer ago than `age` before `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    pub age: Duration,
    pub now: DateTime<Utc>,
}

/// What to list of an owner's papers. The default lists every paper the owner may see, except
/// rejected ones, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PaperFilter {
    /// Paper types (result codes) to keep; empty keeps all.
    pub result_codes: Vec<String>,
    /// Keep only papers valid at this instant (validity end at or after it, or permanent).
    pub valid_at: Option<DateTime<Utc>>,
    /// Keep only papers issued at most this long ago.
    pub max_age: Option<MaxAge>,
    pub kind: Option<PaperKind>,
    pub visibility: Visibility,
    /// Rejected papers are left out unless asked for.
    pub include_rejected: bool,
    /// At most this many (capped at [`MAX_LIST`]; `None` is the cap).
    pub limit: Option<u32>,
}

impl PaperFilter {
    pub fn result_codes<S: AsRef<str>>(mut self, codes: &[S]) -> PaperFilter {
        self.result_codes = codes.iter().map(|c| c.as_ref().to_owned()).collect();
        self
    }

    pub fn valid_at(mut self, at: DateTime<Utc>) -> PaperFilter {
        self.valid_at = Some(at);
        self
    }

    pub fn max_age(mut self, age: Duration, now: DateTime<Utc>) -> PaperFilter {
        self.max_age = Some(MaxAge { age, now });
        self
    }

    pub fn include_hidden(mut self) -> PaperFilter {
        self.visibility = Visibility::IncludeHidden;
        self
    }
}

/// What a save did.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub paper: Paper,
    /// False when the paper was already there (a repeated save).
    pub created: bool,
}

/// The local Kho DL, on the engine's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KhoDl {
    store: Store,
    calendar: Arc<Calendar>,
}

fn parse_text<T: serde::de::DeserializeOwned>(
    id: &str,
    what: &str,
    s: &str,
) -> Result<T, KhoDlError> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| KhoDlError::Corrupt {
        id: id.to_owned(),
        reason: format!("unknown {what} `{s}`"),
    })
}

fn check_text(what: &str, s: &str, required: bool) -> Result<(), KhoDlError> {
    if required && s.trim().is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(format!(
            "{what} is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(invalid(format!("{what} holds control characters")));
    }
    Ok(())
}

/// A paper id: 1 to 160 of letters, digits and `. _ : -`, so it is safe in a URL path segment
/// and in logs.
pub fn check_paper_id(id: &str) -> Result<(), KhoDlError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "a paper id is 1 to {MAX_ID_CHARS} letters, digits and `. _ : -`"
        )))
    }
}

const COLUMNS: &str = "paper_id, code, national_code, name, owner_id, owner_name, paper_type,
    number, issued_at, issuing_agency, signer, summary, valid_until, permanent, scope, kind,
    digitized_by, digitized_at, sha256, size, content_type, dossier_code, procedure_code, field,
    approval, approval_by, approval_at, hidden, provenance, provenance_detail, signatures,
    created_at, updated_at";

impl KhoDl {
    /// A Kho DL on `pool` (the engine's store, whose migrations create its table). Validity
    /// periods are counted in `calendar`'s time zone.
    pub fn new(store: Store, calendar: Arc<Calendar>) -> KhoDl {
        KhoDl { store, calendar }
    }

    fn b(&self) -> Backend {
        self.store.backend()
    }

    /// The Kho DL on an engine's database, counting in its calendar.
    pub fn for_engine(engine: &crate::Engine) -> KhoDl {
        KhoDl::new(engine.store().clone(), Arc::new(engine.calendar().clone()))
    }

    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// Checks a new paper and resolves its validity.
    fn prepare(&self, p: NewPaper, now: DateTime<Utc>) -> Result<Paper, KhoDlError> {
        check_paper_id(&p.id)?;
        for (what, s, required) in [
            ("code", p.code.as_str(), true),
            ("name", &p.name, true),
            ("owner name", &p.owner_name, true),
            ("paper type", &p.paper_type, true),
            ("issuing agency", &p.issuing_agency, true),
        ] {
            check_text(what, s, required)?;
        }
        for (what, s) in [
            ("national code", &p.national_code),
            ("number", &p.number),
            ("signer", &p.signer),
            ("summary", &p.summary),
            ("scope", &p.scope),
            ("dossier code", &p.dossier_code),
            ("procedure code", &p.procedure_code),
            ("field", &p.field),
        ] {
            if let Some(s) = s {
                check_text(what, s, true)?;
            }
        }
        if let Some(f) = &p.file {
            if !is_sha256_hex(&f.sha256) {
                return Err(invalid("a file's sha256 is 64 lower-case hex digits"));
            }
            check_text("content type", &f.content_type, true)?;
            if i64::try_from(f.size).is_err() {
                return Err(invalid("the file size is out of range"));
            }
        }
        if let Some(d) = &p.digitized {
            check_text("digitized by", &d.by, true)?;
        }
        let validity = match p.validity {
            Some(v) => v,
            None => PaperValidity::Until(self.calendar.add(p.issued_at, DEFAULT_VALIDITY)),
        };
        if let PaperValidity::Until(end) = validity
            && end < p.issued_at
        {
            return Err(invalid("the validity ends before the issue date"));
        }
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        // Times are kept to the microsecond, like the store: a paper read back compares equal.
        let trunc =
            |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t);
        Ok(Paper {
            id: p.id,
            code: p.code,
            national_code: p.national_code,
            name: p.name,
            owner: p.owner,
            owner_name: p.owner_name,
            paper_type: p.paper_type,
            number: p.number,
            issued_at: trunc(p.issued_at),
            issuing_agency: p.issuing_agency,
            signer: p.signer,
            summary: p.summary,
            validity: match validity {
                PaperValidity::Until(t) => PaperValidity::Until(trunc(t)),
                PaperValidity::Permanent => PaperValidity::Permanent,
            },
            scope: p.scope,
            kind: p.kind,
            digitized: p.digitized.map(|d| Digitization {
                by: d.by,
                at: trunc(d.at),
            }),
            file: p.file,
            dossier_code: p.dossier_code,
            procedure_code: p.procedure_code,
            field: p.field,
            approval: p.approval,
            approval_by: None,
            approval_at: None,
            hidden: p.hidden,
            provenance: p.provenance,
            provenance_detail: p.provenance_detail,
            signatures: p
                .signatures
                .into_iter()
                .map(|mut s| {
                    s.signed_at = trunc(s.signed_at);
                    s
                })
                .collect(),
            created_at: now,
            updated_at: now,
        })
    }

    /// Saves a paper. Saving an id already stored with the same content stores nothing and
    /// returns the stored paper (as it is now: perhaps unhidden or approved since); the same
    /// id with other content is [`KhoDlError::Conflict`].
    pub async fn save(&self, paper: NewPaper, now: DateTime<Utc>) -> Result<Saved, KhoDlError> {
        let paper = self.prepare(paper, now)?;
        let signatures = serde_json::to_string(&paper.signatures)
            .map_err(|e| invalid(format!("signatures: {e}")))?;
        let detail = match &paper.provenance_detail {
            None => None,
            Some(v) => Some(
                serde_json::to_string(v).map_err(|e| invalid(format!("provenance detail: {e}")))?,
            ),
        };
        let (valid_until, permanent) = match paper.validity {
            PaperValidity::Permanent => (None, true),
            PaperValidity::Until(t) => (Some(micros(t)), false),
        };
        // INSERT OR IGNORE alone decides who wins between concurrent saves of one id; the
        // loser then compares what is stored with what it meant to store.
        let turn = self.store.write_turn().await;
        let inserted = sqlx::query(sql(
            self.b(),
            "INSERT INTO khodl_papers (paper_id, code, national_code, name, owner_id, owner_name,
                paper_type, number, issued_at, issuing_agency, signer, summary, valid_until,
                permanent, scope, kind, digitized_by, digitized_at, sha256, size, content_type,
                dossier_code, procedure_code, field, approval, approval_by, approval_at, hidden,
                provenance, provenance_detail, signatures, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                NULL, NULL, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (paper_id) DO NOTHING",
        ))
        .bind(&paper.id)
        .bind(&paper.code)
        .bind(&paper.national_code)
        .bind(&paper.name)
        .bind(paper.owner.as_str())
        .bind(&paper.owner_name)
        .bind(&paper.paper_type)
        .bind(&paper.number)
        .bind(micros(paper.issued_at))
        .bind(&paper.issuing_agency)
        .bind(&paper.signer)
        .bind(&paper.summary)
        .bind(valid_until)
        .bind(i64::from(permanent))
        .bind(&paper.scope)
        .bind(crate::wire_name(&paper.kind))
        .bind(paper.digitized.as_ref().map(|d| d.by.clone()))
        .bind(paper.digitized.as_ref().map(|d| micros(d.at)))
        .bind(paper.file.as_ref().map(|f| f.sha256.clone()))
        .bind(paper.file.as_ref().map(|f| f.size as i64))
        .bind(paper.file.as_ref().map(|f| f.content_type.clone()))
        .bind(&paper.dossier_code)
        .bind(&paper.procedure_code)
        .bind(&paper.field)
        .bind(crate::wire_name(&paper.approval))
        .bind(i64::from(paper.hidden))
        .bind(crate::wire_name(&paper.provenance))
        .bind(detail)
        .bind(signatures)
        .bind(micros(paper.created_at))
        .bind(micros(paper.updated_at))
        .execute(self.store.pool())
        .await?
        .rows_affected()
            == 1;
        drop(turn);
        if inserted {
            return Ok(Saved {
                paper,
                created: true,
            });
        }
        let conflict = || KhoDlError::Conflict {
            id: paper.id.clone(),
        };
        let existing = self
            .get(&paper.owner, &paper.id, Visibility::IncludeHidden)
            .await?
            .ok_or_else(conflict)?;
        if existing.same_content(&paper) {
            Ok(Saved {
                paper: existing,
                created: false,
            })
        } else {
            Err(conflict())
        }
    }

    /// One of the owner's papers. Another owner's paper is `None`, like a missing one.
    pub async fn get(
        &self,
        owner: &OwnerId,
        paper_id: &str,
        visibility: Visibility,
    ) -> Result<Option<Paper>, KhoDlError> {
        let hidden = match visibility {
            Visibility::IncludeHidden => "",
            Visibility::OwnerView => " AND hidden = 0",
        };
        let statement = format!(
            "SELECT {COLUMNS} FROM khodl_papers WHERE owner_id = ? AND paper_id = ?{hidden}"
        );
        let row = sqlx::query(sql_dyn(self.b(), statement))
            .bind(owner.as_str())
            .bind(paper_id)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(paper_of).transpose()
    }

    /// The owner's papers, newest first, as the filter says.
    pub async fn list(
        &self,
        owner: &OwnerId,
        filter: &PaperFilter,
    ) -> Result<Vec<Paper>, KhoDlError> {
        let limit = filter.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
        // The statement carries only the conditions the filter asks for.
        let mut statement = format!("SELECT {COLUMNS} FROM khodl_papers WHERE owner_id = ?");
        if filter.visibility != Visibility::IncludeHidden {
            statement.push_str(" AND hidden = 0");
        }
        if !filter.include_rejected {
            statement.push_str(" AND approval <> 'rejected'");
        }
        if !filter.result_codes.is_empty() {
            let marks = vec!["?"; filter.result_codes.len()].join(", ");
            statement.push_str(&format!(" AND paper_type IN ({marks})"));
        }
        if filter.valid_at.is_some() {
            statement.push_str(" AND (permanent = 1 OR valid_until >= ?)");
        }
        if filter.kind.is_some() {
            statement.push_str(" AND kind = ?");
        }
        statement.push_str(" ORDER BY issued_at DESC, paper_id LIMIT ?");
        let mut q = sqlx::query(sql_dyn(self.b(), statement)).bind(owner.as_str());
        for code in &filter.result_codes {
            q = q.bind(code.clone());
        }
        if let Some(at) = filter.valid_at {
            q = q.bind(micros(at));
        }
        if let Some(k) = filter.kind {
            q = q.bind(crate::wire_name(&k));
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(self.store.pool())
            .await?;
        let mut papers = Vec::with_capacity(rows.len());
        for row in &rows {
            let paper = paper_of(row)?;
            // Age is counted like validity, in the calendar (months are calendar months), so
            // it is checked here rather than in SQL. Rows come newest first, so what passes is
            // the newest part of what the limit kept.
            if let Some(m) = filter.max_age
                && self.calendar.add(paper.issued_at, m.age) < m.now
            {
                continue;
            }
            papers.push(paper);
        }
        Ok(papers)
    }

    /// Shows the owner the papers of a dossier (when its result is returned). Returns how many
    /// were hidden until now.
    pub async fn unhide_dossier(
        &self,
        owner: &OwnerId,
        dossier_code: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, KhoDlError> {
        let turn = self.store.write_turn().await;
        let done = sqlx::query(sql(
            self.b(),
            "UPDATE khodl_papers SET hidden = 0, updated_at = ?
             WHERE owner_id = ? AND dossier_code = ? AND hidden = 1",
        ))
        .bind(micros(now))
        .bind(owner.as_str())
        .bind(dossier_code)
        .execute(self.store.pool())
        .await?;
        drop(turn);
        Ok(done.rows_affected())
    }

    /// Records the decision on a paper awaiting approval. Deciding again the same way is a
    /// no-op; changing a decision is refused.
    pub async fn set_approval(
        &self,
        owner: &OwnerId,
        paper_id: &str,
        approval: Approval,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Paper, KhoDlError> {
        check_text("approved by", by, true)?;
        let not_found = || KhoDlError::NotFound {
            id: paper_id.to_owned(),
        };
        let current = self
            .get(owner, paper_id, Visibility::IncludeHidden)
            .await?
            .ok_or_else(not_found)?;
        if current.approval == approval {
            return Ok(current);
        }
        if current.approval != Approval::Awaiting || approval == Approval::Awaiting {
            return Err(KhoDlError::Approval {
                id: paper_id.to_owned(),
                from: current.approval,
                to: approval,
            });
        }
        // The state is checked again in the UPDATE, so two officers deciding at once cannot
        // both win.
        let turn = self.store.write_turn().await;
        let done = sqlx::query(sql(
            self.b(),
            "UPDATE khodl_papers SET approval = ?, approval_by = ?, approval_at = ?, updated_at = ?
             WHERE owner_id = ? AND paper_id = ? AND approval = 'awaiting'",
        ))
        .bind(crate::wire_name(&approval))
        .bind(by)
        .bind(micros(now))
        .bind(micros(now))
        .bind(owner.as_str())
        .bind(paper_id)
        .execute(self.store.pool())
        .await?;
        drop(turn);
        let after = self
            .get(owner, paper_id, Visibility::IncludeHidden)
            .await?
            .ok_or_else(not_found)?;
        if done.rows_affected() == 0 && after.approval != approval {
            return Err(KhoDlError::Approval {
                id: paper_id.to_owned(),
                from: after.approval,
                to: approval,
            });
        }
        Ok(after)
    }
}

fn paper_of(row: &AnyRow) -> Result<Paper, KhoDlError> {
    let id: String = row.try_get("paper_id")?;
    let corrupt = |reason: String| KhoDlError::Corrupt {
        id: id.clone(),
        reason,
    };
    let owner: String = row.try_get("owner_id")?;
    let owner = OwnerId::parse(&owner).map_err(|e| corrupt(e.to_string()))?;
    let permanent = row.try_get::<i64, _>("permanent")? != 0;
    let valid_until: Option<i64> = row.try_get("valid_until")?;
    let validity = match (permanent, valid_until) {
        (true, _) => PaperValidity::Permanent,
        (false, Some(t)) => PaperValidity::Until(from_micros(t)),
        (false, None) => return Err(corrupt("no validity end and not permanent".into())),
    };
    let digitized = match (
        row.try_get::<Option<String>, _>("digitized_by")?,
        row.try_get::<Option<i64>, _>("digitized_at")?,
    ) {
        (Some(by), Some(at)) => Some(Digitization {
            by,
            at: from_micros(at),
        }),
        _ => None,
    };
    let file = match (
        row.try_get::<Option<String>, _>("sha256")?,
        row.try_get::<Option<i64>, _>("size")?,
        row.try_get::<Option<String>, _>("content_type")?,
    ) {
        (Some(sha256), Some(size), Some(content_type)) => Some(PaperFile {
            sha256,
            size: u64::try_from(size).map_err(|_| corrupt("negative file size".into()))?,
            content_type,
        }),
        _ => None,
    };
    let provenance_detail = match row.try_get::<Option<String>, _>("provenance_detail")? {
        None => None,
        Some(s) => {
            Some(serde_json::from_str(&s).map_err(|e| corrupt(format!("provenance detail: {e}")))?)
        }
    };
    let signatures: String = row.try_get("signatures")?;
    let signatures =
        serde_json::from_str(&signatures).map_err(|e| corrupt(format!("signatures: {e}")))?;
    let kind: String = row.try_get("kind")?;
    let approval: String = row.try_get("approval")?;
    let provenance: String = row.try_get("provenance")?;
    Ok(Paper {
        code: row.try_get("code")?,
        national_code: row.try_get("national_code")?,
        name: row.try_get("name")?,
        owner,
        owner_name: row.try_get("owner_name")?,
        paper_type: row.try_get("paper_type")?,
        number: row.try_get("number")?,
        issued_at: from_micros(row.try_get("issued_at")?),
        issuing_agency: row.try_get("issuing_agency")?,
        signer: row.try_get("signer")?,
        summary: row.try_get("summary")?,
        validity,
        scope: row.try_get("scope")?,
        kind: parse_text(&id, "kind", &kind)?,
        digitized,
        file,
        dossier_code: row.try_get("dossier_code")?,
        procedure_code: row.try_get("procedure_code")?,
        field: row.try_get("field")?,
        approval: parse_text(&id, "approval", &approval)?,
        approval_by: row.try_get("approval_by")?,
        approval_at: row
            .try_get::<Option<i64>, _>("approval_at")?
            .map(from_micros),
        hidden: row.try_get::<i64, _>("hidden")? != 0,
        provenance: parse_text(&id, "provenance", &provenance)?,
        provenance_detail,
        signatures,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
        id,
    })
}
