package postgres_test

import (
	"context"
	"testing"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/internal/testserver"
)

// TestConformance runs the whole suite against a server of its own, which
// the outage cases stop and restart.
func TestConformance(t *testing.T) {
	srv := testserver.StartPostgres(t)
	h := newHarness(t, srv, "")
	if srv.External() {
		conformance.Run(t, externalHarness{h})
		return
	}
	conformance.Run(t, h)
}

// externalHarness cannot stop the server.
type externalHarness struct{ h *harness }

func (e externalHarness) NewBackend(ctx context.Context) (distlock.Backend, error) {
	return e.h.NewBackend(ctx)
}

func (e externalHarness) Revoke(ctx context.Context, key string) error { return e.h.Revoke(ctx, key) }

var (
	_ conformance.Stopper = (*harness)(nil)
	_ conformance.Revoker = (*harness)(nil)
)
