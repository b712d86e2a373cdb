package history

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// bridgeShape is a pooled bundle's benchmark input: holders bridge users in the room, each holding
// perUser sessions, each holder's starting offset sessions after the previous one's (offset
// perUser/2: consecutive holders share half of theirs; 0: every holder holds every session). A
// holder after the first got the first tenth of its sessions after they began (held from index 2,
// a copy to merge), the rest when they began (index 0, the very state of every other copy from
// index 0).
type bridgeShape struct{ holders, perUser, offset int }

// unique is how many sessions the bundle carries (a key or a withheld entry each).
func (b bridgeShape) unique() int { return b.perUser + (b.holders-1)*b.offset }

func (b bridgeShape) String() string {
	return fmt.Sprintf("holders=%d,copies=%d,sessions=%d", b.holders, b.holders*b.perUser, b.unique())
}

// bridgeShapes are the shapes to measure, from HEIRLOOM_BENCH_BRIDGE ("HOLDERSxSESSIONS[@OFFSET],…";
// OFFSET defaults to half of SESSIONS). The default measures, in the same run, ten holders whose
// copies overlap by half and ten that all hold every session, each against one bridge user holding
// the same sessions alone (with the bot in the room holding nothing: a puppet's own bundle, after
// the one probe that finds nobody else holds anything).
func bridgeShapes() []bridgeShape {
	raw := os.Getenv("HEIRLOOM_BENCH_BRIDGE")
	if raw == "" {
		raw = "10x10000,1x55000,10x10000@0,1x10000"
	}
	var out []bridgeShape
	for _, f := range strings.Split(raw, ",") {
		spec, off, hasOffset := strings.Cut(strings.TrimSpace(f), "@")
		h, n, _ := strings.Cut(spec, "x")
		holders, err1 := strconv.Atoi(h)
		perUser, err2 := strconv.Atoi(n)
		offset, err3 := perUser/2, error(nil)
		if hasOffset {
			offset, err3 = strconv.Atoi(off)
		}
		if err1 != nil || err2 != nil || err3 != nil || holders < 1 || perUser < 2 || offset < 0 {
			panic(fmt.Sprintf("HEIRLOOM_BENCH_BRIDGE: %q is not HOLDERSxSESSIONS[@OFFSET]", f))
		}
		out = append(out, bridgeShape{holders, perUser, offset})
	}
	return out
}

// fillBridge stores the shape's sessions for the bridge's bot (holder 0) and ghosts in benchRoom,
// every holder joined: 90 % of the sessions shared (the same flag in every copy). A shape of one
// holder is a ghost alone, the bot joined and holding nothing. It returns the last holder: the
// inviter.
func fillBridge(tb testing.TB, env *benchEnv, shape bridgeShape) (inviter *e2ee.Puppet) {
	tb.Helper()
	ctx := context.Background()
	holders := make([]id.UserID, shape.holders)
	for i := range holders {
		holders[i] = id.UserID(fmt.Sprintf("@irc_ghost%d:localhost", i))
	}
	holders[0] = bridgeBot
	if shape.holders == 1 {
		holders[0] = ghost
		if err := env.db.StateStore.SetMembership(ctx, benchRoom, bridgeBot, event.MembershipJoin); err != nil {
			tb.Fatal(err)
		}
	}
	keys := make([]string, shape.unique())
	for i := range keys {
		out, err := olm.NewOutboundGroupSession()
		if err != nil {
			tb.Fatal(err)
		}
		keys[i] = out.Key()
	}
	err := env.db.Raw.DoTxn(ctx, nil, func(ctx context.Context) error {
		for h, user := range holders {
			p, err := env.mgr.LocalPuppet(ctx, user, id.DeviceID(fmt.Sprintf("DEV%d", h)))
			if err != nil {
				return err
			}
			inviter = p
			if err = env.db.StateStore.SetMembership(ctx, benchRoom, user, event.MembershipJoin); err != nil {
				return err
			}
			start := h * shape.offset
			for i := start; i < start+shape.perUser; i++ {
				index := uint32(0)
				if h > 0 && i < start+shape.perUser/10 {
					index = 2
				}
				if err = holdCopy(ctx, p.Store, keys[i], i%10 != 0, index); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return inviter
}

// holdCopy stores a copy of the session whose key (index 0) is given, from index on.
func holdCopy(ctx context.Context, store *crypto.SQLCryptoStore, key string, shared bool, index uint32) error {
	in, err := olm.NewInboundGroupSession([]byte(key))
	if err != nil {
		return err
	}
	exported, err := in.Export(index)
	if err != nil {
		return err
	}
	if in, err = olm.InboundGroupSessionImport(exported); err != nil {
		return err
	}
	return store.PutGroupSession(ctx, &crypto.InboundGroupSession{Internal: in, SenderKey: validCurve, SigningKey: validEd,
		RoomID: benchRoom, SharedHistory: &shared, KeySource: id.KeySourceDirect, ForwardingChains: []string{}})
}

// BenchmarkBuildBridgeBundle builds and encrypts a bridge user's bundle pooled from what the
// bridge's users in the room hold (pooled.go), as BenchmarkBuildBundle does a puppet's own.
func BenchmarkBuildBridgeBundle(b *testing.B) {
	for _, shape := range bridgeShapes() {
		b.Run(shape.String(), func(b *testing.B) {
			st := benchStateFor(b, fmt.Sprint("bridge", shape), func(st *benchState) {
				env, err := openBenchEnv(st.dir)
				if err != nil {
					b.Fatal(err)
				}
				reg := filepath.Join(st.dir, "bridge.yaml")
				err = os.WriteFile(reg, []byte("id: b\nurl: http://127.0.0.1:1\nas_token: bridge-as-0123456789\nhs_token: bridge-hs-0123456789\n"+
					"sender_localpart: bridgebot\nnamespaces:\n  users:\n  - regex: '@irc_.*'\n    exclusive: true\n"), 0o600)
				if err != nil {
					b.Fatal(err)
				}
				env.svc.cfg.Gateway.Registration = reg
				if env.svc.cfg.Bridge, err = env.svc.cfg.LoadBridge(); err != nil {
					b.Fatal(err)
				}
				st.env, st.p = env, fillBridge(b, env, shape)
			})
			unique := shape.unique()
			times := make([]float64, 0, b.N)
			var sealed *keybundle.Sealed
			for i := 0; i < b.N; i++ {
				st.next++
				stopProfile := profileRun(b, b.N > 1, "bridge-build", st.next) // the N=1 call is the warm-up
				start := time.Now()
				var err error
				sealed, err = keybundle.Seal(st.env.dir, 1<<30, func(w io.Writer) (keybundle.Counts, error) {
					return st.env.svc.writeBundle(context.Background(), st.p, benchRoom, w)
				})
				if err != nil {
					b.Fatal(err)
				}
				times = append(times, millis(time.Since(start)))
				stopProfile()
				wantWithheld := (unique + 9) / 10
				if sealed.Counts.Sessions != unique-wantWithheld || sealed.Counts.Withheld != wantWithheld {
					b.Fatalf("bundle holds %+v, want %d sessions", sealed.Counts, unique)
				}
				b.ReportMetric(float64(sealed.Size), "bundle-bytes")
				_ = sealed.Close()
			}
			b.ReportMetric(medianMS(times), "median-ms")
		})
	}
}
