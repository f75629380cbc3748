-- Events, compacted: the hash as 32 bytes instead of 64 hex characters, and no stored
-- `prev_hash` (it is the previous row's hash, so it was stored twice). The chain itself is
-- unchanged: each hash is still SHA-256 over the previous hash in hex and the canonical record.
ALTER TABLE events DROP COLUMN prev_hash;

ALTER TABLE events ALTER COLUMN hash TYPE BYTEA USING decode(hash, 'hex');
