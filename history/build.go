package history

import (
	"context"
	"fmt"
	"io"

	"github.com/rs/zerolog"
	mcrypto "maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/crypto"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type ioWriter = io.Writer

// writeBundle streams every inbound session the puppet holds for the room through the builder,
// then the m.history_not_shared entries it received in earlier bundles.
func (s *Service) writeBundle(ctx context.Context, p *crypto.Puppet, roomID id.RoomID, w io.Writer) (keybundle.Counts, error) {
	builder := keybundle.NewBuilder(w, roomID, p.DeviceID)
	err := p.Store.GetGroupSessionsForRoom(ctx, roomID).Iter(func(igs *mcrypto.InboundGroupSession) (bool, error) {
		err := builder.AddSession(keybundle.Session{
			RoomID:        igs.RoomID,
			SessionID:     igs.ID(),
			SenderKey:     igs.SenderKey,
			SigningKey:    igs.SigningKey,
			SharedHistory: igs.SharedHistory != nil && *igs.SharedHistory,
			Export: func() (string, error) {
				key, err := igs.Internal.Export(igs.Internal.FirstKnownIndex())
				return string(key), err
			},
		})
		return err == nil, err
	})
	if err != nil {
		counts, _ := builder.Close()
		return counts, fmt.Errorf("failed to read sessions: %w", err)
	}
	withheld, err := s.receivedWithheld(ctx, p, roomID)
	if err != nil {
		return keybundle.Counts{}, err
	}
	for _, w := range withheld {
		builder.AddWithheld(w)
	}
	return builder.Close()
}

// receivedWithheld reads the withheld entries the puppet stored for the room. mautrix keeps them
// as inbound-session rows with a withheld code and no session; it has no query for them by room.
func (s *Service) receivedWithheld(ctx context.Context, p *crypto.Puppet, roomID id.RoomID) ([]keybundle.Withheld, error) {
	rows, err := s.db.Raw.Query(ctx, `
		SELECT session_id, sender_key, withheld_code, COALESCE(withheld_reason, '')
		FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session IS NULL AND withheld_code IN ($3, $4)`,
		p.UserID.String(), roomID, keybundle.CodeHistoryNotShared, keybundle.CodeHistoryNotSharedUnstable)
	if err != nil {
		return nil, fmt.Errorf("failed to read withheld sessions: %w", err)
	}
	defer rows.Close()
	var out []keybundle.Withheld
	for rows.Next() {
		w := keybundle.Withheld{RoomID: roomID, Algorithm: id.AlgorithmMegolmV1}
		if err = rows.Scan(&w.SessionID, &w.SenderKey, &w.Code, &w.Reason); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// countSessions counts the room's sessions, for reporting what an invite did not share.
func (s *Service) countSessions(ctx context.Context, p *crypto.Puppet, roomID id.RoomID) (int, error) {
	var n int
	err := s.db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1 AND room_id=$2`,
		p.UserID.String(), roomID).Scan(&n)
	return n, err
}

// maxBundleSize is the configured cap, lowered to the homeserver's media limit if that is smaller:
// a bundle over it fails with a clear error before anything is uploaded.
func (s *Service) maxBundleSize(ctx context.Context, p *crypto.Puppet) int64 {
	limit := s.cfg.HistorySharing.MaxBundleSize
	if mc, err := p.Client.GetMediaConfig(ctx); err == nil && mc.UploadSize > 0 && mc.UploadSize < limit {
		zerolog.Ctx(ctx).Debug().Int64("homeserver_limit", mc.UploadSize).Msg("Homeserver media limit caps the bundle size")
		limit = mc.UploadSize
	}
	return limit
}
