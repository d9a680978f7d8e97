package etcd_test

import (
	"context"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/internal/testserver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// harness gives every backend its own client (as separate processes would
// have) on one embedded member, which it can stop and restart.
type harness struct {
	srv   *testserver.EtcdServer
	admin *clientv3.Client
}

func (h *harness) NewBackend(ctx context.Context) (distlock.Backend, error) {
	return distlock.OpenBackend(ctx, h.srv.URL)
}

// Revoke deletes the lock's key, as an operator would. It finishes even if
// ctx ends meanwhile: Loss/DoCancelsFnOnLoss calls it from a goroutine
// with the case's context, which ends as soon as the deletion is noticed,
// often before the Delete call returns.
func (h *harness) Revoke(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := h.admin.Delete(ctx, etcd.DefaultPrefix+key)
	return err
}

// stopper adds Stop and Start where the server is embedded.
type stopper struct{ *harness }

func (h stopper) Stop(ctx context.Context) error { return h.srv.Cluster.StopMember(0) }

func (h stopper) Start(ctx context.Context) error { return h.srv.Cluster.StartMember(ctx, 0) }

func TestConformance(t *testing.T) {
	srv := testserver.Etcd(t)
	h := &harness{srv: srv, admin: newClient(t, srv.Endpoints)}
	if srv.Cluster != nil {
		conformance.Run(t, stopper{h})
		return
	}
	conformance.Run(t, h)
}
