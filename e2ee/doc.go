// Package e2ee makes every puppet a real end-to-end-encrypted Matrix user: one device, one Olm
// account in the shared crypto store and one cross-signing identity per puppet, with the
// OlmMachines loaded lazily, routed to from the transaction stream, and evicted when idle.
//
// It holds four things, file by file:
//
//   - The machines' lifecycle: the Manager, loading and evicting puppets' machines (manager.go),
//     provisioning a device and cross-signing identity (provision.go), restoring a device the
//     homeserver lost and checking devices at start and on load (restore.go, devicecheck.go), the
//     cross-signing identities heirloom has seen (identity.go), the secrets sealed in heirloom's
//     own tables (sealer.go), the count of key queries (keyqueries.go), and the shutdown
//     (shutdown.go).
//   - The megolm rules: which room keys are taken and from whom (roomkey.go, membership.go, and
//     heldkeys.go for the keys held until a join), forwarded keys and key requests (forward.go,
//     askedkeys.go, keyrequest.go), how a session is stored and two copies merged (sessions.go,
//     merge.go), decryption and its replay check (decrypt.go), and on the send side whether a
//     room is encrypted (encryptionstate.go), when a session rotates (rotation.go), and to which
//     devices a room key goes (sharing.go, devices.go).
//   - Routing and sweeps: to-device events, one-time key counts and device-list changes handed to
//     the right machine, and the periodic maintenance (router.go); a device's inbox swept with
//     /sync for what the transaction stream did not push (sweep.go), without handling a message
//     twice (seentodevice.go); a room's timeline decrypted for the API (timeline.go).
//   - The puppets' and the manager's reads and writes of mautrix's crypto tables
//     (cryptotables.go, and pooled.go for a bundle pooled from several accounts): thin methods
//     over the statements of package cryptostore.
//
// The fast paths that re-implement what mautrix does too slowly for a bundle of 100,000 sessions
// (libolm's pickle format, the megolm session export import, the ratchet comparison, and the
// statements on mautrix's crypto tables) are package e2ee/cryptostore.
package e2ee
