package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", e.asPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := new(strings.Builder)
	_, _ = fmt.Fprint(buf, "")
	data := make([]byte, 0, 64<<10)
	tmp := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(tmp)
		data = append(data, tmp[:n]...)
		if err != nil {
			break
		}
	}
	total := 0.0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, name) {
			var v float64
			fields := strings.Fields(line)
			_, _ = fmt.Sscan(fields[len(fields)-1], &v)
			total += v
		}
	}
	return total
}

// A user registered through the admin API invites heirloom's bot; Synapse must deliver that
// invite to heirloom in a transaction.
func TestSynapseDeliversTransactionOnBotInvite(t *testing.T) {
	u := newJSUser(t, true)
	before := metric(t, `heirloom_events_total{section="events",type="m.room.member"}`)
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "encrypted": false,
		"invite": []string{"@heirloombot:" + domain}}, &room)
	eventually(t, 30*time.Second, "heirloom to receive the bot's invite", func() (bool, string) {
		after := metric(t, `heirloom_events_total{section="events",type="m.room.member"}`)
		return after > before, fmt.Sprintf("member events before %v, now %v", before, after)
	})
	if processed := metric(t, `heirloom_transactions_total{outcome="processed"}`); processed < 1 {
		t.Fatalf("no transaction counted as processed")
	}
}

// heirloom answers Synapse's appservice ping (Synapse calls heirloom's /ping and reports back).
func TestAppservicePing(t *testing.T) {
	var resp struct {
		DurationMS int64 `json:"duration_ms"`
	}
	code, err := e.request("POST", e.hsURL+"/_matrix/client/v1/appservice/heirloom/ping", "Bearer "+e.asToken,
		map[string]any{"transaction_id": "e2e-ping"}, &resp)
	if err != nil || code != 200 {
		t.Fatalf("ping through Synapse: %d %v", code, err)
	}
}

// A transaction with a wrong hs_token is refused and processes nothing.
func TestBadHSTokenRefused(t *testing.T) {
	before := metric(t, `heirloom_transactions_total{outcome="processed"}`)
	body := map[string]any{"events": []any{map[string]any{"type": "m.room.message", "room_id": "!x:localhost",
		"sender": "@evil:localhost", "event_id": "$evil", "content": map[string]any{"body": "x"}}}}
	var errResp struct {
		ErrCode string `json:"errcode"`
	}
	code, err := e.request("PUT", fmt.Sprintf("http://127.0.0.1:%d/_matrix/app/v1/transactions/evil1", e.asPort),
		"Bearer wrong-token", body, &errResp)
	if err != nil || code != 403 || errResp.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("wrong hs_token answered %d %q %v, want 403 M_FORBIDDEN", code, errResp.ErrCode, err)
	}
	if after := metric(t, `heirloom_transactions_total{outcome="processed"}`); after != before {
		t.Fatalf("a refused transaction was processed (%v -> %v)", before, after)
	}
}

// The bridge API refuses a wrong secret with 401 M_UNKNOWN_TOKEN.
func TestAPIWrongSecret(t *testing.T) {
	var errResp struct {
		ErrCode string `json:"errcode"`
	}
	code, err := e.request("GET", fmt.Sprintf("http://127.0.0.1:%d/_heirloom/v1/status", e.asPort), "Bearer nope", nil, &errResp)
	if err != nil || code != 401 || errResp.ErrCode != "M_UNKNOWN_TOKEN" {
		t.Fatalf("got %d %q %v", code, errResp.ErrCode, err)
	}
	var status map[string]any
	apiOK(t, "GET", "/status", nil, &status)
	if status["homeserver_reachable"] != true {
		t.Fatalf("status says the homeserver is unreachable: %v", status)
	}
}
