package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// IsTxnProcessed reports whether the appservice transaction with this ID and body hash was already
// processed. The same ID with another body is a new transaction: Synapse on SQLite numbers its
// transactions from 1 again after each restart.
func (db *Database) IsTxnProcessed(ctx context.Context, txnID, bodyHash string) (bool, error) {
	processed, _, err := db.TxnSeen(ctx, txnID, bodyHash)
	return processed, err
}

// TxnSeen reports whether the transaction with this ID and body hash was processed, and whether a
// transaction with this ID was processed at all (with this body or another: Synapse's retries of
// a transaction it queued carry only its events).
func (db *Database) TxnSeen(ctx context.Context, txnID, bodyHash string) (processed, idSeen bool, err error) {
	var stored string
	err = db.own.QueryRow(ctx, `SELECT body_hash FROM heirloom_txn WHERE txn_id=$1`, txnID).Scan(&stored)
	if errors.Is(err, sql.ErrNoRows) {
		return false, false, nil
	} else if err != nil {
		return false, false, fmt.Errorf("failed to look up transaction: %w", err)
	}
	return stored == bodyHash, true, nil
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
