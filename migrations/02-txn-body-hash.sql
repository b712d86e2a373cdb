-- v1 -> v2: Identify transactions by ID and body hash
-- Synapse on SQLite reuses transaction IDs after a restart; a reused ID with another body is a
-- new transaction. Rows from v1 have no hash and match no body, so nothing is wrongly skipped.
ALTER TABLE heirloom_txn ADD COLUMN body_hash TEXT NOT NULL DEFAULT '';
