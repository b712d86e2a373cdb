-- v2 -> v3: Index megolm sessions by account and room for bundles
CREATE INDEX IF NOT EXISTS heirloom_megolm_inbound_room_idx ON crypto_megolm_inbound_session (account_id, room_id);
