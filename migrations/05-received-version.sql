-- v4 -> v5: A row version for received bundles
-- A save of a received bundle's state checks the version it read, so a newer bundle from the same
-- sender that replaced it meanwhile is never overwritten. received_at did this before, which two
-- bundles received in the same millisecond would share. Rows from before v5 start at version 1.
ALTER TABLE bundle_received ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
