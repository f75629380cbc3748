-- PostgreSQL twin of ../sqlite/0001_init.sql: same tables and columns; integers (flags 0/1 included) are BIGINT.
-- The event log is the truth; every other table is a read model written in the same
-- transaction as the events, and rebuilt exactly by replaying them.
-- Times are microseconds since the Unix epoch (UTC).

CREATE TABLE procedures (
    code        TEXT    NOT NULL,
    version     BIGINT NOT NULL,
    name        TEXT    NOT NULL,
    source      TEXT    NOT NULL,  -- the YAML as deployed
    forms       TEXT    NOT NULL,  -- JSON: form path -> schema, as deployed
    deployed_at BIGINT NOT NULL,
    PRIMARY KEY (code, version)
);

CREATE TABLE events (
    dossier_code TEXT    NOT NULL,
    seq          BIGINT NOT NULL,
    type         TEXT    NOT NULL,
    at           BIGINT NOT NULL,
    actor_id     TEXT    NOT NULL,
    actor_name   TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL,
    PRIMARY KEY (dossier_code, seq)
);

CREATE TABLE dossiers (
    code              TEXT    PRIMARY KEY,
    procedure_code    TEXT    NOT NULL,
    procedure_version BIGINT NOT NULL,
    agency_code       TEXT    NOT NULL,
    owner_id          TEXT    NOT NULL,
    owner_name        TEXT    NOT NULL,
    channel           TEXT    NOT NULL,
    status            BIGINT NOT NULL,
    seq               BIGINT NOT NULL,
    last_hash         TEXT    NOT NULL,
    filed_at          BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    received_at       BIGINT,
    due_at            BIGINT,
    closed            BIGINT NOT NULL,
    paused            BIGINT NOT NULL,
    overdue           BIGINT NOT NULL,
    apology_sent      BIGINT NOT NULL
);
CREATE INDEX dossiers_by_owner ON dossiers (owner_id, filed_at);
CREATE INDEX dossiers_open_by_due ON dossiers (closed, due_at);
CREATE INDEX dossiers_by_agency_status ON dossiers (agency_code, status, filed_at);

-- Open tasks only: the officers' worklists.
CREATE TABLE tasks (
    dossier_code TEXT    NOT NULL,
    task_id      TEXT    NOT NULL,
    step         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    agency_code  TEXT    NOT NULL,
    claimed_by   TEXT,
    opened_at    BIGINT NOT NULL,
    due_at       BIGINT,
    PRIMARY KEY (dossier_code, task_id)
);
CREATE INDEX tasks_worklist ON tasks (agency_code, role, due_at);
CREATE INDEX tasks_by_claimant ON tasks (claimed_by);

-- The outbox: hooks and timers. `lease_until` is operational, not part of the events.
CREATE TABLE jobs (
    dossier_code TEXT    NOT NULL,
    job_id       TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    call         TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    attempts     BIGINT NOT NULL,
    run_at       BIGINT NOT NULL,
    last_error   TEXT,
    lease_until  BIGINT,
    PRIMARY KEY (dossier_code, job_id)
);
CREATE INDEX jobs_due ON jobs (state, run_at);

CREATE TABLE incidents (
    dossier_code TEXT    NOT NULL,
    incident_id  TEXT    NOT NULL,
    job_id       TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    opened_at    BIGINT NOT NULL,
    resolution   TEXT,
    PRIMARY KEY (dossier_code, incident_id)
);
CREATE INDEX incidents_open ON incidents (resolution, opened_at);

CREATE TABLE notifications (
    dossier_code    TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    template        TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (dossier_code, notification_id)
);

-- Dossier numbers per agency and day (Circular 01/2018 art. 19).
CREATE TABLE dossier_sequences (
    agency_code TEXT    NOT NULL,
    day         TEXT    NOT NULL,
    last        BIGINT NOT NULL,
    PRIMARY KEY (agency_code, day)
);
