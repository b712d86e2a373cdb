package gateway

import (
	"io"
	"net/http"
	"net/url"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Synapse runs on Twisted, and reads the appservice's user_id and device_id from request.args:
// Twisted's parse of the query and, for a POST with a form content type and a body, of the body
// too (twisted/web/http.py, Request.requestReceived). heirloom reads the query exactly as Twisted
// does, checks it, and forwards what it checked; a body Twisted would read parameters from never
// reaches the homeserver.

// param is one parameter of a query, as Twisted's parse_qs reads it.
type param struct{ key, value string }

// parseQuery parses a query the way Twisted's parse_qs(qs, keep_blank_values=1) does: pairs split
// on '&' and ';', a pair without '=' dropped, '+' read as a space, then %XX decoded (an invalid
// escape kept as it is), in order.
func parseQuery(qs string) []param {
	var out []param
	for _, amp := range strings.Split(qs, "&") {
		for _, item := range strings.Split(amp, ";") {
			k, v, ok := strings.Cut(item, "=")
			if !ok {
				continue
			}
			out = append(out, param{unquotePlus(k), unquotePlus(v)})
		}
	}
	return out
}

// unquotePlus is Twisted's unquote(s.replace(b"+", b" ")): urllib's unquote_to_bytes, which
// keeps a '%' that does not start two hex digits.
func unquotePlus(s string) string {
	s = strings.ReplaceAll(s, "+", " ")
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// encodeQuery writes params back as a query that Twisted parses into exactly params.
func encodeQuery(params []param) string {
	parts := make([]string, 0, len(params))
	for _, p := range params {
		parts = append(parts, url.QueryEscape(p.key)+"="+url.QueryEscape(p.value))
	}
	return strings.Join(parts, "&")
}

// values lists the values of key in params.
func values(params []param, key string) []string {
	var out []string
	for _, p := range params {
		if p.key == key {
			out = append(out, p.value)
		}
	}
	return out
}

// forwardedQuery is the query heirloom forwards for raw: Twisted's reading of it, re-encoded,
// without the bridge's access_token.
func forwardedQuery(raw string) string {
	params := parseQuery(raw)
	kept := params[:0]
	for _, p := range params {
		if p.key != "access_token" {
			kept = append(kept, p)
		}
	}
	return encodeQuery(kept)
}

// formContentType reports whether a Content-Type value may be one Twisted reads parameters from:
// application/x-www-form-urlencoded or multipart/form-data, which it recognises through Python's
// email header parser (any case, with parameters, comments and folding). Any value containing
// either subtype counts, whatever surrounds it.
func formContentType(value string) bool {
	v := strings.ToLower(value)
	return strings.Contains(v, "x-www-form-urlencoded") || strings.Contains(v, "form-data")
}

// Errors of the bridge's requests before they are routed.
var (
	errFormBody = mautrix.MNotJSON.WithMessage("heirloom refuses form-encoded request bodies (application/x-www-form-urlencoded, " +
		"multipart/form-data): the homeserver would read request parameters from them. Send JSON, or upload a file as application/octet-stream").
		WithStatus(http.StatusUnsupportedMediaType)
	errTwoUsers = mautrix.MInvalidParam.WithMessage("user_id given more than once")
	errDevice   = mautrix.MForbidden.WithMessage("device masquerading (device_id) is not available through heirloom: " +
		"the E2EE devices of the bridge's users are heirloom's").WithStatus(http.StatusForbidden)
)

// deviceParams are the parameters a homeserver reads an appservice's device masquerade from.
var deviceParams = []string{"device_id", "org.matrix.msc3202.device_id"}

// actingUser returns the user a bridge request acts as, from Twisted's reading of its query: the
// user_id it masquerades as, or the bridge's bot. It refuses a second user_id and a device
// masquerade; the caller checks the user is the bridge's.
func (g *Gateway) actingUser(params []param) (id.UserID, *mautrix.RespError) {
	for _, key := range deviceParams {
		if len(values(params, key)) > 0 {
			return "", &errDevice
		}
	}
	users := values(params, "user_id")
	switch len(users) {
	case 0:
		return g.bridge.Bot, nil
	case 1:
		return id.UserID(users[0]), nil
	default:
		return "", &errTwoUsers
	}
}

// refuseFormBody refuses a request whose body Twisted would merge into the parameters Synapse
// reads user_id and device_id from: a POST with a form content type and a body that is not empty.
// An empty body is replaced by none (Twisted reads nothing from it).
func refuseFormBody(r *http.Request) *mautrix.RespError {
	if r.Method != http.MethodPost {
		return nil
	}
	form := false
	for _, v := range r.Header.Values("Content-Type") {
		form = form || formContentType(v)
	}
	if !form || r.ContentLength == 0 {
		return nil
	}
	var one [1]byte
	if r.ContentLength > 0 {
		return &errFormBody
	} else if n, _ := io.ReadFull(r.Body, one[:]); n > 0 {
		return &errFormBody
	}
	r.Body, r.ContentLength = http.NoBody, 0
	return nil
}
