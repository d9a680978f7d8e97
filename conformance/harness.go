// Package conformance is the test suite every distlock backend passes. A
// backend's test runs it with a Harness that makes independent backends
// (each with its own client, as separate processes would have):
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, myHarness{})
//	}
//
// Against a deployment of this module's backends, URL is the harness (it
// also revokes locks as an operator would), and the distlocktest package
// provides real servers:
//
//	func TestLocks(t *testing.T) {
//		conformance.Run(t, conformance.URL(distlocktest.Redis(t)))
//	}
//
// Most cases run in parallel after Run returns: anything the harness uses
// (a client, a server) must be closed with t.Cleanup, never with defer in
// the test function, or the cases find it closed.
//
// The same cases run outside go test through Check, which is how
// `distlock check` verifies a live deployment.
package conformance

import (
	"context"

	"github.com/distlock/distlock/driver"
)

// Harness makes backends for the suite.
type Harness interface {
	// NewBackend returns a new backend with its own client or connection,
	// talking to the same server as every other backend of this harness.
	// The suite closes it through the Manager it wraps it in.
	NewBackend(ctx context.Context) (driver.Backend, error)
}

// Stopper is implemented by harnesses that can stop and restart the server,
// for the outage cases. Locks may or may not survive a restart. Proxy gives
// one for any URL; distlocktest.Container is one.
type Stopper interface {
	// Stop makes the server unreachable (kill it, or refuse connections).
	Stop(ctx context.Context) error
	// Start brings it back on the same address.
	Start(ctx context.Context) error
}

// Revoker is implemented by harnesses that can delete a lock server-side,
// whoever holds it, as an operator would: the lock-loss cases use it.
// RedisRevoker, EtcdRevoker and PostgresRevoker are ready ones for this
// module's backends; URL includes the right one.
type Revoker interface {
	// Revoke takes key away from its holder on the server. It must finish
	// even when ctx ends meanwhile: a case may end as soon as the holder
	// notices the loss.
	Revoke(ctx context.Context, key string) error
}

// The skip messages of the cases a harness or backend cannot run: each
// names what would enable the case.
const (
	noRevoker = "harness does not implement conformance.Revoker (Revoke(ctx, key) error): " +
		"conformance.URL has one for redis, redlock, etcd and postgres URLs; see RedisRevoker, EtcdRevoker, PostgresRevoker"
	noStopper = "harness does not implement conformance.Stopper (Stop(ctx) error, Start(ctx) error): " +
		"use conformance.URL(url, conformance.WithStopper(s)), with s from conformance.Proxy or a distlocktest.Container"
	noFencing = "backend declares no fencing (driver.Capabilities.Fencing is false)"
)

// ModeRevoker is implemented by harnesses that can take a primitive's key
// (a read-write lock, a semaphore, an election) away from all its holders
// on the server, as an operator would: the loss cases of the primitives use
// it. URL includes one for this module's backends.
type ModeRevoker interface {
	// RevokeMode ends every hold of key in kind's key space on the
	// server (for Read or Write: the read-write lock's readers, writer
	// and waiting marks). It must finish even when ctx ends meanwhile.
	RevokeMode(ctx context.Context, key string, kind driver.Kind) error
}
