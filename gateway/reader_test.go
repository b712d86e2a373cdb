package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// reader is the bridge user the read and delivery tests read as: heirloom holds its device READER.
const reader = id.UserID("@irc_reader:localhost")

// newReader saves reader with a ready device and loads its machine, to be given keys.
func (h *harness) newReader(t *testing.T) *e2ee.Puppet {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, h.db.PutPuppet(ctx, &database.Puppet{UserID: reader, DeviceID: "READER", Ready: true}))
	p, err := h.mgr.Get(ctx, reader)
	require.NoError(t, err)
	return p
}

// readerJoins is reader's join of room, as the homeserver sends it.
func readerJoins(eventID string, room id.RoomID) string {
	return inRoom(memberEvent(eventID, string(reader), string(reader), "join"), room)
}

// answerPaths has the fake homeserver answer each path that ends in one of answers' keys with its
// value, and everything else with M_NOT_FOUND.
func (h *harness) answerPaths(answers map[string]string) {
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		for suffix, answer := range answers {
			if strings.HasSuffix(r.URL.Path, suffix) {
				answerJSON(http.StatusOK, answer)(w, r, body)
				return
			}
		}
		answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found"}`)(w, r, body)
	})
}

// readAs has reader read path (after /rooms/{room}) of room through the gateway.
func (h *harness) readAs(t *testing.T, room id.RoomID, path string) response {
	t.Helper()
	version := "v3"
	if strings.HasPrefix(path, "/relations/") {
		version = "v1"
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	return h.do(t, http.MethodGet, "/_matrix/client/"+version+"/rooms/"+string(room)+path+sep+"user_id="+string(reader), bridgeAS, "")
}
