-- A database created by heirloom at ee803a6 (mautrix-go v0.32.0: crypto store schema 22, state store 11;
-- heirloom's schema 7), dumped with sqlite3 .dump: what an upgrade starts from.
BEGIN TRANSACTION;
CREATE TABLE crypto_version (version INTEGER, compat INTEGER);
INSERT INTO crypto_version VALUES(22,20);
CREATE TABLE crypto_account (
	account_id         TEXT    PRIMARY KEY,
	device_id          TEXT    NOT NULL,
	shared             BOOLEAN NOT NULL,
	sync_token         TEXT    NOT NULL,
	account            bytea   NOT NULL,
	key_backup_version TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE crypto_message_index (
	session_id CHAR(43),
	"index"    INTEGER,
	event_id   TEXT   NOT NULL,
	timestamp  BIGINT NOT NULL,
	PRIMARY KEY (session_id, "index")
);
CREATE TABLE crypto_tracked_user (
	user_id          TEXT PRIMARY KEY,
	devices_outdated BOOLEAN NOT NULL DEFAULT FALSE,
	last_attempt     BIGINT,
	error_count      INTEGER
);
CREATE TABLE crypto_device (
	user_id      TEXT,
	device_id    TEXT,
	identity_key CHAR(43) NOT NULL,
	signing_key  CHAR(43) NOT NULL,
	trust        SMALLINT NOT NULL,
	deleted      BOOLEAN  NOT NULL,
	name         TEXT     NOT NULL,
	PRIMARY KEY (user_id, device_id)
);
CREATE TABLE crypto_olm_session (
	account_id     TEXT,
	session_id     CHAR(43),
	sender_key     CHAR(43)  NOT NULL,
	session        bytea     NOT NULL,
	created_at     timestamp NOT NULL,
	last_decrypted timestamp NOT NULL,
	last_encrypted timestamp NOT NULL,
	PRIMARY KEY (account_id, session_id)
);
CREATE TABLE crypto_olm_message_hash (
	account_id   TEXT   NOT NULL,
	received_at  BIGINT NOT NULL,
	message_hash bytea  NOT NULL PRIMARY KEY,

	CONSTRAINT crypto_olm_message_hash_account_fkey FOREIGN KEY (account_id)
		REFERENCES crypto_account (account_id) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE TABLE crypto_megolm_inbound_session (
	account_id         TEXT,
	session_id         CHAR(43),
	sender_key         CHAR(43) NOT NULL,
	signing_key        CHAR(43),
	room_id            TEXT     NOT NULL,
	session            bytea,
	forwarding_chains  bytea,
	shared_history     BOOLEAN,
	withheld_code      TEXT,
	withheld_reason    TEXT,
	ratchet_safety     jsonb,
	received_at        timestamp,
	max_age            BIGINT,
	max_messages       INTEGER,
	is_scheduled       BOOLEAN NOT NULL DEFAULT false,
	key_backup_version TEXT NOT NULL DEFAULT '',
	key_source         TEXT NOT NULL DEFAULT '',
	source_user        TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (account_id, session_id)
);
CREATE TABLE crypto_megolm_outbound_session (
	account_id     TEXT,
	room_id        TEXT,
	session_id     CHAR(43)  NOT NULL UNIQUE,
	session        bytea     NOT NULL,
	shared         BOOLEAN   NOT NULL,
	max_messages   INTEGER   NOT NULL,
	message_count  INTEGER   NOT NULL,
	max_age        BIGINT    NOT NULL,
	shared_history BOOLEAN,
	created_at     timestamp NOT NULL,
	last_used      timestamp NOT NULL,
	PRIMARY KEY (account_id, room_id)
);
CREATE TABLE crypto_megolm_outbound_session_shared (
	user_id      TEXT     NOT NULL,
	identity_key CHAR(43) NOT NULL,
	session_id   CHAR(43) NOT NULL,

	PRIMARY KEY (user_id, identity_key, session_id)
);
CREATE TABLE crypto_cross_signing_keys (
	user_id TEXT,
	usage   TEXT,
	key     CHAR(43) NOT NULL,

	first_seen_key CHAR(43) NOT NULL,

	PRIMARY KEY (user_id, usage)
);
CREATE TABLE crypto_cross_signing_signatures (
	signed_user_id TEXT,
	signed_key     TEXT,
	signer_user_id TEXT,
	signer_key     TEXT,
	signature      CHAR(88) NOT NULL,
	PRIMARY KEY (signed_user_id, signed_key, signer_user_id, signer_key)
);
CREATE TABLE crypto_secrets (
	account_id TEXT  NOT NULL,
	name       TEXT  NOT NULL,
	secret     bytea NOT NULL,

	PRIMARY KEY (account_id, name)
);
CREATE TABLE mx_version (version INTEGER, compat INTEGER);
INSERT INTO mx_version VALUES(11,3);
CREATE TABLE mx_registrations (
	user_id TEXT PRIMARY KEY
);
CREATE TABLE mx_user_profile (
	room_id       TEXT,
	user_id       TEXT,
	membership    membership NOT NULL,
	displayname   TEXT       NOT NULL DEFAULT '',
	avatar_url    TEXT       NOT NULL DEFAULT '',

	name_skeleton bytea,

	PRIMARY KEY (room_id, user_id)
);
CREATE TABLE mx_room_state (
	room_id            TEXT PRIMARY KEY,
	power_levels       jsonb,
	encryption         jsonb,
	create_event       jsonb,
	join_rules         jsonb,
	history_visibility jsonb,
	members_fetched    BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE heirloom_version (version INTEGER, compat INTEGER);
INSERT INTO heirloom_version VALUES(7,7);
CREATE TABLE heirloom_txn (
    txn_id      TEXT   PRIMARY KEY,
    body_hash   TEXT   NOT NULL DEFAULT '',
    received_at BIGINT NOT NULL
);
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
CREATE TABLE room_rotation (
    room_id      TEXT   PRIMARY KEY,
    rotate_after BIGINT NOT NULL
);
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
CREATE TABLE admin_refusal (
    user_id    TEXT   PRIMARY KEY,
    refused_at BIGINT NOT NULL
);
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
CREATE TABLE gateway_txn (
    txn_id       BIGINT  PRIMARY KEY,
    created_at   BIGINT  NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT  NOT NULL DEFAULT 0,
    last_error   TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE gateway_counter (
    name  TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE gateway_late (
    event_id   TEXT   PRIMARY KEY,
    room_id    TEXT   NOT NULL,
    session_id TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE gateway_send (
    user_id  TEXT   NOT NULL,
    txn_id   TEXT   NOT NULL,
    event_id TEXT   NOT NULL,
    sent_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, txn_id)
);
CREATE TABLE gateway_media (
    media_id   TEXT   PRIMARY KEY,
    file_info  TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX crypto_olm_session_sender_key_idx ON crypto_olm_session (account_id, sender_key);
CREATE INDEX crypto_olm_message_hash_account_idx ON crypto_olm_message_hash (account_id);
CREATE INDEX crypto_megolm_inbound_session_backup_idx ON crypto_megolm_inbound_session(account_id, key_backup_version) WHERE session IS NOT NULL;
CREATE INDEX mx_user_profile_membership_idx ON mx_user_profile (room_id, membership);
CREATE INDEX mx_user_profile_name_skeleton_idx ON mx_user_profile (room_id, name_skeleton);
CREATE UNIQUE INDEX bundle_sent_invite_idx ON bundle_sent (puppet, room_id, invite_event_id);
CREATE INDEX bundle_sent_state_idx ON bundle_sent (state);
CREATE INDEX bundle_sent_invitee_idx ON bundle_sent (invitee, state);
CREATE INDEX bundle_sent_room_idx ON bundle_sent (room_id);
CREATE INDEX bundle_received_room_idx ON bundle_received (room_id);
CREATE INDEX heirloom_megolm_inbound_room_idx ON crypto_megolm_inbound_session (account_id, room_id);
CREATE INDEX gateway_event_txn_idx ON gateway_event (txn_id, seq);
CREATE INDEX gateway_event_session_idx ON gateway_event (session_id);
CREATE INDEX gateway_late_session_idx ON gateway_late (session_id);
COMMIT;
