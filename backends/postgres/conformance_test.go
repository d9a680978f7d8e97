package postgres_test

import (
	"testing"

	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
)

// TestConformance runs the whole suite against a server of its own, which
// the outage cases stop and restart, through the harness users get:
// conformance.URL, with its PostgreSQL Revoker.
func TestConformance(t *testing.T) {
	srv := distlocktest.StartPostgres(t)
	u := newHarness(t, srv, "").url()
	if srv.External() { // it cannot be stopped
		conformance.Run(t, conformance.URL(u))
		return
	}
	conformance.Run(t, conformance.URL(u, conformance.WithStopper(srv)))
}

var (
	_ conformance.Stopper = (*harness)(nil)
	_ conformance.Revoker = (*harness)(nil)
	_ conformance.Stopper = (*distlocktest.PostgresServer)(nil)
)
