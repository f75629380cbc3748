-- PostgreSQL twin of ../sqlite/0003_idempotency.sql: same tables and columns; integers are BIGINT.
-- Answers to requests that carried an Idempotency-Key: a repeated request gets the first
-- answer instead of creating something twice.
CREATE TABLE idempotency_keys (
    actor_id     TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    scope        TEXT    NOT NULL,  -- the route
    request_hash TEXT    NOT NULL,
    status       BIGINT NOT NULL,
    body         TEXT    NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (actor_id, key)
);
