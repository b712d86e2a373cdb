-- v10 -> v11: Megolm message indexes seen, per puppet and room, against replays
-- One event per (puppet, room, session, message index, event sender): mautrix's crypto_message_index
-- is keyed by (session, index) alone, for every account and room at once, so a copy of a ciphertext
-- decrypted anywhere (another room, another puppet, a re-post by another member) made the genuine
-- event a replay. Its rows say neither account nor room, and stay where they are.
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
