package history

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	mcrypto "maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/crypto"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

const benchRoom = id.RoomID("!bench:localhost")

// benchEnv is a real SQLite database with a service and puppets, no homeserver.
type benchEnv struct {
	db  *database.Database
	mgr *crypto.Manager
	svc *Service
	dir string
}

func newBenchEnv(tb testing.TB) *benchEnv {
	tb.Helper()
	dir := tb.TempDir()
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: "http://127.0.0.1:1", Domain: "localhost"},
		AppService: config.AppService{ASToken: "bench-as-token-0123456789", PuppetPrefix: "heirloom_", BotUsername: "bot"},
		Database: config.Database{Type: "sqlite3-fk-wal", URI: "file:" + filepath.Join(dir, "bench.db") + "?_txlock=immediate",
			MaxOpenConns: 5, MaxIdleConns: 2},
		Encryption:     config.Encryption{PickleKey: "bench-pickle-key-0123456789"},
		HistorySharing: config.HistorySharing{AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 30},
	}
	db, err := database.Open(cfg.Database, zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if err = db.Upgrade(context.Background()); err != nil {
		tb.Fatal(err)
	}
	mgr, err := crypto.NewManager(cfg, db, http.DefaultClient)
	if err != nil {
		tb.Fatal(err)
	}
	svc := NewService(cfg, db, mgr)
	svc.TempDir = dir
	return &benchEnv{db: db, mgr: mgr, svc: svc, dir: dir}
}

func (b *benchEnv) puppet(tb testing.TB, name string) *crypto.Puppet {
	tb.Helper()
	p, err := b.mgr.LocalPuppet(context.Background(), id.UserID("@heirloom_"+name+":localhost"), id.DeviceID("DEV"+name))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// fillSessions stores n valid megolm sessions in the room for the puppet: 90 % shared, 10 % not.
func fillSessions(tb testing.TB, b *benchEnv, p *crypto.Puppet, n int) {
	tb.Helper()
	ctx := context.Background()
	err := b.db.Raw.DoTxn(ctx, nil, func(ctx context.Context) error {
		for i := 0; i < n; i++ {
			ogs, err := olm.NewOutboundGroupSession()
			if err != nil {
				return err
			}
			shared := i%10 != 0
			igs, err := mcrypto.NewInboundGroupSession(id.SenderKey(fmt.Sprintf("senderkey%06d", i%50)), id.Ed25519("signingkey"),
				benchRoom, ogs.Key(), 7*24*time.Hour, 100, &shared, false)
			if err != nil {
				return err
			}
			if err = p.Store.PutGroupSession(ctx, igs); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

func benchSizes() []int { return []int{1_000, 10_000} }

// BenchmarkBuildBundle builds and encrypts the bundle of a room with N sessions from SQLite, as an
// invite does before uploading.
func BenchmarkBuildBundle(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			env := newBenchEnv(b)
			p := env.puppet(b, "builder")
			fillSessions(b, env, p, n)
			ctx := context.Background()
			b.ResetTimer()
			var size int64
			for i := 0; i < b.N; i++ {
				sealed, err := keybundle.Seal(env.dir, 1<<30, func(w io.Writer) (keybundle.Counts, error) {
					return env.svc.writeBundle(ctx, p, benchRoom, w)
				})
				if err != nil {
					b.Fatal(err)
				}
				if sealed.Counts.Sessions != n*9/10 || sealed.Counts.Withheld != n/10 {
					b.Fatalf("bundle holds %+v", sealed.Counts)
				}
				size = sealed.Size
				_ = sealed.Close()
			}
			b.ReportMetric(float64(size), "bundle-bytes")
		})
	}
}

// BenchmarkImportBundle imports a decrypted bundle of N sessions into a fresh puppet's SQLite store.
func BenchmarkImportBundle(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			env := newBenchEnv(b)
			src := env.puppet(b, "source")
			fillSessions(b, env, src, n)
			var plain bytes.Buffer
			counts, err := env.svc.writeBundle(context.Background(), src, benchRoom, &plain)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dst := env.puppet(b, fmt.Sprintf("dst%d", i))
				rb := &database.ReceivedBundle{Puppet: dst.UserID, RoomID: benchRoom, Sender: "@alice:localhost", SenderKey: "alicekey"}
				b.StartTimer()
				res, err := env.svc.importBundle(context.Background(), dst, rb, io.NopCloser(bytes.NewReader(plain.Bytes())))
				if err != nil {
					b.Fatal(err)
				}
				if res.imported != counts.Sessions || res.withheld != counts.Withheld {
					b.Fatalf("imported %+v of %+v", res, counts)
				}
			}
		})
	}
}
