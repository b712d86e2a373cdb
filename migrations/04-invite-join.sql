-- v3 -> v4: Bind an invite's acceptance to the join that replaced it, one import per join
-- An acceptance counts (a bundle from the inviter may be imported) only once the join that
-- replaced that very invite is known. Acceptances recorded before v4 are kept as they were.
ALTER TABLE puppet_invite ADD COLUMN join_event_id TEXT NOT NULL DEFAULT '';
UPDATE puppet_invite SET join_event_id='(accepted before v4)' WHERE accepted_at > 0;
-- The join a bundle was imported under: one import per accepted invite.
ALTER TABLE bundle_received ADD COLUMN import_join TEXT NOT NULL DEFAULT '';
