package server_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/server"
)

// a section of the wrong shape is dropped without being counted in Invalid.
func TestParseTransactionCountsBadSections(t *testing.T) {
	for body, want := range map[string]int{
		`{"events":5,"to_device":[]}`:         1,
		`{"events":[],"to_device":"x"}`:       1,
		`{"ephemeral":{},"events":5}`:         2,
		`{"de.sorunome.msc2409.to_device":7}`: 1,
	} {
		txn, err := server.ParseTransaction([]byte(body))
		require.NoError(t, err)
		require.Equal(t, want, txn.Invalid, body)
	}
}
