package gateway

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

// maxQueryAnswer caps the bridge's answer to a user or alias query (an empty object, per the spec).
const maxQueryAnswer = 64 << 10

// queryWait is how long the homeserver waits for the bridge's answer to a query. Synapse waits 60 s,
// and while it waits its appservice event stream stands still, for every room of heirloom's (a
// bridge that hangs on a query of one invited user would hold them all that long).
const queryWait = 15 * time.Second

// ForwardQuery asks the bridge whether a user or room alias in its namespace exists (kind "users"
// or "rooms"), with the bridge's hs_token, and writes its answer: the bridge creates the user or
// room through heirloom before it answers, as it would against the homeserver. A bridge that cannot
// be reached, or does not answer within queryWait, is a 404 to the homeserver, which is what the
// homeserver would have concluded.
func (g *Gateway) ForwardQuery(w http.ResponseWriter, r *http.Request, kind, subject string) {
	log := zerolog.Ctx(r.Context()).With().Str("query", kind).Str("subject", subject).Logger()
	target := g.bridge.URL + "/_matrix/app/v1/" + kind + "/" + url.PathEscape(subject)
	ctx, cancel := context.WithTimeout(r.Context(), g.timeouts.query)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		matrixerr.Respond(w, mautrix.MNotFound.WithMessage("heirloom could not ask the bridge"))
		return
	}
	req.Header.Set("Authorization", "Bearer "+g.bridge.Registration.ServerToken)
	resp, err := g.deliverer.Do(req)
	if err != nil {
		log.Warn().Err(err).Msg("The bridge did not answer a query of the homeserver")
		matrixerr.Respond(w, mautrix.MNotFound.WithMessage("the bridge did not answer"))
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxQueryAnswer))
	if err != nil {
		matrixerr.Respond(w, mautrix.MNotFound.WithMessage("the bridge's answer could not be read"))
		return
	}
	log.Debug().Int("status", resp.StatusCode).Msg("Forwarded a query of the homeserver to the bridge")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}
