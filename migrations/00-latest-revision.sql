-- v0 -> v12: Latest revision

-- Appservice transactions already processed, so a retried transaction is processed once. A
-- transaction is known by its ID and the SHA-256 of its body: Synapse on SQLite numbers its
-- transactions from 1 again after a restart, so an ID alone does not identify one.
CREATE TABLE heirloom_txn (
    txn_id      TEXT   PRIMARY KEY,
    body_hash   TEXT   NOT NULL DEFAULT '',
    received_at BIGINT NOT NULL
);

-- Puppets provisioned through the API. cross_signing_seeds is encrypted with the pickle key.
CREATE TABLE puppet (
    user_id             TEXT    PRIMARY KEY,
    device_id           TEXT    NOT NULL,
    displayname         TEXT    NOT NULL DEFAULT '',
    cross_signing_seeds TEXT    NOT NULL DEFAULT '',
    master_key          TEXT    NOT NULL DEFAULT '',
    ready               BOOLEAN NOT NULL DEFAULT false,
    created_at          BIGINT  NOT NULL,
    -- when heirloom last acted as or for the puppet (unix ms)
    last_active_at      BIGINT  NOT NULL DEFAULT 0
);

-- Outbound megolm sessions created before rotate_after (unix ms) are not used again:
-- bumped when history visibility changes or a member leaves, is kicked or banned.
CREATE TABLE room_rotation (
    room_id      TEXT   PRIMARY KEY,
    rotate_after BIGINT NOT NULL
);

-- Key bundles a puppet built and delivered (MSC4268 sending side).
CREATE TABLE bundle_sent (
    bundle_id       TEXT    PRIMARY KEY,
    puppet          TEXT    NOT NULL,
    room_id         TEXT    NOT NULL,
    invitee         TEXT    NOT NULL,
    invite_event_id TEXT,
    state           TEXT    NOT NULL,
    sessions        INTEGER NOT NULL DEFAULT 0,
    withheld        INTEGER NOT NULL DEFAULT 0,
    size            BIGINT  NOT NULL DEFAULT 0,
    mxc             TEXT    NOT NULL DEFAULT '',
    file_info       TEXT    NOT NULL DEFAULT '',
    reason          TEXT    NOT NULL DEFAULT '',
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    -- the invitee's master key the devices were chosen under: a device added later gets the
    -- bundle only while the invitee's identity is still this one ('' = never)
    invitee_master_key TEXT NOT NULL DEFAULT '',
    -- invite: built for a puppet's invite; reshare: built on an admin's request for a member
    kind            TEXT    NOT NULL DEFAULT 'invite'
);
CREATE UNIQUE INDEX bundle_sent_invite_idx ON bundle_sent (puppet, room_id, invite_event_id);
CREATE INDEX bundle_sent_state_idx ON bundle_sent (state);
CREATE INDEX bundle_sent_invitee_idx ON bundle_sent (invitee, state);
CREATE INDEX bundle_sent_room_idx ON bundle_sent (room_id);

-- One row per invitee device a bundle was (or was not) delivered to.
CREATE TABLE bundle_delivery (
    bundle_id TEXT    NOT NULL REFERENCES bundle_sent (bundle_id) ON DELETE CASCADE,
    user_id   TEXT    NOT NULL,
    device_id TEXT    NOT NULL,
    delivered BOOLEAN NOT NULL,
    reason    TEXT    NOT NULL DEFAULT '',
    -- a device the invitee added after the bundle was first delivered
    added_later BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (bundle_id, user_id, device_id)
);

-- Key bundles a puppet received (MSC4268 receiving side), newest per (puppet, room, sender).
CREATE TABLE bundle_received (
    puppet        TEXT    NOT NULL,
    room_id       TEXT    NOT NULL,
    sender        TEXT    NOT NULL,
    sender_device TEXT    NOT NULL,
    sender_key    TEXT    NOT NULL,
    file_info     TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    imported      INTEGER NOT NULL DEFAULT 0,
    withheld      INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    error         TEXT    NOT NULL DEFAULT '',
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  BIGINT  NOT NULL DEFAULT 0,
    received_at   BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    -- the join (puppet_invite.join_event_id) the bundle was imported under: one import per join
    import_join   TEXT    NOT NULL DEFAULT '',
    -- The row version: one more for each newer bundle from the sender that replaced the row.
    version       BIGINT  NOT NULL DEFAULT 1,
    PRIMARY KEY (puppet, room_id, sender)
);
CREATE INDEX bundle_received_room_idx ON bundle_received (room_id);

-- Invites a puppet received, and when it accepted them: a bundle is imported only from the
-- inviter, and only within history_sharing.accept_window of accepting (accepted_at 0 = not yet),
-- once the join that replaced this very invite is known (join_event_id, '' = not yet).
CREATE TABLE puppet_invite (
    puppet          TEXT   NOT NULL,
    room_id         TEXT   NOT NULL,
    inviter         TEXT   NOT NULL,
    invite_event_id TEXT   NOT NULL DEFAULT '',
    invited_at      BIGINT NOT NULL,
    accepted_at     BIGINT NOT NULL DEFAULT 0,
    join_event_id   TEXT   NOT NULL DEFAULT '',
    PRIMARY KEY (puppet, room_id)
);

-- Users who are not admins and got the bot's one refusal: the bot ignores them from then on.
CREATE TABLE admin_refusal (
    user_id    TEXT   PRIMARY KEY,
    refused_at BIGINT NOT NULL
);

-- mautrix's crypto store keys inbound sessions by (account, room, session); a bundle reads one room
-- of one puppet, which this index gives in the order the rows were written (the primary key's would
-- give them in session ID order, from all over the table on SQLite). The crypto store's tables exist
-- before heirloom's upgrade runs.
CREATE INDEX IF NOT EXISTS heirloom_megolm_inbound_room_idx ON crypto_megolm_inbound_session (account_id, room_id);

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

-- Events bound for the bridge, in the order the homeserver delivered them (seq). An encrypted
-- event whose key has not arrived waits (holding back only its room) until wait_until; txn_id is
-- the bridge transaction it went into (0: not yet). Stored before the homeserver is answered.
-- original is the event as the homeserver sent it when body is heirloom's decrypted copy (''
-- otherwise): if the bridge refuses the decrypted copy every time, it gets the event as it arrived
-- before the event is set aside (fell_back: body and original swapped; an operator's resend swaps
-- them back). size is the bytes of both while the event waits for the bridge
-- (gateway.max_outbox_size). An event in a transaction the bridge refused goes alone in its
-- transactions from then on (solo); refused alone, it holds back its room until retry_at, and
-- after a few refusals it is set aside (dead_at: a dead letter, delivered again only on an
-- operator's request).
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
    delivered_at BIGINT NOT NULL DEFAULT 0,
    size        BIGINT  NOT NULL DEFAULT 0,
    solo        BOOLEAN NOT NULL DEFAULT false,
    refusals    INTEGER NOT NULL DEFAULT 0,
    retry_at    BIGINT  NOT NULL DEFAULT 0,
    dead_at     BIGINT  NOT NULL DEFAULT 0,
    last_error  TEXT    NOT NULL DEFAULT '',
    original    TEXT    NOT NULL DEFAULT '',
    fell_back   BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX gateway_event_session_idx ON gateway_event (session_id);
CREATE INDEX gateway_event_outbox_idx ON gateway_event (delivered_at, dead_at, size);
-- A room's bytes in the outbox (its share of gateway.max_outbox_size).
CREATE INDEX gateway_event_room_idx ON gateway_event (room_id, delivered_at, dead_at, size);
-- What the gateway composes transactions from, read without the events' bodies.
CREATE INDEX gateway_event_heads_idx ON gateway_event (txn_id, seq, dead_at, room_id, size, waiting, wait_until, solo, refusals, retry_at);

-- Bridge transactions composed and not yet acknowledged: retried with the same ID and events.
-- refusals counts the failed deliveries that were the bridge refusing it (not being down).
CREATE TABLE gateway_txn (
    txn_id       BIGINT  PRIMARY KEY,
    created_at   BIGINT  NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT  NOT NULL DEFAULT 0,
    last_error   TEXT    NOT NULL DEFAULT '',
    refusals     INTEGER NOT NULL DEFAULT 0
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
CREATE INDEX gateway_late_created_idx ON gateway_late (created_at);

-- The bridge's sends heirloom encrypted, by the bridge's transaction ID: a retry gets the same event.
CREATE TABLE gateway_send (
    user_id  TEXT   NOT NULL,
    txn_id   TEXT   NOT NULL,
    event_id TEXT   NOT NULL,
    sent_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, txn_id)
);

-- Encrypted media the bridge downloads through heirloom, decrypted (file_info sealed with the pickle
-- key); exposed_at is when heirloom last handed out its URL (pruned some time after).
CREATE TABLE gateway_media (
    media_id   TEXT   PRIMARY KEY,
    file_info  TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    exposed_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX gateway_media_exposed_idx ON gateway_media (exposed_at);

-- Megolm message indexes seen, per puppet and room, against replays: one event per (puppet, room,
-- session, message index, event sender).
CREATE TABLE heirloom_message_index (
    account_id    TEXT   NOT NULL,
    room_id       TEXT   NOT NULL,
    session_id    TEXT   NOT NULL,
    message_index BIGINT NOT NULL,
    sender        TEXT   NOT NULL,
    event_id      TEXT   NOT NULL,
    timestamp     BIGINT NOT NULL,
    PRIMARY KEY (account_id, room_id, session_id, message_index, sender)
);

-- Each device's fallback key: the current one (goolm's key ID) when heirloom last looked, when it
-- was made (ms), and the one the homeserver last accepted ('' none).
CREATE TABLE heirloom_fallback_key (
    account_id      TEXT   PRIMARY KEY,
    device_id       TEXT   NOT NULL,
    key_id          TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    uploaded_key_id TEXT   NOT NULL DEFAULT ''
);
