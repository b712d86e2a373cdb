package history

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

func (s *Service) isStopping() bool { return s.tasks.Stopping() }

// A shutdown that begins while a bundle is being downloaded and imported in the background waits
// for the import, so the database closes on a bundle imported whole: its state and every key.
// Nothing is started once the shutdown began.
func TestShutdownDuringImportLeavesNothingHalfWritten(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		const n = 2000
		ctx := context.Background()
		env, p, hs, rb := joinFixtureOn(t, dbCfg, n)
		invite(t, env, p, "$invite", event.MembershipInvite)
		stateKey := p.UserID.String()
		env.svc.TrackMembership(ctx, &event.Event{ID: "$join", Type: event.StateMember, RoomID: benchRoom, Sender: p.UserID,
			StateKey: &stateKey, Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipJoin}},
			Unsigned: event.Unsigned{ReplacesState: "$invite"}})
		require.NoError(t, env.db.StateStore.SetMembership(ctx, benchRoom, p.UserID, event.MembershipJoin))

		downloading, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		hs.onMedia = func() {
			once.Do(func() { close(downloading) })
			<-release
		}
		env.svc.background(ctx, "test_import", func(ctx context.Context) { env.svc.tryAccept(ctx, p, benchRoom) })
		select {
		case <-downloading:
		case <-time.After(10 * time.Second):
			t.Fatal("the import never began its download")
		}
		shutdown := make(chan error, 1)
		go func() {
			shutdownCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			shutdown <- env.svc.Shutdown(shutdownCtx)
		}()
		require.Eventually(t, env.svc.isStopping, 10*time.Second, 5*time.Millisecond)
		ran := make(chan struct{})
		env.svc.background(ctx, "too_late", func(context.Context) { close(ran) })
		close(release) // the import goes on only now that the shutdown is under way
		require.NoError(t, <-shutdown)
		require.NoError(t, env.db.Close())
		select {
		case <-ran:
			t.Fatal("work was started after the shutdown began")
		default:
		}

		db, err := database.Open(dbCfg, zerolog.Nop())
		require.NoError(t, err)
		defer db.Close()
		got, err := db.GetReceivedBundle(ctx, rb.Puppet, rb.RoomID, rb.Sender)
		require.NoError(t, err)
		require.Equal(t, database.ReceivedImported, got.State, got.Error)
		require.Equal(t, n*9/10, got.Imported)
		var keys int
		require.NoError(t, db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session
			WHERE account_id=$1 AND room_id=$2 AND session IS NOT NULL`, p.UserID.String(), benchRoom).Scan(&keys))
		require.Equal(t, got.Imported, keys, "every key the bundle's state counts is stored, and no other")
	})
}
