-- v11 -> v12: Each device's fallback key: which is current, when it was made, which the homeserver holds
-- key_id is the account's current fallback key (goolm's key ID) when heirloom last looked, made at
-- created_at (ms); uploaded_key_id the key the homeserver last accepted ('' none). goolm's own
-- "published" flag cannot tell: mautrix sets it whenever it uploads one-time keys.
CREATE TABLE heirloom_fallback_key (
    account_id      TEXT   PRIMARY KEY,
    device_id       TEXT   NOT NULL,
    key_id          TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    uploaded_key_id TEXT   NOT NULL DEFAULT ''
);
