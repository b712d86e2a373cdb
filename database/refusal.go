package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/id"
)

// refused reports whether heirloom's bot already sent userID its one refusal.
func (db *Database) refused(ctx context.Context, userID id.UserID) (bool, error) {
	var at int64
	err := db.own.QueryRow(ctx, `SELECT refused_at FROM admin_refusal WHERE user_id=$1`, userID).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("failed to look up refusal: %w", err)
	}
	return true, nil
}

// RecordRefusal records that the bot refused userID. It reports whether this is the first refusal:
// only then does the bot say so.
func (db *Database) RecordRefusal(ctx context.Context, userID id.UserID) (bool, error) {
	res, err := db.own.Exec(ctx, `INSERT INTO admin_refusal (user_id, refused_at) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING`,
		userID, db.nowMillis())
	if err != nil {
		return false, fmt.Errorf("failed to record refusal: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("failed to record refusal: %w", err)
	}
	return n == 1, nil
}
