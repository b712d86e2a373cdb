-- v6 -> v7: Gateway mode: the bridge's outbox, its sends, and the media it reads decrypted
-- Events bound for the bridge, in the order the homeserver delivered them (seq). An encrypted
-- event whose key has not arrived waits (holding back only its room) until wait_until; txn_id is
-- the bridge transaction it went into (0: not yet). Stored before the homeserver is answered.
-- Delivered events keep their key (body emptied, delivered_at set) for a day, so a homeserver
-- transaction sent again after a crash does not deliver them twice.
CREATE TABLE gateway_event (
    seq         BIGINT  PRIMARY KEY,
    event_key   TEXT    NOT NULL UNIQUE,
    event_id    TEXT    NOT NULL DEFAULT '',
    room_id     TEXT    NOT NULL DEFAULT '',
    kind        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    waiting     BOOLEAN NOT NULL DEFAULT false,
    session_id  TEXT    NOT NULL DEFAULT '',
    wait_until  BIGINT  NOT NULL DEFAULT 0,
    txn_id      BIGINT  NOT NULL DEFAULT 0,
    received_at BIGINT  NOT NULL,
    delivered_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX gateway_event_txn_idx ON gateway_event (txn_id, seq);
CREATE INDEX gateway_event_session_idx ON gateway_event (session_id);

-- Bridge transactions composed and not yet acknowledged: retried with the same ID and events.
CREATE TABLE gateway_txn (
    txn_id       BIGINT  PRIMARY KEY,
    created_at   BIGINT  NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT  NOT NULL DEFAULT 0,
    last_error   TEXT    NOT NULL DEFAULT ''
);

-- Counters that never go back (bridge transaction IDs are never reused).
CREATE TABLE gateway_counter (
    name  TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);

-- Encrypted events that went to the bridge still encrypted (their key was late): the decrypted
-- copy follows when the key arrives.
CREATE TABLE gateway_late (
    event_id   TEXT   PRIMARY KEY,
    room_id    TEXT   NOT NULL,
    session_id TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX gateway_late_session_idx ON gateway_late (session_id);

-- The bridge's sends heirloom encrypted, by the bridge's transaction ID: a retry gets the same event.
CREATE TABLE gateway_send (
    user_id  TEXT   NOT NULL,
    txn_id   TEXT   NOT NULL,
    event_id TEXT   NOT NULL,
    sent_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, txn_id)
);

-- Encrypted media the bridge downloads through heirloom, decrypted (file_info sealed with the pickle key).
CREATE TABLE gateway_media (
    media_id   TEXT   PRIMARY KEY,
    file_info  TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
