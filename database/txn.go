package database

import (
	"context"
	"fmt"
	"time"
)

// IsTxnProcessed reports whether the appservice transaction with this ID and body hash was already
// processed. The same ID with another body is a new transaction: Synapse on SQLite numbers its
// transactions from 1 again after each restart.
func (db *Database) IsTxnProcessed(ctx context.Context, txnID, bodyHash string) (bool, error) {
	var found int
	err := db.own.QueryRow(ctx, `SELECT COUNT(*) FROM heirloom_txn WHERE txn_id=$1 AND body_hash=$2`, txnID, bodyHash).Scan(&found)
	if err != nil {
		return false, fmt.Errorf("failed to look up transaction: %w", err)
	}
	return found > 0, nil
}

// MarkTxnProcessed records that the appservice transaction was processed.
func (db *Database) MarkTxnProcessed(ctx context.Context, txnID, bodyHash string) error {
	_, err := db.own.Exec(ctx, `
		INSERT INTO heirloom_txn (txn_id, body_hash, received_at) VALUES ($1, $2, $3)
		ON CONFLICT (txn_id) DO UPDATE SET body_hash=excluded.body_hash, received_at=excluded.received_at`,
		txnID, bodyHash, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to record transaction: %w", err)
	}
	return nil
}

// PruneTxns forgets transaction IDs older than maxAge; the homeserver never retries that late.
func (db *Database) PruneTxns(ctx context.Context, maxAge time.Duration) error {
	_, err := db.own.Exec(ctx, `DELETE FROM heirloom_txn WHERE received_at < $1`, db.Now().Add(-maxAge).UnixMilli())
	if err != nil {
		return fmt.Errorf("failed to prune transactions: %w", err)
	}
	return nil
}
