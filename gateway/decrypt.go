package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// EncryptionKey is the unsigned key under which an event decrypted for the bridge says how it was
// encrypted.
const EncryptionKey = "io.heirloom.encryption"

// Encryption is what heirloom tells the bridge about an event it decrypted.
type Encryption struct {
	Algorithm    id.Algorithm `json:"algorithm"`
	SessionID    id.SessionID `json:"session_id"`
	SenderDevice id.DeviceID  `json:"sender_device,omitempty"`
	// Trust is verified, cross_signed, unsigned, identity_changed, unknown_device, forwarded,
	// key_mismatch or blacklisted (e2ee.TrustName).
	Trust string `json:"trust"`
	// KeysSharedBy is the user whose key bundle supplied the key (MSC4268): heirloom has only
	// their word for who sent the event.
	KeysSharedBy id.UserID `json:"keys_shared_by,omitempty"`
}

// readers returns the bridge users with an E2EE identity who may hold the room's keys: first the
// user acting (if it has one), then the room's other bridge members that do.
func (g *Gateway) readers(ctx context.Context, roomID id.RoomID, first id.UserID) []*e2ee.Puppet {
	var out []*e2ee.Puppet
	seen := map[id.UserID]bool{}
	try := func(u id.UserID) {
		if seen[u] || !g.cfg.IsBridgeUser(u) {
			return
		}
		seen[u] = true
		if p, err := g.mgr.Get(ctx, u); err == nil {
			out = append(out, p)
		}
	}
	if first != "" {
		try(first)
	}
	try(g.bridge.Bot)
	members, err := g.db.StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to list the room's members")
	}
	for _, u := range members {
		try(u)
	}
	return out
}

// errNoReader means no bridge user in the room has an E2EE identity yet.
var errNoReader = errors.New("no bridge user in the room has an E2EE device")

// decryptForBridge decrypts an encrypted room event (its JSON as the homeserver sent it) with the
// keys of a bridge user in the room, and returns the event as the bridge gets it: the same ID,
// sender, room and time, the decrypted type and content (encrypted media rewritten to URLs the
// bridge downloads through heirloom), and unsigned["io.heirloom.encryption"]. It returns the
// session ID in any case, and an error keyMayArrive recognises when no reader has its key.
// An encrypted state event, a payload checkDecrypted refuses, and an event whose session is not
// known to be its sender's (checkSessionOwner) are not decrypted for the bridge (errNotForBridge
// and the like): they go to it as they are.
func (g *Gateway) decryptForBridge(ctx context.Context, raw json.RawMessage, acting id.UserID) (json.RawMessage, id.SessionID, error) {
	var evt event.Event
	if err := json.Unmarshal(raw, &evt); err != nil {
		return nil, "", fmt.Errorf("failed to parse encrypted event: %w", err)
	}
	if evt.StateKey != nil {
		return nil, sessionOf(&evt), errNotForBridge
	}
	evt.Type.Class = event.MessageEventType
	readers := g.readers(ctx, evt.RoomID, acting)
	if len(readers) == 0 {
		return nil, sessionOf(&evt), errNoReader
	}
	var lastErr error
	var session id.SessionID
	for _, p := range readers {
		copyEvt := evt
		copyEvt.Content = event.Content{VeryRaw: evt.Content.VeryRaw}
		d, err := p.Decrypt(ctx, &copyEvt)
		if d != nil && d.SessionID != "" {
			session = d.SessionID
		}
		if err != nil {
			lastErr = err
			continue
		}
		if err = checkDecrypted(d); err != nil {
			return nil, session, err
		}
		if err = checkSessionOwner(ctx, p, &evt, d.SessionID); err != nil {
			lastErr = err // another reader's copy may be the sender's own
			continue
		}
		out, err := g.bridgeEvent(ctx, raw, d)
		return out, session, err
	}
	return nil, session, lastErr
}

// keyMayArrive reports whether a decryption failed for want of a key that may still arrive: none is
// held yet, or a withheld answer is. A withheld message is plaintext that names any session (the
// sender key it names is not the session's, which only the key shows), so for the bridge it is
// never final: the event waits for its key, and its decrypted copy follows the key, as for a key
// that has not come yet.
func keyMayArrive(err error) bool {
	return e2ee.IsMissingKey(err) || errors.Is(err, crypto.ErrGroupSessionWithheld)
}

func sessionOf(evt *event.Event) id.SessionID {
	var c struct {
		SessionID id.SessionID `json:"session_id"`
	}
	_ = json.Unmarshal(evt.Content.VeryRaw, &c)
	return c.SessionID
}

// bridgeEvent builds the decrypted event for the bridge from the encrypted one's JSON, keeping
// every field the homeserver sent (unsigned, redacts, …) but type and content.
func (g *Gateway) bridgeEvent(ctx context.Context, raw json.RawMessage, d *e2ee.Decrypted) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	var content map[string]any
	dec := json.NewDecoder(bytes.NewReader(d.Event.Content.VeryRaw))
	dec.UseNumber() // numbers as they were, not rounded to float64
	if err := dec.Decode(&content); err != nil {
		return nil, fmt.Errorf("failed to parse decrypted content: %w", err)
	}
	if err := g.exposeMedia(ctx, content); err != nil {
		return nil, err
	}
	var err error
	if fields["type"], err = json.Marshal(d.Event.Type.Type); err != nil {
		return nil, err
	}
	if fields["content"], err = json.Marshal(content); err != nil {
		return nil, err
	}
	var unsigned map[string]json.RawMessage
	if u, ok := fields["unsigned"]; ok {
		_ = json.Unmarshal(u, &unsigned)
	}
	if unsigned == nil {
		unsigned = map[string]json.RawMessage{}
	}
	if unsigned[EncryptionKey], err = json.Marshal(Encryption{Algorithm: id.AlgorithmMegolmV1, SessionID: d.SessionID,
		SenderDevice: d.SenderDevice, Trust: d.Trust, KeysSharedBy: d.KeysSharedBy}); err != nil {
		return nil, err
	}
	if fields["unsigned"], err = json.Marshal(unsigned); err != nil {
		return nil, err
	}
	return json.Marshal(fields)
}

// exposeMedia rewrites the encrypted attachments of decrypted content (file, info.thumbnail_file)
// to plain media URLs (url, info.thumbnail_url) that only heirloom serves, decrypted and
// hash-checked: bridges read url, and cannot decrypt.
func (g *Gateway) exposeMedia(ctx context.Context, content map[string]any) error {
	expose := func(container map[string]any, fileKey, urlKey string) error {
		raw, ok := container[fileKey]
		if !ok {
			return nil
		}
		data, err := json.Marshal(raw)
		if err != nil {
			return err
		}
		var file event.EncryptedFileInfo
		if err = json.Unmarshal(data, &file); err != nil || file.URL == "" {
			return nil // not a file we can serve: leave it as it is
		}
		mediaID := mediaIDOf(&file)
		sealed, err := g.mgr.Sealer.SealJSON(mediaOwner(mediaID), &file)
		if err != nil {
			return err
		}
		if err = g.db.PutGatewayMedia(ctx, mediaID, sealed); err != nil {
			return err
		}
		delete(container, fileKey)
		container[urlKey] = id.ContentURI{Homeserver: g.cfg.Homeserver.Domain, FileID: mediaID}.String()
		return nil
	}
	if err := expose(content, "file", "url"); err != nil {
		return err
	}
	if info, ok := content["info"].(map[string]any); ok {
		return expose(info, "thumbnail_file", "thumbnail_url")
	}
	return nil
}

// mediaIDPrefix starts every media ID heirloom hands out for a decrypted file.
const mediaIDPrefix = "heirloom_"

// mediaIDOf names an encrypted file the same way each time it is decrypted, from everything
// heirloom needs to serve it (its URL, key, IV and hash): nobody can guess it without the key, and
// an event naming the same file with another IV or hash gets another ID, never the record of the
// first (which would leave the file unservable, its hash or plaintext wrong).
func mediaIDOf(file *event.EncryptedFileInfo) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{string(file.URL), file.Key.Key, file.InitVector, file.Hashes.SHA256}, "\x00")))
	return mediaIDPrefix + base64.RawURLEncoding.EncodeToString(sum[:24])
}

func mediaOwner(mediaID string) string { return "gateway-media:" + mediaID }

// handleRead forwards a read of room events (/messages, /context, /event, /relations) and
// decrypts the encrypted events of the answer for the bridge user asking.
func (g *Gateway) handleRead(w http.ResponseWriter, r *http.Request, user id.UserID, roomID id.RoomID) {
	rec := g.forwardRecorded(r, nil)
	if rec.status != http.StatusOK {
		rec.writeTo(w, nil)
		return
	}
	var answer map[string]json.RawMessage
	if err := json.Unmarshal(rec.body.Bytes(), &answer); err != nil {
		rec.writeTo(w, nil)
		return
	}
	ctx := r.Context()
	changed := false
	decrypt := func(raw json.RawMessage) json.RawMessage {
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(raw, &head) != nil || head.Type != event.EventEncrypted.Type {
			return raw
		}
		out, _, err := g.decryptForBridge(ctx, raw, user)
		if err != nil {
			g.metrics.decryptFailures.WithLabelValues(failureReason(err)).Inc()
			return raw
		}
		changed = true
		return out
	}
	if _, isEvent := answer["event_id"]; isEvent { // GET …/event/{eventId}
		if out := decrypt(rec.body.Bytes()); changed {
			rec.writeTo(w, out)
			return
		}
		rec.writeTo(w, nil)
		return
	}
	for _, key := range []string{"chunk", "events_before", "events_after"} {
		var list []json.RawMessage
		if json.Unmarshal(answer[key], &list) != nil {
			continue
		}
		for i := range list {
			list[i] = decrypt(list[i])
		}
		answer[key], _ = json.Marshal(list)
	}
	if one, ok := answer["event"]; ok {
		answer["event"] = decrypt(one)
	}
	if !changed {
		rec.writeTo(w, nil)
		return
	}
	out, err := json.Marshal(answer)
	if err != nil {
		rec.writeTo(w, nil)
		return
	}
	rec.writeTo(w, out)
}

// failureReason is the metric label of a failed decryption.
func failureReason(err error) string {
	switch {
	case e2ee.IsMissingKey(err):
		return "missing_key"
	case errors.Is(err, crypto.ErrGroupSessionWithheld):
		return "withheld"
	case errors.Is(err, errNoReader):
		return "no_reader"
	case errors.Is(err, errNotForBridge):
		return "not_for_bridge"
	case errors.Is(err, errNotSendersSession):
		return "not_senders_session"
	case errors.Is(err, errContentTooDeep):
		return "too_deep"
	case errors.Is(err, errContentTooLarge):
		return "too_large"
	default:
		return "other"
	}
}
