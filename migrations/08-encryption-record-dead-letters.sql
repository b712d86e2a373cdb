-- v7 -> v8: Rooms heirloom has seen encrypted, and the bridge's events it refused (dead letters)
-- Every room heirloom has seen an m.room.encryption of (in a transaction, a state fetch, or the
-- answer to a createRoom that asked for it), whatever its content: such a room never gets a
-- plaintext send again. settings is the first content heirloom could use (megolm, readable), kept
-- as the room's settings as matrix-rust-sdk keeps them ('' while there is none: sends are refused);
-- latest is the last content seen, as it was.
CREATE TABLE room_encryption (
    room_id    TEXT   PRIMARY KEY,
    settings   TEXT   NOT NULL DEFAULT '',
    latest     TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The bytes of an event's body while it waits for the bridge (gateway.max_outbox_size).
ALTER TABLE gateway_event ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
UPDATE gateway_event SET size = LENGTH(body) WHERE delivered_at = 0;
-- An event in a transaction the bridge refused goes alone in its transactions from then on
-- (solo); refused alone, it holds back its room until retry_at, and after a few refusals it is set
-- aside (dead_at: a dead letter, delivered again only on an operator's request).
ALTER TABLE gateway_event ADD COLUMN solo BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE gateway_event ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gateway_event ADD COLUMN retry_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE gateway_event ADD COLUMN dead_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE gateway_event ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
CREATE INDEX gateway_event_outbox_idx ON gateway_event (delivered_at, dead_at, size);
-- What the gateway composes transactions from, read without the events' bodies.
DROP INDEX gateway_event_txn_idx;
CREATE INDEX gateway_event_heads_idx ON gateway_event (txn_id, seq, dead_at, room_id, size, waiting, wait_until, solo, refusals, retry_at);
-- How many of a transaction's failed deliveries were the bridge refusing it (not being down).
ALTER TABLE gateway_txn ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
-- When heirloom last handed out a decrypted file's URL (pruned some time after).
ALTER TABLE gateway_media ADD COLUMN exposed_at BIGINT NOT NULL DEFAULT 0;
UPDATE gateway_media SET exposed_at = created_at;
CREATE INDEX gateway_media_exposed_idx ON gateway_media (exposed_at);
CREATE INDEX gateway_late_created_idx ON gateway_late (created_at);
