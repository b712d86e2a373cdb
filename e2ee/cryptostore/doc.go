// Package cryptostore holds heirloom's own fast paths over mautrix's SQL crypto store: what
// mautrix-go does too, but too slowly for a key bundle of 100,000 sessions.
//
//   - pickle.go: libolm's pickle format of a megolm inbound session (goolm's Pickle and Unpickle,
//     and mautrix's SQL store, write it), with the keys derived once instead of per session;
//   - sessionkey.go: the megolm session export format (a key bundle's and a key export's session
//     key), read into a goolm session with the same inputs refused as goolm's import, at half the
//     cost of its key check;
//   - ratchet.go: whether two copies of a session are the same ratchet (a forged copy can carry a
//     real session ID);
//   - statements.go, pooled.go, inserter.go, devices.go (with sql.go's helpers): every SQL
//     statement heirloom runs itself on mautrix's crypto tables: a room's sessions and withheld
//     entries read in one pass, a bundle import written 500 rows per statement, device lists and
//     a session's recipients read in one statement per chunk instead of one or two per user or
//     device.
//
// Why re-implemented: mautrix unpickles every session serially with a key derivation each,
// writes one row per statement and has no query by room for withheld entries; history's
// benchmarks (BenchmarkBuildBundle and BenchmarkImportBundle in history/bench_test.go, with
// HEIRLOOM_BENCH_SIZES=100000; make bench, figures in docs/performance.md) measure the bundle
// build and import at 1,000 to 100,000 sessions, and this package's BenchmarkPickleCipher and
// BenchmarkSessionKeyCheck the per-session costs. Each piece is tested against what it replaces:
// the pickle and the session key import byte for byte against goolm (a fuzz test for the import),
// and the statements by package e2ee's round-trip tests through mautrix's own methods on SQLite
// and PostgreSQL.
//
// Nothing here knows a puppet or a machine: the statements take the database and the account IDs
// (mautrix's account_id column) they run for; package e2ee's Puppet and Manager methods call them.
package cryptostore
