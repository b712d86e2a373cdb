// Package migrations provides heirloom's database schema as an upgrade table of numbered,
// embedded SQL files, applied by go.mau.fi/util/dbutil under heirloom's own version table.
package migrations

import (
	"embed"

	"go.mau.fi/util/dbutil"
)

// VersionTable is where dbutil records heirloom's schema version. mautrix's crypto and state
// stores keep their own version tables in the same database.
const VersionTable = "heirloom_version"

//go:embed *.sql
var files embed.FS

// Table is heirloom's upgrade table: 00-latest-revision.sql creates the current schema on an
// empty database; later numbered files upgrade older ones.
var Table = dbutil.BuildUpgradeTable().WithFS(files).Finish()
