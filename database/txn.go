package database

import (
	"context"
	"time"
)

// IsTxnProcessed reports whether the appservice transaction was already processed.
func (db *Database) IsTxnProcessed(ctx context.Context, txnID string) (bool, error) {
	var found int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM heirloom_txn WHERE txn_id=$1`, txnID).Scan(&found)
	return found > 0, err
}

// MarkTxnProcessed records that the appservice transaction was processed.
func (db *Database) MarkTxnProcessed(ctx context.Context, txnID string) error {
	_, err := db.Exec(ctx, `INSERT INTO heirloom_txn (txn_id, received_at) VALUES ($1, $2) ON CONFLICT (txn_id) DO NOTHING`,
		txnID, nowMillis())
	return err
}

// PruneTxns forgets transaction IDs older than maxAge; the homeserver never retries that late.
func (db *Database) PruneTxns(ctx context.Context, maxAge time.Duration) error {
	_, err := db.Exec(ctx, `DELETE FROM heirloom_txn WHERE received_at < $1`, time.Now().Add(-maxAge).UnixMilli())
	return err
}
