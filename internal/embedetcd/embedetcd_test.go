package embedetcd

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func client(t *testing.T, c *Cluster) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestSingleMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %v at %s", time.Since(start), c.URL())
	defer c.Close()
	cli := client(t, c)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	// The fast timing makes the minimum lease 1s.
	l, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if l.TTL != 1 {
		t.Fatalf("lease TTL %d, want 1", l.TTL)
	}
	if got := c.Leader(); got != 0 {
		t.Fatalf("Leader() = %d, want 0", got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestClusterStopStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Members: 3, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(c.Endpoints()); n != 3 {
		t.Fatalf("%d endpoints", n)
	}
	cli := client(t, c)
	if _, err := cli.Put(ctx, "k", "1"); err != nil {
		t.Fatal(err)
	}
	lead := c.Leader()
	if lead < 0 {
		t.Fatal("no leader")
	}
	if err := c.StopMember(lead); err != nil {
		t.Fatal(err)
	}
	if c.Running(lead) {
		t.Fatal("stopped member still running")
	}
	if _, err := cli.Put(ctx, "k", "2"); err != nil {
		t.Fatalf("put with 2 of 3: %v", err)
	}
	if err := c.StartMember(ctx, lead); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("get after restart: %v %v", resp, err)
	}
}
