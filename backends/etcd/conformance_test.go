package etcd_test

import (
	"context"
	"testing"

	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
)

// memberStopper stops and restarts the embedded member.
type memberStopper struct{ srv *distlocktest.EtcdServer }

func (s memberStopper) Stop(ctx context.Context) error { return s.srv.Cluster.StopMember(0) }

func (s memberStopper) Start(ctx context.Context) error { return s.srv.Cluster.StartMember(ctx, 0) }

// TestConformance runs the suite through the harness users get
// (conformance.URL, with its etcd Revoker): every backend has its own
// client, as separate processes would have, on one embedded member, which
// the outage cases stop and restart.
func TestConformance(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	if srv.Cluster == nil { // an external server: it cannot be stopped
		conformance.Run(t, conformance.URL(srv.URL))
		return
	}
	conformance.Run(t, conformance.URL(srv.URL, conformance.WithStopper(memberStopper{srv})))
}
