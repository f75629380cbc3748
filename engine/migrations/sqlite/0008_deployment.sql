-- This deployment's identity: one row, made at first start, the same on every node sharing the
-- database. It prefixes the idempotency keys sent to shared systems (the national portal), so
-- two deployments' keys never collide.
CREATE TABLE deployment (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        TEXT    NOT NULL
);
