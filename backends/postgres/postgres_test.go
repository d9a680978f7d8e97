package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
)

var (
	srvOnce sync.Once
	srv     *distlocktest.PostgresServer
	srvErr  error
	nsSeq   atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if srv != nil && !srv.External() {
		srv.Close()
	}
	os.Exit(code)
}

// server returns the package's shared server (tests that stop a server
// start their own).
func server(t *testing.T) *distlocktest.PostgresServer {
	t.Helper()
	if !distlocktest.PostgresAvailable() {
		distlocktest.Unavailable(t, "PostgreSQL", distlocktest.PostgresHowTo)
	}
	if os.Getenv(distlocktest.PostgresURLEnv) != "" {
		return distlocktest.StartPostgres(t)
	}
	srvOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		srv, srvErr = distlocktest.NewPostgres(ctx)
	})
	if srvErr != nil {
		t.Fatalf("starting postgres: %v", srvErr)
	}
	return srv
}

// harness opens backends on one server with a namespace of their own, so
// tests sharing a server never see each other's locks.
type harness struct {
	srv    *distlocktest.PostgresServer
	ns     string
	params string
}

func newHarness(t *testing.T, srv *distlocktest.PostgresServer, params string) *harness {
	return &harness{srv: srv, ns: fmt.Sprintf("%s-%d", t.Name(), nsSeq.Add(1)), params: params}
}

func (h *harness) url() string {
	u := h.srv.URL
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	u += sep + "distlock_namespace=" + url.QueryEscape(h.ns)
	if h.params != "" {
		u += "&" + h.params
	}
	return u
}

func (h *harness) NewBackend(ctx context.Context) (driver.Backend, error) {
	return distlock.OpenBackend(ctx, h.url())
}

func (h *harness) Stop(ctx context.Context) error  { return h.srv.Stop(ctx) }
func (h *harness) Start(ctx context.Context) error { return h.srv.Start(ctx) }

// Revoke terminates the session holding key, as an operator would
// (conformance.PostgresRevoker, the one users get).
func (h *harness) Revoke(ctx context.Context, key string) error {
	return conformance.PostgresRevoker(h.url()).Revoke(ctx, key)
}

func (h *harness) manager(t *testing.T, opts ...distlock.Option) *distlock.Manager {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := h.NewBackend(ctx)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	m := distlock.New(b, opts...)
	t.Cleanup(func() { m.Close() })
	return m
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestLockIDStable(t *testing.T) {
	// Golden values, computed independently (Python hashlib): the formula
	// is part of the documented contract and must never change.
	cases := []struct {
		ns, key string
		want    int64
	}{
		{"", "seat:42", -4326863385109289903},
		{"app", "seat:42", -2692884431616940900},
	}
	for _, c := range cases {
		if got := postgres.LockID(c.ns, c.key); got != c.want {
			t.Errorf("LockID(%q, %q) = %d, want %d", c.ns, c.key, got, c.want)
		}
	}
	if postgres.LockID("a", "bc") == postgres.LockID("ab", "c") {
		t.Fatal("namespace/key boundary not encoded")
	}
}

func TestBasics(t *testing.T) {
	h := newHarness(t, server(t), "")
	m := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 30*time.Second)

	l, err := m.Lock(ctx, "k", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l.Fence() == 0 {
		t.Fatal("no fence")
	}
	// Same token again: succeeds, same fence.
	if _, err := m.Acquire(ctx, "k", 5*time.Second, l.Token()); err != nil {
		t.Fatalf("re-acquire: %v", err)
	}
	if _, err := m.Acquire(ctx, "k", 5*time.Second, "other"); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("other token acquire: %v", err)
	}
	if err := m.Release(ctx, "k", "other"); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("other token release: %v", err)
	}
	if err := m.Extend(ctx, "k", "other", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("other token extend: %v", err)
	}
	if err := l.Extend(ctx, 5*time.Second); err != nil {
		t.Fatalf("extend: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := l.Release(ctx); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("double release: %v", err)
	}
	l2, err := m.Lock(ctx, "k", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Fence() <= l.Fence() {
		t.Fatalf("fence %d after %d", l2.Fence(), l.Fence())
	}
	// Binary keys are distinct locks.
	for _, k := range []string{"\x00", "\x00\x00", "\xff\xfe", strings.Repeat("x", distlock.MaxKeyLen)} {
		if _, err := m.Acquire(ctx, k, time.Second); err != nil {
			t.Fatalf("acquire %q: %v", k, err)
		}
	}
}

func TestManagersExclude(t *testing.T) {
	h := newHarness(t, server(t), "")
	a := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	b := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 30*time.Second)

	ta, err := a.Acquire(ctx, "k", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "k", 5*time.Second, ta); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("second manager with the same token: %v", err)
	}
	if err := b.Release(ctx, "k", ta); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("cross-instance release: %v (CrossInstanceRelease is false)", err)
	}
	if err := a.Release(ctx, "k", ta); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "k", 5*time.Second); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestExpiryFreesForOthers(t *testing.T) {
	h := newHarness(t, server(t), "")
	a := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	b := h.manager(t)
	ctx := ctxT(t, 30*time.Second)

	l, err := a.Lock(ctx, "k", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tb, err := b.Acquire(ctx, "k", 5*time.Second) // waits, polling
	if err != nil {
		t.Fatalf("b after expiry: %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("took %v", el)
	}
	if err := l.Extend(ctx, time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend after expiry: %v", err)
	}
	if err := l.Release(ctx); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release after expiry: %v", err)
	}
	select {
	case <-l.Done():
	default:
		t.Fatal("handle not done")
	}
	if err := b.Release(ctx, "k", tb); err != nil {
		t.Fatalf("b release: %v", err)
	}
}

func TestManyLocksFewSessions(t *testing.T) {
	h := newHarness(t, server(t), "distlock_sessions=2&application_name=fewsessions")
	m := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := m.Acquire(ctx, fmt.Sprint("k", i), 20*time.Second); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, server(t).URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var sessions, locks int
	if err := pool.QueryRow(ctx, `SELECT count(DISTINCT a.pid), count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE l.locktype = 'advisory' AND a.application_name = 'fewsessions'`).Scan(&sessions, &locks); err != nil {
		t.Fatal(err)
	}
	if sessions > 2 || locks != 200 {
		t.Fatalf("%d locks on %d sessions, want 200 on ≤ 2", locks, sessions)
	}
}

func TestContendedOneManager(t *testing.T) {
	h := newHarness(t, server(t), "distlock_sessions=2")
	m := h.manager(t, distlock.WithRetry(distlock.LimitWait(distlock.ExponentialBackoff(time.Millisecond, 20*time.Millisecond), 20*time.Second)))
	m2 := h.manager(t, distlock.WithRetry(distlock.LimitWait(distlock.ExponentialBackoff(time.Millisecond, 20*time.Millisecond), 20*time.Second)))
	ctx := ctxT(t, 60*time.Second)
	var inside atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mm := m
			if g%2 == 1 {
				mm = m2
			}
			for range 25 {
				tok, err := mm.Acquire(ctx, "hot", 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Errorf("%d holders at once", n)
				}
				inside.Add(-1)
				if err := mm.Release(ctx, "hot", tok); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestTerminateBackendLosesLock(t *testing.T) {
	h := newHarness(t, server(t), "")
	a := h.manager(t)
	b := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 30*time.Second)
	l, err := a.Lock(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Revoke(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	// Free for others at once.
	if _, err := b.Acquire(ctx, "k", time.Minute); err != nil {
		t.Fatalf("acquire after terminate: %v", err)
	}
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lost signal did not fire")
	}
	if !errors.Is(l.Err(), distlock.ErrLockLost) {
		t.Fatalf("Err = %v", l.Err())
	}
	// The holder recovers on a new session.
	if _, err := a.Acquire(ctx, "k2", time.Minute); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestStalledHolderLosesLock(t *testing.T) {
	h := newHarness(t, server(t), "distlock_idle_timeout=500ms")
	ctx := ctxT(t, 30*time.Second)
	ba, err := h.NewBackend(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := distlock.New(ba)
	defer a.Close()
	b := h.manager(t, distlock.WithRetry(distlock.LimitWait(distlock.LinearBackoff(20*time.Millisecond), 10*time.Second)))

	start := time.Now() // the server's idle clock starts after this
	l, err := a.Lock(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resume := ba.(*postgres.Backend).Freeze()
	if _, err := b.Acquire(ctx, "k", time.Minute); err != nil {
		resume()
		t.Fatalf("stalled holder kept the lock: %v", err)
	}
	el := time.Since(start)
	resume()
	if el < 450*time.Millisecond || el > 5*time.Second {
		t.Fatalf("freed after %v, want about the idle bound 500ms", el)
	}
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("holder did not learn it lost the lock")
	}
}

func TestServerRestart(t *testing.T) {
	srv := distlocktest.StartPostgres(t)
	if srv.External() {
		t.Skip("external server cannot be restarted")
	}
	h := newHarness(t, srv, "")
	m := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 90*time.Second)
	l, err := m.Lock(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("lost signal did not fire on shutdown")
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = m.Acquire(cctx, "k", time.Minute)
	cancel()
	if !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("acquire while down: %v", err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Acquire(ctx, "k", time.Minute); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	srv := server(t)
	ctx := ctxT(t, 30*time.Second)
	u, _ := url.Parse(srv.URL)

	check := func(name, raw string, kind error, want string) {
		t.Helper()
		_, err := distlock.Open(ctx, raw)
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		if !errors.Is(err, kind) {
			t.Errorf("%s: %v is not %v", name, err, kind)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q does not say %q", name, err, want)
		}
		for _, secret := range []string{distlocktest.PostgresPassword, "s3cr3t-pw"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: password in error %q", name, err)
			}
		}
		t.Logf("%s: %v", name, err)
	}

	wrong := *u
	wrong.User = url.UserPassword("postgres", "s3cr3t-pw")
	check("wrong password", wrong.String(), distlock.ErrUnavailable, "password authentication failed")

	check("bad URL", "postgres://postgres:s3cr3t-pw@127.0.0.1:notaport/x", distlock.ErrInvalidArgument, "")
	check("bad sslmode", "postgres://postgres:s3cr3t-pw@127.0.0.1:5432/x?sslmode=bogus", distlock.ErrInvalidArgument, "sslmode")
	check("unknown parameter", srv.URL+"&distlock_bogus=1", distlock.ErrInvalidArgument, "distlock_bogus")
	check("bad sessions", srv.URL+"&distlock_sessions=0", distlock.ErrInvalidArgument, "distlock_sessions")

	// A port nobody listens on.
	port, err := distlocktest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	check("refused", fmt.Sprintf("postgres://postgres:s3cr3t-pw@127.0.0.1:%d/x?sslmode=disable&connect_timeout=5", port), distlock.ErrUnavailable, "cannot reach server")

	// A server that is not PostgreSQL: answers with HTTP and hangs up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for range 20 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
			c.Close()
		}
	}()
	check("not postgres", fmt.Sprintf("postgres://postgres:s3cr3t-pw@%s/x?sslmode=disable&connect_timeout=5", ln.Addr()), distlock.ErrUnavailable, "did not answer as PostgreSQL")
}

func TestWithoutAutoMigrate(t *testing.T) {
	srv := server(t)
	ctx := ctxT(t, 30*time.Second)
	seq := fmt.Sprintf("fence_manual_%d_%d", os.Getpid(), nsSeq.Add(1))
	h := newHarness(t, srv, "distlock_migrate=false&distlock_sequence="+seq)
	if _, err := h.NewBackend(ctx); err == nil || !strings.Contains(err.Error(), "Migrate") {
		t.Fatalf("missing sequence: %v", err)
	}
	pool, err := pgxpool.New(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := postgres.Migrate(ctx, pool, postgres.WithSequence(seq)); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, postgres.WithSequence(seq)); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	m := h.manager(t)
	l, err := m.Lock(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	if err := pool.QueryRow(ctx, "SELECT last_value FROM "+seq).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if uint64(last) != l.Fence() {
		t.Fatalf("fence %d, sequence at %d", l.Fence(), last)
	}
}

func TestUserPool(t *testing.T) {
	srv := server(t)
	ctx := ctxT(t, 30*time.Second)
	pool, err := pgxpool.New(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m := postgres.NewManager(pool, postgres.WithSessions(1), postgres.WithNamespace(t.Name()))
	tok, err := m.Acquire(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "k", tok); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// The pool is the caller's and still works.
	if err := pool.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCollisionExcludesNeverShares(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 30*time.Second)
	collide := func(string) int64 { return postgres.LockID(h.ns, "same-id") }
	open := func() *distlock.Manager {
		b, err := h.NewBackend(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b.(*postgres.Backend).SetLockID(collide)
		m := distlock.New(b, distlock.WithRetry(distlock.NoRetry()))
		t.Cleanup(func() { m.Close() })
		return m
	}
	a, b := open(), open()
	tok, err := a.Acquire(ctx, "k1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Same backend, another key with the same id: refused locally,
	// although the session would re-acquire its own lock silently.
	if _, err := a.Acquire(ctx, "k2", time.Minute); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("colliding key in the same backend: %v", err)
	}
	// Another backend: refused by the server.
	if _, err := b.Acquire(ctx, "k2", time.Minute); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("colliding key in another backend: %v", err)
	}
	if err := a.Release(ctx, "k1", tok); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "k2", time.Minute); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

// TestExpiryNoticedOnUseUnlocks: whichever notices an expiry first, the
// timer or a call touching the key, the advisory lock is unlocked on the
// server (a leak would keep the key from everyone else).
func TestExpiryNoticedOnUseUnlocks(t *testing.T) {
	h := newHarness(t, server(t), "")
	a := h.manager(t, distlock.WithRetry(distlock.NoRetry()))
	b := h.manager(t, distlock.WithRetry(distlock.LimitWait(distlock.LinearBackoff(5*time.Millisecond), 5*time.Second)))
	ctx := ctxT(t, 60*time.Second)
	for i := range 20 {
		key := fmt.Sprint("k", i)
		tok, err := a.Acquire(ctx, key, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		// Touch the key around its expiry from the holder's manager.
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			if err := a.Extend(ctx, key, "wrong", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
				t.Fatalf("wrong-token extend: %v", err)
			}
			if err := a.Extend(ctx, key, tok, time.Millisecond); err != nil {
				break // expired
			}
		}
		if _, err := b.Acquire(ctx, key, time.Minute); err != nil {
			t.Fatalf("round %d: other manager after expiry: %v", i, err)
		}
	}
}
