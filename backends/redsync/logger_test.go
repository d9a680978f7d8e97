package redsync_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testserver"
)

// recordHandler keeps the records slog hands it.
type recordHandler struct {
	mu   sync.Mutex
	recs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	h.mu.Lock()
	h.recs = append(h.recs, b.String())
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) find(sub string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if strings.Contains(r, sub) {
			return r
		}
	}
	return ""
}

// TestGoRedisLogsToSlog: once distlock has opened a go-redis client from a
// URL, go-redis's own log lines (here: its dial failures after the server
// went away) go to slog at Debug, tagged component=go-redis, not to stderr.
func TestGoRedisLogsToSlog(t *testing.T) {
	h := &recordHandler{}
	old := slog.Default()
	slog.SetDefault(slog.New(h))
	t.Cleanup(func() { slog.SetDefault(old) })

	ctx := ctxTimeout(t, 30*time.Second)
	srv := distlocktest.StartRedis(t, distlocktest.RedisOptions{})
	m, err := distlock.Open(ctx, "redis://"+srv.Addr+"?max_retries=0", distlock.WithRetry(distlock.NoRetry()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := m.Acquire(actx, uniqueKey(t), time.Second); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("acquire with the server gone: got %v, want ErrUnavailable", err)
	}
	r := h.find("failed to dial")
	if r == "" {
		t.Fatalf("no go-redis dial failure reached slog; records: %q", h.recs)
	}
	if !strings.HasPrefix(r, "DEBUG ") || !strings.Contains(r, "component=go-redis") {
		t.Fatalf("go-redis record %q: want Debug with component=go-redis", r)
	}
}

// TestOpenFailsFast: Open of a port that accepts connections but never
// answers returns ErrUnavailable within the URL's dial_timeout, even with
// context.Background(), for one server and for Redlock; and says which
// protocol it expected.
func TestOpenFailsFast(t *testing.T) {
	silent := testserver.StartBogus(t, nil).Addr
	ssh := testserver.StartBogus(t, testserver.SSHGreeting).Addr
	for _, u := range []string{
		"redis://" + silent + "?dial_timeout=1s",
		"redlock://" + silent + "," + ssh + "?dial_timeout=1s",
		"redis://" + ssh + "?dial_timeout=1s",
	} {
		t0 := time.Now()
		m, err := distlock.Open(context.Background(), u)
		took := time.Since(t0)
		if err == nil {
			_ = m.Close()
			t.Fatalf("Open(%s) succeeded", u)
		}
		if !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatalf("Open(%s): got %v, want ErrUnavailable", u, err)
		}
		if took > 3*time.Second {
			t.Fatalf("Open(%s) took %v with dial_timeout=1s", u, took)
		}
		if strings.Contains(u, "redis://"+ssh) && !strings.Contains(err.Error(), "Redis protocol") {
			t.Fatalf("Open(%s): %v: want it to say the Redis protocol was expected", u, err)
		}
	}
}
