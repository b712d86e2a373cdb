-- v8 -> v9: mautrix's crypto store keys inbound sessions by (account, room, session) since its schema 23
-- On SQLite, mautrix's upgrade rebuilt crypto_megolm_inbound_session, and heirloom's room index of v3
-- went with the old table: it is made again. The primary key's (account_id, room_id) prefix could serve
-- a bundle's room scan too, but in session ID order, which on SQLite reads a large room's rows from all
-- over the table; this index gives them in the order they were written.
CREATE INDEX IF NOT EXISTS heirloom_megolm_inbound_room_idx ON crypto_megolm_inbound_session (account_id, room_id);
