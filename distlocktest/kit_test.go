package distlocktest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock"
	_ "github.com/distlock/distlock/backends/etcd"
	_ "github.com/distlock/distlock/backends/postgres"
	_ "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/distlocktest"
)

// Every URL the kit hands out opens, and locks, with distlock.Open.
func TestKitURLs(t *testing.T) {
	for _, c := range []struct {
		name, scheme string
		url          func(t *testing.T) string
	}{
		{"Redis", "redis://", func(t *testing.T) string { return distlocktest.Redis(t) }},
		{"Redlock", "redlock://", func(t *testing.T) string { return distlocktest.Redlock(t, 3) }},
		{"Etcd", "etcd://", func(t *testing.T) string { return distlocktest.Etcd(t) }},
		{"Postgres", "postgres://", func(t *testing.T) string { return distlocktest.Postgres(t) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			u := c.url(t)
			if !strings.HasPrefix(u, c.scheme) {
				t.Fatalf("URL scheme of %s: want %s", c.name, c.scheme)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			m, err := distlock.Open(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			tok, err := m.Acquire(ctx, "kit", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Release(ctx, "kit", tok); err != nil {
				t.Fatal(err)
			}
		})
	}
}
