package database_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// BenchmarkOutboxHeadsScan reads the heads of a whole outbox of 50,000 events of 2 KB: what the
// gateway's composer reads when one room holds back everything behind it.
func BenchmarkOutboxHeadsScan(b *testing.B) {
	ctx := context.Background()
	db, err := database.Open(testdb.SQLite(b), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	if err = db.Upgrade(ctx); err != nil {
		b.Fatal(err)
	}
	body := `{"pad":"` + strings.Repeat("x", 2000) + `"}`
	for i := 0; i < 50_000; i += 1000 {
		var batch []*database.GatewayEvent
		for j := i; j < i+1000; j++ {
			batch = append(batch, &database.GatewayEvent{Key: fmt.Sprint(j), EventID: id.EventID(fmt.Sprint("$", j)), RoomID: "!a:hs",
				Kind: database.GatewayRoomEvent, Body: body})
		}
		if err = db.PutGatewayEvents(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		var after int64
		n := 0
		for {
			heads, err := db.GatewayOutboxHeads(ctx, after, 2000)
			if err != nil {
				b.Fatal(err)
			}
			n += len(heads)
			if len(heads) < 2000 {
				break
			}
			after = heads[len(heads)-1].Seq
		}
		if n != 50_000 {
			b.Fatalf("read %d heads", n)
		}
	}
}
