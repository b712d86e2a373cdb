-- v7 -> v8: mautrix's crypto store keys inbound sessions by (account, room, session) since its schema 23
-- Its primary key serves the room queries of bundles: heirloom's own index of v3 is redundant.
-- (On SQLite, mautrix's upgrade rebuilt the table, and the index went with it.)
DROP INDEX IF EXISTS heirloom_megolm_inbound_room_idx;
