package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
	"github.com/heirloom-matrix/heirloom/internal/mediafetch"
)

// errMediaTooLarge means a file in an event is over gateway.max_media_size.
var errMediaTooLarge = errors.New("media file over gateway.max_media_size")

// identity returns the E2EE identity of a bridge user, creating its device and cross-signing
// identity the first time it is needed (before its first encrypted send, or when a room needs a
// reader): ghosts that never speak in an encrypted room get none.
func (g *Gateway) identity(ctx context.Context, userID id.UserID) (*e2ee.Puppet, error) {
	p, err := g.mgr.Get(ctx, userID)
	if err == nil || !errors.Is(err, e2ee.ErrNotProvisioned) {
		return p, err
	}
	defer g.provisioning.WithLock(userID)()
	if p, err = g.mgr.Get(ctx, userID); err == nil || !errors.Is(err, e2ee.ErrNotProvisioned) {
		return p, err
	}
	ident, err := g.mgr.Provision(ctx, userID, "")
	if err != nil {
		return nil, fmt.Errorf("failed to create the E2EE device of %s: %w", userID, err)
	}
	g.metrics.devices.Inc()
	zerolog.Ctx(ctx).Info().Stringer("user_id", userID).Stringer("device_id", ident.DeviceID).
		Stringer("master_key", ident.MasterKey).Msg("Created the E2EE device and identity of a bridge user")
	return g.mgr.Get(ctx, userID)
}

// roomEncrypted reports whether a send into the room must be encrypted (e2ee.Manager.RoomEncrypted:
// false only when the homeserver just said the room has no m.room.encryption), loading the room's
// state once if heirloom has never seen it.
func (g *Gateway) roomEncrypted(ctx context.Context, user id.UserID, roomID id.RoomID) (bool, error) {
	cli := g.mgr.Client(ctx, user)
	if err := g.mgr.EnsureRoomState(ctx, cli, roomID); err != nil {
		return false, err
	}
	return g.mgr.RoomEncrypted(ctx, cli, roomID)
}

// handleSend encrypts the bridge's send into an encrypted room with the sender's own session, and
// sends it as m.room.encrypted. A send with a transaction ID (PUT …/send/{type}/{txn}, an empty ID
// included, as the homeserver takes it) is sent once: a retry of it answers the event sent the
// first time, without encrypting again. A POST …/send/{type} has none, and is sent each time.
// Sends into unencrypted rooms, and m.room.encrypted events the bridge encrypted itself, go to the
// homeserver as they are.
func (g *Gateway) handleSend(w http.ResponseWriter, r *http.Request, user id.UserID, roomID id.RoomID, evtType event.Type, txnID string, hasTxn bool) {
	ctx := r.Context()
	log := zerolog.Ctx(ctx).With().Stringer("room_id", roomID).Str("event_type", evtType.Type).Str("bridge_txn_id", txnID).Logger()
	ctx = log.WithContext(ctx)
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	encrypted, err := g.roomEncrypted(ctx, user, roomID)
	switch {
	case errors.Is(err, e2ee.ErrUnknownRoom):
		// The sender cannot see the room: the homeserver's own refusal, and nothing sent.
		log.Debug().Err(err).Msg("The sender cannot see the room; refusing the send as the homeserver would")
		matrixerr.Write(w, r, err)
		return
	case errors.Is(err, e2ee.ErrUnusableEncryption):
		log.Warn().Err(err).Msg("The room is encrypted with settings heirloom cannot use; refusing the send")
		matrixerr.Respond(w, mautrix.MUnknown.WithMessage("the room's encryption is not one heirloom can encrypt with; nothing was sent").WithStatus(http.StatusBadGateway))
		return
	case err != nil:
		// Never send in the clear into a room that may be encrypted: the bridge gets an error
		// (JSON with an errcode, which bridges treat as a failed send, not as a reason to resend).
		log.Warn().Err(err).Msg("Cannot tell whether the room is encrypted; refusing the send")
		matrixerr.Respond(w, errEncryptionState)
		return
	case !encrypted:
		g.sendPlain(w, r, user, roomID, body)
		return
	case evtType == event.EventEncrypted:
		if !g.warnedEncrypted.Swap(true) {
			log.Warn().Msg("The bridge sends m.room.encrypted events itself: forwarding them untouched (turn the bridge's own encryption off)")
		}
		g.forwardBody(w, r, body)
		return
	}
	content, err := decodeContent(body)
	if err != nil {
		// Content heirloom cannot read cannot be encrypted, and is never sent in the clear into an
		// encrypted room: the homeserver's JSON parser may accept what Go's refuses.
		log.Debug().Err(err).Msg("Refused a send into an encrypted room whose content heirloom cannot read")
		matrixerr.Respond(w, mautrix.MNotJSON.WithMessage("the event's content is not a JSON object heirloom can encrypt; nothing was sent"))
		return
	}
	if !hasTxn {
		g.sendEncrypted(w, r.WithContext(ctx), user, roomID, evtType, content, "")
		return
	}
	key := sendKey(roomID, evtType, txnID)
	defer g.sendLocks.WithLock(user.String() + "|" + key)()
	if eventID, err := g.db.GatewaySend(ctx, user, key); err != nil {
		matrixerr.Write(w, r, err)
		return
	} else if eventID != "" {
		matrixerr.JSON(w, http.StatusOK, mautrix.RespSendEvent{EventID: eventID})
		return
	}
	g.sendEncrypted(w, r.WithContext(ctx), user, roomID, evtType, content, key)
}

// sendPlain forwards a send into a room the homeserver just said is unencrypted. If the homeserver
// refuses it because the sender is not in the room, its word on the room was not a member's: it is
// forgotten before the bridge, which may join and send again at once, hears of the refusal.
func (g *Gateway) sendPlain(w http.ResponseWriter, r *http.Request, user id.UserID, roomID id.RoomID, body []byte) {
	rec := g.forwardRecorded(r, body)
	if rec.status == http.StatusForbidden {
		g.mgr.ForgetPlaintext(roomID, user)
	}
	rec.writeTo(w, nil)
}

// errEncryptionState refuses a send heirloom cannot tell is bound for an unencrypted room.
var errEncryptionState = mautrix.MUnknown.WithMessage("heirloom could not read the room's encryption state from the homeserver").
	WithStatus(http.StatusBadGateway)

// sendKey names a send with a transaction ID as the homeserver does (the request's path: room,
// event type and transaction ID, per sender), unambiguously.
func sendKey(roomID id.RoomID, evtType event.Type, txnID string) string {
	return fmt.Sprintf("%d:%s%d:%s%s", len(roomID), roomID, len(evtType.Type), evtType.Type, txnID)
}

// encryptedTxnID is the transaction ID of the m.room.encrypted event a send with a transaction ID
// becomes: the same for a retry (if heirloom did not live to record the event, the homeserver
// answers the retry with it), different for each sender, room, event type and bridge transaction
// ID (the homeserver keys an appservice's transactions by path only, not by user). A send without
// one gets a new ID ("").
func encryptedTxnID(user id.UserID, key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(user.String() + "\n" + key))
	return "heirloom_" + base64.RawURLEncoding.EncodeToString(sum[:18])
}

// sendEncrypted encrypts content as the sender's and sends it, then records the event under key
// (a send with a transaction ID) so that a retry answers it again.
func (g *Gateway) sendEncrypted(w http.ResponseWriter, r *http.Request, user id.UserID, roomID id.RoomID, evtType event.Type, content map[string]any, key string) {
	ctx := r.Context()
	p, err := g.identity(ctx, user)
	if err != nil {
		matrixerr.Write(w, r, err)
		return
	}
	if err = g.encryptMedia(ctx, p, evtType, content); err != nil {
		if errors.Is(err, errMediaTooLarge) {
			matrixerr.Respond(w, mautrix.MTooLarge.WithMessage("%s", err.Error()))
			return
		}
		matrixerr.Write(w, r, err)
		return
	}
	plain, err := json.Marshal(content)
	if err != nil {
		matrixerr.Write(w, r, err)
		return
	}
	eventID, err := p.SendMessageTxn(ctx, roomID, evtType, json.RawMessage(plain), encryptedTxnID(user, key))
	if err != nil {
		matrixerr.Write(w, r, err)
		return
	}
	if key != "" {
		if err = g.db.PutGatewaySend(ctx, user, key, eventID); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record the send; a retry would be sent again")
		}
	}
	g.metrics.encryptedSends.Inc()
	matrixerr.JSON(w, http.StatusOK, mautrix.RespSendEvent{EventID: eventID})
}

// mediaMsgTypes are the message types whose url is a file of the event.
var mediaMsgTypes = map[string]bool{"m.image": true, "m.file": true, "m.video": true, "m.audio": true}

// encryptMedia replaces the plaintext media of an event bound for an encrypted room (url, and
// info.thumbnail_url) by encrypted attachments (file, info.thumbnail_file): each file is fetched
// from the homeserver, encrypted and uploaded again. The plaintext upload stays in the media
// repository; only the homeserver's admin can remove it.
func (g *Gateway) encryptMedia(ctx context.Context, p *e2ee.Puppet, evtType event.Type, content map[string]any) error {
	msgtype, _ := content["msgtype"].(string)
	if !mediaMsgTypes[msgtype] && evtType != event.EventSticker {
		return nil
	}
	if err := g.encryptField(ctx, p, content, "url", "file"); err != nil {
		return err
	}
	if info, ok := content["info"].(map[string]any); ok {
		return g.encryptField(ctx, p, info, "thumbnail_url", "thumbnail_file")
	}
	return nil
}

// encryptField replaces obj[urlKey], when it is an mxc:// URI, by the encrypted attachment of its
// file at obj[fileKey].
func (g *Gateway) encryptField(ctx context.Context, p *e2ee.Puppet, obj map[string]any, urlKey, fileKey string) error {
	uri, ok := obj[urlKey].(string)
	if !ok || !strings.HasPrefix(uri, "mxc://") {
		return nil
	}
	file, err := g.encryptFile(ctx, p, uri)
	if err != nil {
		return err
	}
	delete(obj, urlKey)
	obj[fileKey] = file
	return nil
}

// encryptFile fetches a file from the homeserver (within gateway.max_media_size, refused from its
// Content-Length before it is read), encrypts it as an attachment and uploads the ciphertext.
func (g *Gateway) encryptFile(ctx context.Context, p *e2ee.Puppet, uri string) (*event.EncryptedFileInfo, error) {
	mxc, err := id.ParseContentURI(uri)
	if err != nil {
		return nil, fmt.Errorf("bad media URL %q: %w", uri, err)
	}
	tmp, err := mediafetch.Plain(ctx, p.Client, mxc, mediafetch.Options{
		What: "media to encrypt", MaxSize: g.cfg.Gateway.MediaCap(), TooLarge: errMediaTooLarge, Pattern: "heirloom-media-*",
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", uri, err)
	}
	defer tmp.Close() // removes it
	file := attachment.NewEncryptedFile()
	stream := file.EncryptStream(tmp)
	upload, err := p.Client.UploadMedia(ctx, mautrix.ReqUploadMedia{Content: stream, ContentLength: tmp.Size, ContentType: "application/octet-stream"})
	if err != nil {
		return nil, fmt.Errorf("failed to upload encrypted media: %w", err)
	}
	if err = stream.Close(); err != nil { // sets the hash
		return nil, fmt.Errorf("failed to encrypt media: %w", err)
	}
	return &event.EncryptedFileInfo{EncryptedFile: *file, URL: upload.ContentURI.CUString()}, nil
}
