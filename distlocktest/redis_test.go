package distlocktest

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestRedisStopStartKill(t *testing.T) {
	r := StartRedis(t, RedisOptions{Password: "pw"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if r.Running() {
		t.Fatal("running after Stop")
	}
	if c, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("still accepting connections after Stop")
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("restart on the same port: %v", err)
	}
	if err := r.ping(ctx); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("start after Kill: %v", err)
	}
	if r.URL() != "redis://:pw@"+r.Addr {
		t.Fatalf("URL %q", r.URL())
	}
}
