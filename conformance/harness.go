// Package conformance is the test suite every distlock backend passes. A
// backend's test runs it with a Harness that makes independent backends
// (each with its own client, as separate processes would have):
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, myHarness{})
//	}
//
// The same cases run outside go test through Check, which is how
// `distlock check` verifies a live deployment.
package conformance

import (
	"context"

	"github.com/distlock/distlock"
)

// Harness makes backends for the suite.
type Harness interface {
	// NewBackend returns a new backend with its own client or connection,
	// talking to the same server as every other backend of this harness.
	// The suite closes it through the Manager it wraps it in.
	NewBackend(ctx context.Context) (distlock.Backend, error)
}

// Stopper is implemented by harnesses that can stop and restart the server,
// for the outage cases. Locks may or may not survive a restart.
type Stopper interface {
	// Stop makes the server unreachable (kill it, or refuse connections).
	Stop(ctx context.Context) error
	// Start brings it back on the same address.
	Start(ctx context.Context) error
}

// Revoker is implemented by harnesses that can delete a lock server-side,
// whoever holds it, as an operator would: the lock-loss cases use it.
type Revoker interface {
	Revoke(ctx context.Context, key string) error
}
