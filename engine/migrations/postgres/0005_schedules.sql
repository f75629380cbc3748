-- Scheduled work that must run once per tick across every node (the overdue scan): a node runs
-- a tick only after moving `last_tick` forward to it, which exactly one node can do.
CREATE TABLE schedules (
    name      TEXT   PRIMARY KEY,
    last_tick BIGINT NOT NULL
);
