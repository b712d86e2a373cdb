package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
	"github.com/heirloom-matrix/heirloom/internal/mediafetch"
)

// errMediaUnavailable answers a download of decrypted media heirloom could not fetch, check or
// decrypt; why is in heirloom's log.
var errMediaUnavailable = mautrix.MUnknown.WithMessage("heirloom could not fetch, check or decrypt this file").WithStatus(http.StatusBadGateway)

// serveMedia answers a bridge's download of a media ID heirloom handed out for an encrypted file
// (exposeMedia): the ciphertext is fetched from the homeserver, its SHA-256 checked against the
// event's before a byte of plaintext goes out, then decrypted. It reports false for any other
// media, which the homeserver serves as usual.
func (g *Gateway) serveMedia(w http.ResponseWriter, r *http.Request, user id.UserID, server, mediaID string) bool {
	if server != g.cfg.Homeserver.Domain || !strings.HasPrefix(mediaID, mediaIDPrefix) {
		return false
	}
	ctx := r.Context()
	log := zerolog.Ctx(ctx).With().Str("media_id", mediaID).Logger()
	sealed, err := g.db.GatewayMedia(ctx, mediaID)
	if err != nil {
		matrixerr.Write(w, r, err)
		return true
	} else if sealed == "" {
		return false
	}
	var file event.EncryptedFileInfo
	if err = g.mgr.Sealer.OpenJSON(mediaOwner(mediaID), sealed, &file); err != nil {
		matrixerr.Write(w, r, err)
		return true
	}
	tmp, err := g.fetchCiphertext(ctx, user, &file)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to serve decrypted media to the bridge")
		matrixerr.Respond(w, errMediaUnavailable)
		return true
	}
	defer tmp.Close() // removes it
	if err = file.PrepareForDecryption(); err != nil {
		log.Warn().Err(err).Msg("Unusable keys of a file to decrypt for the bridge")
		matrixerr.Respond(w, errMediaUnavailable)
		return true
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(tmp.Size, 10))
	w.Header().Set("Content-Disposition", "attachment")
	w.WriteHeader(http.StatusOK)
	plain := file.DecryptStream(tmp)
	if _, err = io.Copy(w, plain); err != nil {
		log.Debug().Err(err).Msg("Decrypted media download interrupted")
	}
	_ = plain.Close()
	return true
}

// errMediaHashMismatch refuses an encrypted file whose ciphertext is not the one its event names.
var errMediaHashMismatch = errors.New("encrypted media hash does not match the event's: refusing it")

// fetchCiphertext downloads an encrypted file into a temporary file, within
// gateway.max_media_size, and checks its hash.
func (g *Gateway) fetchCiphertext(ctx context.Context, user id.UserID, file *event.EncryptedFileInfo) (*mediafetch.File, error) {
	return mediafetch.Encrypted(ctx, g.mgr.Client(ctx, user), file, mediafetch.Options{
		What: "encrypted media", MaxSize: g.cfg.Gateway.MediaCap(), TooLarge: errMediaTooLarge,
		HashMismatch: errMediaHashMismatch, Pattern: "heirloom-media-*",
	})
}
