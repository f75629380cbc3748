-- Events, compacted: the hash as 32 bytes instead of 64 hex characters, and no stored
-- `prev_hash` (it is the previous row's hash, so it was stored twice). The chain itself is
-- unchanged: each hash is still SHA-256 over the previous hash in hex and the canonical record.
CREATE TABLE events_compact (
    dossier_code TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    actor_id     TEXT    NOT NULL,
    actor_name   TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    hash         BLOB    NOT NULL,
    PRIMARY KEY (dossier_code, seq)
);

INSERT INTO events_compact (dossier_code, seq, type, at, actor_id, actor_name, payload, hash)
SELECT dossier_code, seq, type, at, actor_id, actor_name, payload, unhex(hash) FROM events;

DROP TABLE events;

ALTER TABLE events_compact RENAME TO events;
