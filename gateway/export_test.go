package gateway

import "context"

// ExposeMedia is exposeMedia, for the tests of serveMedia.
func (g *Gateway) ExposeMedia(ctx context.Context, content map[string]any) error {
	return g.exposeMedia(ctx, content)
}
