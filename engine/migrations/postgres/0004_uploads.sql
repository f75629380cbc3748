-- PostgreSQL twin of ../sqlite/0004_uploads.sql: same tables and columns; integers are BIGINT.
-- Who uploaded which content: a document may be attached only by someone who uploaded it
-- (the content itself is in the blob store, addressed by its hash).
CREATE TABLE uploads (
    sha256       TEXT    NOT NULL,
    uploader_id  TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size         BIGINT NOT NULL,
    uploaded_at  BIGINT NOT NULL,
    PRIMARY KEY (sha256, uploader_id)
);
