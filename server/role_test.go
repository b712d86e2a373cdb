package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/lease"
	"github.com/heirloom-matrix/heirloom/server"
)

// testLease is a lease whose role the test sets.
type testLease struct {
	mu     sync.Mutex
	role   lease.Role
	holder lease.Holder
}

func (l *testLease) set(r lease.Role) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.role = r
}

func (l *testLease) Active() bool { return l.Role() == lease.Active }
func (l *testLease) Role() lease.Role {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.role
}
func (l *testLease) Holder() lease.Holder { return l.holder }
func (l *testLease) Describe() string     { return "PostgreSQL database heirloom on db:5432" }

func (h *harness) status(t *testing.T) (int, map[string]any) {
	t.Helper()
	resp := h.do(t, http.MethodGet, "/_heirloom/v1/status", "Bearer "+sharedSecret, nil)
	var body map[string]any
	require.NoError(t, json.Unmarshal(resp.body, &body), "%s", resp.body)
	return resp.status, body
}

func (h *harness) requireNotActive(t *testing.T, resp response, what string) {
	t.Helper()
	require.Equal(t, http.StatusServiceUnavailable, resp.status, "%s: %s", what, resp.body)
	errcode, msg := resp.matrixError(t)
	require.Equal(t, "IO.HEIRLOOM.NOT_ACTIVE", errcode, what)
	require.Contains(t, msg, "not the active one", what)
}

// A process that does not hold the lease (a standby, or one that lost it) takes no transaction,
// so that the homeserver sends it again later, acts on no API call, and says so: GET /ready 503
// without a token, GET /status and /metrics its role.
func TestWithoutTheLeaseNothingActs(t *testing.T) {
	h := newHarness(t)
	l := &testLease{holder: lease.Holder{Host: "db-host-a", PID: 4242, Since: time.UnixMilli(1_700_000_000_000)}}
	h.srv.UseLease(l)
	h.provision(t, puppet)
	txn := func(id string) response {
		return h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+id, "Bearer "+hsToken, strings.NewReader(emptyTxn))
	}

	for i, stage := range []struct {
		name string
		role lease.Role
	}{{"standby", lease.Standby}, {"holding the lease, not yet activated", lease.Active}} {
		l.set(stage.role)
		txnID := fmt.Sprintf("standby-%d", i)
		h.requireNotActive(t, txn(txnID), stage.name+": a transaction")
		require.False(t, h.processed(t, txnID), "a refused transaction is not recorded")
		h.requireNotActive(t, h.do(t, http.MethodPut, "/_heirloom/v1/puppets/"+string(puppet), "Bearer "+sharedSecret, strings.NewReader(`{}`)), stage.name+": provisioning")
		h.requireNotActive(t, h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms", "Bearer "+asToken, nil), stage.name+": a client-server call")
		h.requireNotActive(t, h.do(t, http.MethodGet, "/_heirloom/v1/ready", "", nil), stage.name+": readiness")
		code, status := h.status(t)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "standby", status["role"])
		require.Equal(t, map[string]any{"database": "PostgreSQL database heirloom on db:5432", "active_host": "db-host-a",
			"active_pid": float64(4242), "active_since": "2023-11-14T22:13:20Z"}, status["lease"])
		require.NotContains(t, status, "puppets", "a standby does not read the active process's database")
		require.True(t, h.metric(t, `heirloom_role{role="standby"} 1`))
		require.True(t, h.metric(t, `heirloom_role{role="active"} 0`))
	}
	require.True(t, h.metric(t, `heirloom_transactions_total{outcome="not_active"} 2`))
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPost, "/_matrix/app/v1/ping", "Bearer "+hsToken, strings.NewReader(`{}`)).status,
		"the homeserver's ping is answered: it proves the registration and writes nothing")

	h.srv.Activate()
	require.Equal(t, http.StatusOK, txn("active").status)
	require.True(t, h.processed(t, "active"))
	ready := h.do(t, http.MethodGet, "/_heirloom/v1/ready", "", nil)
	require.Equal(t, http.StatusOK, ready.status)
	require.JSONEq(t, `{}`, string(ready.body), "the readiness answer says nothing more")
	_, status := h.status(t)
	require.Equal(t, "active", status["role"])
	require.EqualValues(t, 1, status["puppets"])
	require.True(t, h.metric(t, `heirloom_role{role="active"} 1`))

	// The lease is lost: everything stops at once.
	l.set(lease.Lost)
	h.requireNotActive(t, txn("lost"), "lost: a transaction")
	require.False(t, h.processed(t, "lost"))
	h.requireNotActive(t, h.do(t, http.MethodGet, "/_heirloom/v1/ready", "", nil), "lost: readiness")
	_, status = h.status(t)
	require.Equal(t, "lost", status["role"])
	require.True(t, h.metric(t, `heirloom_role{role="lost"} 1`))
}

// A send the bridge retries under its txn_id (after a failover, say) goes to the homeserver under
// the same transaction ID, which the homeserver answers with the first event; another puppet's
// send under the same txn_id is another transaction.
func TestSendTxnIDIsThePuppets(t *testing.T) {
	first, err := server.SendTxnID(puppet, "bridge-42")
	require.NoError(t, err)
	again, err := server.SendTxnID(puppet, "bridge-42")
	require.NoError(t, err)
	require.Equal(t, first, again)
	require.NotContains(t, first, "bridge-42", "the homeserver's ID is derived, not the caller's")
	other, err := server.SendTxnID("@heirloom_alice:localhost", "bridge-42")
	require.NoError(t, err)
	require.NotEqual(t, first, other)
	none, err := server.SendTxnID(puppet, "")
	require.NoError(t, err)
	require.Empty(t, none, "no txn_id: a new transaction each time")
	_, err = server.SendTxnID(puppet, strings.Repeat("x", 256))
	require.Error(t, err)
}
