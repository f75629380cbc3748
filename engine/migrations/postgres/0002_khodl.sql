-- PostgreSQL twin of ../sqlite/0002_khodl.sql: same tables and columns; integers (flags 0/1 included) are BIGINT.
-- The local Kho DL (Kho quản lý dữ liệu điện tử của tổ chức, cá nhân): the papers of each owner,
-- with the metadata one-stop systems keep (Decree 45/2020 art. 16.3, Circular 01/2023/TT-VPCP
-- art. 24). Unlike the dossier tables this is not a read model of the event log: it is the
-- owner's warehouse, written by the `khodl.save` hook and by digitization at the one-stop desk.
-- The files themselves live in the content-addressed blob store under `sha256`.
-- Times are microseconds since the Unix epoch (UTC).

CREATE TABLE khodl_papers (
    paper_id          TEXT    PRIMARY KEY,           -- caller-given; saving it again stores nothing new
    code              TEXT    NOT NULL,              -- mã giấy tờ (Ma)
    national_code     TEXT,                          -- MaGiayToKhoQuocGia
    name              TEXT    NOT NULL,              -- Ten
    owner_id          TEXT    NOT NULL,              -- MaDinhDanh
    owner_name        TEXT    NOT NULL,              -- ChuGiayTo
    paper_type        TEXT    NOT NULL,              -- MaGiayTo: the result code for a TTHC result
    number            TEXT,                          -- SoKyHieu
    issued_at         BIGINT NOT NULL,              -- NgayBanHanh
    issuing_agency    TEXT    NOT NULL,              -- CoQuanBanHanh
    signer            TEXT,                          -- NguoiKy
    summary           TEXT,                          -- TrichYeuNoiDung
    valid_until       BIGINT,                       -- ThoiHanHieuLuc; NULL when permanent
    permanent         BIGINT NOT NULL CHECK (permanent IN (0, 1)),  -- ThoiHanVinhVien
    scope             TEXT,                          -- PhamViHieuLuc
    kind              TEXT    NOT NULL CHECK (kind IN ('component', 'result')),
    digitized_by      TEXT,
    digitized_at      BIGINT,
    sha256            TEXT,
    size              BIGINT,
    content_type      TEXT,
    dossier_code      TEXT,
    procedure_code    TEXT,
    field             TEXT,                          -- lĩnh vực
    approval          TEXT    NOT NULL CHECK (approval IN ('awaiting', 'approved', 'rejected')),
    approval_by       TEXT,
    approval_at       BIGINT,
    hidden            BIGINT NOT NULL CHECK (hidden IN (0, 1)),
    provenance        TEXT    NOT NULL CHECK (provenance IN ('issued_here', 'digitized_here', 'from_portal')),
    provenance_detail TEXT,                          -- JSON: what the source keeps about it
    signatures        TEXT    NOT NULL,              -- JSON array of signing::SignatureRecord
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    CHECK (permanent = 1 OR valid_until IS NOT NULL)
);
-- Every read is by owner: an owner's papers by type, newest first.
CREATE INDEX khodl_papers_by_owner ON khodl_papers (owner_id, paper_type, issued_at);
CREATE INDEX khodl_papers_by_owner_issued ON khodl_papers (owner_id, issued_at);
-- Unhiding when the result is returned goes by dossier.
CREATE INDEX khodl_papers_by_dossier ON khodl_papers (dossier_code);
