package keybundle_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto" // also registers the pure-Go Olm (goolm tag)
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

const (
	testRoom   id.RoomID   = "!history:example.org"
	otherRoom  id.RoomID   = "!elsewhere:example.org"
	testDevice id.DeviceID = "HEIRLOOMDEV"
)

// megolm is a real megolm session: an outbound session and the inbound copy a device holds.
type megolm struct {
	inbound    olm.InboundGroupSession
	senderKey  id.SenderKey
	signingKey id.Ed25519
	// exports counts the calls of the Export func built by session.
	exports int
}

// newMegolm creates a real megolm session, as created by a device with real identity keys.
func newMegolm(t testing.TB) *megolm {
	t.Helper()
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(t, err)
	require.Equal(t, out.ID(), in.ID())
	account := crypto.NewOlmAccount()
	signing, identity := account.Keys()
	return &megolm{inbound: in, senderKey: identity, signingKey: signing}
}

func (m *megolm) id() id.SessionID { return m.inbound.ID() }

// exported is the session key in export format at its first known index.
func (m *megolm) exported(t *testing.T) string {
	t.Helper()
	key, err := m.inbound.Export(m.inbound.FirstKnownIndex())
	require.NoError(t, err)
	return string(key)
}

// session is the builder's view of the session in roomID.
func (m *megolm) session(roomID id.RoomID, shared bool) keybundle.Session {
	return keybundle.Session{
		RoomID:        roomID,
		SessionID:     m.inbound.ID(),
		SenderKey:     m.senderKey,
		SigningKey:    m.signingKey,
		SharedHistory: shared,
		Export: func() (string, error) {
			m.exports++
			key, err := m.inbound.Export(m.inbound.FirstKnownIndex())
			return string(key), err
		},
	}
}

// decoded is what Decode delivered.
type decoded struct {
	keys     []keybundle.RoomKey
	withheld []keybundle.Withheld
	skipped  int
}

func decodeAll(t *testing.T, data []byte) (decoded, error) {
	t.Helper()
	var out decoded
	var err error
	out.skipped, err = keybundle.Decode(bytes.NewReader(data),
		func(k keybundle.RoomKey) error { out.keys = append(out.keys, k); return nil },
		func(w keybundle.Withheld) error { out.withheld = append(out.withheld, w); return nil })
	return out, err
}

// wireBundle is a bundle as a generic JSON document, to check exactly what goes on the wire.
type wireBundle struct {
	RoomKeys []map[string]any `json:"room_keys"`
	Withheld []map[string]any `json:"withheld"`
}

func parseWire(t *testing.T, data []byte) wireBundle {
	t.Helper()
	var top map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(data, &top), "bundle must be a JSON object: %s", data)
	require.Contains(t, top, "room_keys", "rust-sdk refuses a bundle without room_keys")
	require.Contains(t, top, "withheld", "rust-sdk refuses a bundle without withheld")
	var wb wireBundle
	require.NoError(t, json.Unmarshal(data, &wb))
	require.NotNil(t, wb.RoomKeys, "room_keys must be an array, not null")
	require.NotNil(t, wb.Withheld, "withheld must be an array, not null")
	return wb
}
