package database

import (
	"context"

	"maunium.net/go/mautrix/id"
)

// BulkCacheKiB is bulkCacheKiB, for the tests.
var BulkCacheKiB = bulkCacheKiB

// What else the package's own tests (package database_test) reach that no other package uses.

var (
	ErrLeaseNotHeld     = errLeaseNotHeld
	ErrBundleSuperseded = errBundleSuperseded
)

func (db *Database) DoTxn(ctx context.Context, fn func(ctx context.Context) error) error {
	return db.doTxn(ctx, fn)
}

func (db *Database) ListPuppets(ctx context.Context) ([]*Puppet, error) { return db.listPuppets(ctx) }

func (db *Database) ListPuppetIDs(ctx context.Context) ([]id.UserID, error) {
	return db.listPuppetIDs(ctx)
}

func (db *Database) Refused(ctx context.Context, userID id.UserID) (bool, error) {
	return db.refused(ctx, userID)
}
