-- Sealed streams. Once a dossier is settled (closed, no open task, no job left to run), its
-- events are packed into one compressed row and their rows deleted; events appended later are
-- stored as rows again, chained to the archive's head. See engine/src/archive.rs.
CREATE TABLE event_archives (
    dossier_code TEXT    PRIMARY KEY,
    upto_seq     INTEGER NOT NULL,  -- the archive holds events 1..=upto_seq
    head         BLOB    NOT NULL,  -- the stored hash of event upto_seq (32 bytes)
    checks       BLOB    NOT NULL,  -- the first 4 bytes of each archived event's stored hash
    dictionary   INTEGER NOT NULL,  -- the zstd dictionary of body (archive_dictionaries.id), 0: none
    body         BLOB    NOT NULL   -- zstd: JSON array of [at, actor_id, actor_name, payload]
);

-- zstd dictionaries trained on earlier archives; never changed, since archives name them.
CREATE TABLE archive_dictionaries (
    id         INTEGER PRIMARY KEY,
    trained_at INTEGER NOT NULL,
    samples    INTEGER NOT NULL,
    bytes      BLOB    NOT NULL
);

-- The last event sealed into event_archives (0: none).
ALTER TABLE dossiers ADD COLUMN sealed_seq INTEGER NOT NULL DEFAULT 0;

-- Closed dossiers with events not yet sealed: what the sealer looks at.
CREATE INDEX dossiers_to_seal ON dossiers (updated_at) WHERE closed = 1 AND sealed_seq < seq;

-- The jobs table is the work queue: finished jobs leave it (their outcome is an event).
DELETE FROM jobs WHERE state IN ('done', 'cancelled');
