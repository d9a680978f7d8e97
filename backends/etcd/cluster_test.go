package etcd_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/distlocktest"
)

// retryUnavailable runs op until it returns something other than
// ErrUnavailable (an election may be under way), for at most d.
func retryUnavailable(t *testing.T, d time.Duration, op func(ctx context.Context) error) error {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := op(ctx)
		cancel()
		if !errors.Is(err, distlock.ErrUnavailable) || time.Now().After(deadline) {
			return err
		}
	}
}

func TestClusterLeaderStopped(t *testing.T) {
	srv := distlocktest.EtcdCluster(t, 3)
	holder := open(t, srv)
	other := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 30*time.Second)

	l, err := holder.Lock(ctx, "survivor", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lead := srv.Cluster.Leader()
	if lead < 0 {
		t.Fatal("no leader")
	}
	if err := srv.Cluster.StopMember(lead); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped leader m%d", lead)

	// The remaining quorum keeps the lease: the key stays held.
	err = retryUnavailable(t, 10*time.Second, func(ctx context.Context) error {
		_, err := other.Acquire(ctx, "survivor", time.Second)
		return err
	})
	if !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("acquire of the held key after the leader stopped: %v", err)
	}
	if newLead := srv.Cluster.Leader(); newLead == lead || newLead < 0 {
		t.Fatalf("leader %d after stopping %d", newLead, lead)
	}
	select {
	case <-l.Done():
		t.Fatalf("lock reported lost: %v", l.Err())
	default:
	}
	// Its holder can still extend and release it.
	if err := retryUnavailable(t, 10*time.Second, func(ctx context.Context) error { return l.Extend(ctx, 5*time.Second) }); err != nil {
		t.Fatalf("extend after leader change: %v", err)
	}
	if err := retryUnavailable(t, 10*time.Second, l.Release); err != nil {
		t.Fatalf("release after leader change: %v", err)
	}
	if l.Err() != nil {
		t.Fatalf("released lock reports %v", l.Err())
	}
	tok, err := other.Acquire(ctx, "survivor", time.Second)
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	if err := other.Release(ctx, "survivor", tok); err != nil {
		t.Fatal(err)
	}
	// The old leader comes back and the cluster carries on.
	if err := srv.Cluster.StartMember(ctx, lead); err != nil {
		t.Fatal(err)
	}
}

func TestClusterQuorumLost(t *testing.T) {
	srv := distlocktest.EtcdCluster(t, 3)
	m := open(t, srv)
	ctx := ctxT(t, 60*time.Second)
	if _, err := m.Acquire(ctx, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	lead := srv.Cluster.Leader()
	stopped := []int{(lead + 1) % 3, lead} // a follower, then the leader
	for _, i := range stopped {
		if err := srv.Cluster.StopMember(i); err != nil {
			t.Fatal(err)
		}
	}

	const deadline = 2 * time.Second
	for _, key := range []string{"during", "before"} {
		actx, cancel := context.WithTimeout(ctx, deadline)
		start := time.Now()
		_, err := m.Acquire(actx, key, 5*time.Second)
		cancel()
		took := time.Since(start)
		if !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatalf("acquire %q without quorum: %v, want ErrUnavailable", key, err)
		}
		if took > deadline+500*time.Millisecond {
			t.Fatalf("acquire %q without quorum took %v with a %v deadline", key, took, deadline)
		}
		t.Logf("acquire %q without quorum: %v after %v", key, err, took)
	}

	// One member back: a quorum of two again.
	if err := srv.Cluster.StartMember(ctx, stopped[0]); err != nil {
		t.Fatal(err)
	}
	var tok string
	err := retryUnavailable(t, 20*time.Second, func(ctx context.Context) error {
		var err error
		tok, err = m.Acquire(ctx, "during", 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("acquire after quorum came back: %v", err)
	}
	if err := m.Release(ctx, "during", tok); err != nil {
		t.Fatal(err)
	}
}
