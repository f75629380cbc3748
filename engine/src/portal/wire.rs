//! The contract's JSON types (`docs/portal-api.md`). Field names are tthc's; the document maps
//! each to its `DongBoHoSoMC` counterpart for the adapter.

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
