package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testserver"
)

// Open is bounded by connect_timeout (DefaultConnectTimeout when absent)
// whatever the caller's ctx; a port that speaks another protocol, or says
// nothing, gives ErrUnavailable saying PostgreSQL was expected. Before, a
// silent port kept Open(context.Background()) waiting for good.
func TestOpenFailsFast(t *testing.T) {
	targets := map[string]string{
		"ssh greeting": testserver.StartBogus(t, testserver.SSHGreeting).Addr,
		"silent":       testserver.StartBogus(t, nil).Addr,
	}
	for name, addr := range targets {
		for _, q := range []string{"connect_timeout=1", ""} {
			t.Run(name+"/"+q, func(t *testing.T) {
				t.Parallel()
				bound := postgres.DefaultConnectTimeout
				if q != "" {
					bound = time.Second
				}
				start := time.Now()
				_, err := distlock.Open(context.Background(), fmt.Sprintf("postgres://postgres:s3cr3t-pw@%s/x?%s", addr, q))
				took := time.Since(start)
				if !errors.Is(err, distlock.ErrUnavailable) {
					t.Fatalf("Open: %v, want ErrUnavailable", err)
				}
				if took > bound+time.Second {
					t.Fatalf("Open took %v, want at most about %v", took, bound)
				}
				msg := err.Error()
				if !strings.Contains(msg, addr) || !strings.Contains(msg, "PostgreSQL") || strings.Contains(msg, "s3cr3t") {
					t.Fatalf("error %q: want the address and the protocol expected, no password", msg)
				}
				t.Logf("%v (after %v)", err, took)
			})
		}
	}
	if postgres.DefaultConnectTimeout > 5*time.Second {
		t.Fatalf("DefaultConnectTimeout %v: documented as at most 5s", postgres.DefaultConnectTimeout)
	}
}

// Release or Extend through another instance says so, distinct from a
// wrong token.
func TestNotOwnerInstance(t *testing.T) {
	h := newHarness(t, server(t), "")
	m1, m2 := h.manager(t), h.manager(t)
	ctx := ctxT(t, 30*time.Second)
	tok, err := m1.Acquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	err = m2.Release(ctx, "k", tok)
	if !errors.Is(err, distlock.ErrNotOwnerInstance) || !errors.Is(err, distlock.ErrNotHeld) || !strings.Contains(err.Error(), "another session") {
		t.Fatalf("Release through another manager: %v, want ErrNotOwnerInstance saying another session holds it", err)
	}
	t.Logf("%v", err)
	if err := m1.Release(ctx, "k", "wrong"); errors.Is(err, distlock.ErrNotOwnerInstance) || !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("wrong token on the holder: %v, want plain ErrNotHeld", err)
	}
	if err := m1.Release(ctx, "k", tok); err != nil {
		t.Fatal(err)
	}
	if err := m2.Release(ctx, "k", tok); errors.Is(err, distlock.ErrNotOwnerInstance) || !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("Release of a free key: %v, want plain ErrNotHeld", err)
	}
}

// Inspect answers from memory for the holder and from pg_locks for others,
// and never changes the lock.
func TestInspect(t *testing.T) {
	h := newHarness(t, server(t), "")
	m1, m2 := h.manager(t), h.manager(t)
	ctx := ctxT(t, 30*time.Second)
	l, err := m1.Lock(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	own, err := m1.Inspect(ctx, "k")
	if err != nil || !own.Held || own.Fence != l.Fence() || own.TTL <= 50*time.Second {
		t.Fatalf("holder's Inspect: %+v, %v (fence %d)", own, err, l.Fence())
	}
	other, err := m2.Inspect(ctx, "k")
	if err != nil || other != (driver.LockInfo{Held: true}) {
		t.Fatalf("other instance's Inspect: %+v, %v, want held with TTL and fence unknown", other, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := m2.Inspect(ctx, "k"); err != nil || info.Held {
		t.Fatalf("Inspect after Release: %+v, %v", info, err)
	}
}

// A failure after Open names the server.
func TestUnavailableNamesServer(t *testing.T) {
	if !distlocktest.PostgresAvailable() {
		distlocktest.Unavailable(t, "PostgreSQL", distlocktest.PostgresHowTo)
	}
	srv := distlocktest.StartPostgres(t)
	if srv.External() {
		t.Skip("cannot stop an external server")
	}
	h := newHarness(t, srv, "")
	byURL := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	// On the user's pool the Manager knows no URL: the backend names the
	// server itself.
	pool, err := pgxpool.New(ctxT(t, 10*time.Second), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	onPool := distlock.New(postgres.New(pool, postgres.WithNamespace(h.ns)), distlock.WithRetry(distlock.NoRetry()))
	t.Cleanup(func() { onPool.Close() })
	for i, m := range []*distlock.Manager{byURL, onPool} { // hold a session each
		if _, err := m.Acquire(ctxT(t, 10*time.Second), fmt.Sprint("held-", i), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Stop(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	where := fmt.Sprintf("127.0.0.1:%d", srv.Port)
	for name, m := range map[string]*distlock.Manager{"opened by URL": byURL, "on a pool": onPool} {
		_, err := m.Acquire(ctxT(t, 10*time.Second), "k", time.Minute)
		if !errors.Is(err, distlock.ErrUnavailable) || !strings.Contains(err.Error(), where) {
			t.Fatalf("%s: Acquire with the server down: %v, want ErrUnavailable naming %s", name, err, where)
		}
		t.Logf("%s: %v", name, err)
	}
}

// A holder session whose server stops answering times out (WithOpTimeout)
// with ErrUnavailable naming the server.
func TestTimeoutNamesServer(t *testing.T) {
	srv := server(t)
	ctx := ctxT(t, 30*time.Second)
	pool, err := pgxpool.New(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := fmt.Sprintf("%s-%d", t.Name(), nsSeq.Add(1))
	m := distlock.New(postgres.New(pool, postgres.WithNamespace(ns), postgres.WithSessions(1), postgres.WithOpTimeout(time.Second)))
	t.Cleanup(func() { m.Close() })
	tok, err := m.Acquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	id := postgres.LockID(ns, "k")
	var pid int
	if err := pool.QueryRow(ctx, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2",
		int64(uint64(id)>>32), int64(uint32(id))).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	// Stop the holder session's server process: it accepts bytes and
	// answers nothing, as a server behind a dead network path would.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Skipf("cannot stop the server backend process %d: %v", pid, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	where := fmt.Sprintf("127.0.0.1:%d", srv.Port)
	err = m.Extend(ctx, "k", tok, time.Minute)
	if !errors.Is(err, distlock.ErrUnavailable) || !strings.Contains(err.Error(), where) {
		t.Fatalf("Extend on a session that stopped answering: %v, want ErrUnavailable naming %s", err, where)
	}
	t.Logf("%v", err)
}

// PostgreSQL cannot release another instance's lock: a program that needs
// to learns it at Open.
func TestRequireCrossInstanceRelease(t *testing.T) {
	h := newHarness(t, server(t), "")
	_, err := distlock.Open(ctxT(t, 10*time.Second), h.url(), distlock.Require(distlock.CrossInstanceRelease()))
	if !errors.Is(err, distlock.ErrUnsupported) || !strings.Contains(err.Error(), "cross-instance release") || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("Open requiring cross-instance release: %v, want ErrUnsupported saying so", err)
	}
	t.Logf("%v", err)
	m, err := distlock.Open(ctxT(t, 10*time.Second), h.url(), distlock.Require(distlock.Fencing(), distlock.MinTTLAtMost(time.Millisecond)))
	if err != nil {
		t.Fatalf("Open requiring fencing and 1ms TTLs: %v", err)
	}
	m.Close()
}
