package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
)

var _ conformance.ModeRevoker = (*harness)(nil)

// RevokeMode ends every session holding key in kind's key space, through
// conformance.URL's revoker once it has one.
func (h *harness) RevokeMode(ctx context.Context, key string, kind driver.Kind) error {
	if r, ok := conformance.URL(h.url()).(conformance.ModeRevoker); ok {
		return r.RevokeMode(ctx, key, kind)
	}
	// Until then: terminate the holders without waiting for the lock to
	// go (a waiter may take it at once); the tests wait on what follows.
	id := postgres.ModeLockID(h.ns, kind, key)
	ctx = context.WithoutCancel(ctx)
	conn, err := pgx.Connect(ctx, h.srv.URL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"+
		" AND granted AND objsubid = 1 AND classid::int8 = $1 AND objid::int8 = $2", int64(uint64(id)>>32), int64(uint32(id)))
	return err
}

// backend opens a Backend of its own (its own sessions, as another process).
func (h *harness) backend(t *testing.T) *postgres.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := h.NewBackend(ctx)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*postgres.Backend)
}

var (
	read   = driver.Mode{Kind: driver.Read}
	write  = driver.Mode{Kind: driver.Write, Waiting: true}
	leader = func(v string) driver.Mode { return driver.Mode{Kind: driver.Leader, Value: v} }
	permit = func(n int) driver.Mode { return driver.Mode{Kind: driver.Permit, Limit: n} }
)

// musts returns a function that fails t unless its call succeeded.
func musts(t *testing.T) func(driver.Grant, error) driver.Grant {
	return func(g driver.Grant, err error) driver.Grant {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
}

func wantErr(t *testing.T, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

// waitFor polls cond every few milliseconds for at most 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestModeKeySpacesApart(t *testing.T) {
	ids := map[int64]string{postgres.LockID("ns", "k"): "lock"}
	for _, k := range []driver.Kind{driver.Read, driver.Permit, driver.Leader} {
		id := postgres.ModeLockID("ns", k, "k")
		if other, dup := ids[id]; dup {
			t.Fatalf("%v shares its id with %s", k, other)
		}
		ids[id] = k.String()
	}
	if postgres.ModeLockID("ns", driver.Read, "k") != postgres.ModeLockID("ns", driver.Write, "k") {
		t.Fatal("read and write must share the read-write lock's id")
	}
	h := newHarness(t, server(t), "")
	a := h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	if _, err := a.Acquire(ctx, "k", "plain", time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, m := range []driver.Mode{write, permit(1), leader("v")} {
		if _, err := a.AcquireMode(ctx, "k", "t-"+m.Kind.String(), time.Minute, m); err != nil {
			t.Fatalf("%v beside a plain lock and the others: %v", m.Kind, err)
		}
	}
	if _, err := a.AcquireMode(ctx, "k", "x", time.Minute, driver.Mode{Kind: 99}); !errors.Is(err, distlock.ErrUnsupported) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func TestReadWrite(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	const ttl = time.Minute

	// Two readers on one session (advisory locks stack), one on another.
	r1 := must(a.AcquireMode(ctx, "k", "r1", ttl, read))
	must(a.AcquireMode(ctx, "k", "r2", ttl, read))
	must(b.AcquireMode(ctx, "k", "r3", ttl, read))
	if r1.Fence == 0 {
		t.Fatal("no fence")
	}
	again := must(a.AcquireMode(ctx, "k", "r1", ttl, read))
	if again.Fence != r1.Fence {
		t.Fatalf("re-acquire changed the fence: %d, was %d", again.Fence, r1.Fence)
	}
	_, err := a.AcquireMode(ctx, "k", "r1", ttl, write)
	wantErr(t, err, distlock.ErrNotAcquired, "write by a reader")
	for _, x := range []*postgres.Backend{a, b} {
		info, err := x.InspectMode(ctx, "k", read)
		if err != nil || info.Holders != 3 || info.Exclusive {
			t.Fatalf("inspect: %+v, %v; want 3 readers", info, err)
		}
	}

	// A refused writer is marked: new readers wait behind it.
	_, err = b.AcquireMode(ctx, "k", "w", ttl, write)
	wantErr(t, err, distlock.ErrNotAcquired, "write while read")
	_, err = a.AcquireMode(ctx, "k", "r4", ttl, read)
	wantErr(t, err, distlock.ErrNotAcquired, "read while a writer waits")
	wantErr(t, b.ReleaseMode(ctx, "k", "w", write), distlock.ErrNotHeld, "release of the mark")
	must(a.AcquireMode(ctx, "k", "r4", ttl, read))

	// Releasing one reader of a session leaves the others' shares.
	for _, r := range []string{"r1", "r4"} {
		if err := a.ReleaseMode(ctx, "k", r, read); err != nil {
			t.Fatal(err)
		}
	}
	wantErr(t, a.ReleaseMode(ctx, "k", "r1", read), distlock.ErrNotHeld, "double release")
	_, err = b.AcquireMode(ctx, "k", "w", ttl, write)
	wantErr(t, err, distlock.ErrNotAcquired, "write while r2 and r3 read")
	if err := b.ReleaseMode(ctx, "k", "r3", read); err != nil {
		t.Fatal(err)
	}
	_, err = b.AcquireMode(ctx, "k", "w", ttl, write)
	wantErr(t, err, distlock.ErrNotAcquired, "write while r2 reads")
	wantErr(t, a.ReleaseMode(ctx, "k", "w", read), distlock.ErrNotHeld, "wrong token")
	if err := a.ReleaseMode(ctx, "k", "r2", read); err != nil {
		t.Fatal(err)
	}
	w := must(b.AcquireMode(ctx, "k", "w", ttl, write))
	if w.Fence <= r1.Fence {
		t.Fatalf("writer's fence %d not above the reader's %d", w.Fence, r1.Fence)
	}
	_, err = a.AcquireMode(ctx, "k", "r5", ttl, read)
	wantErr(t, err, distlock.ErrNotAcquired, "read while written")
	_, err = b.AcquireMode(ctx, "k", "r5", ttl, read)
	wantErr(t, err, distlock.ErrNotAcquired, "read while written, same backend")
	_, err = b.AcquireMode(ctx, "k", "w", ttl, read)
	wantErr(t, err, distlock.ErrNotAcquired, "read by the writer")
	_, err = a.ExtendMode(ctx, "k", "w", ttl, write)
	wantErr(t, err, distlock.ErrNotHeld, "extend through another backend")
	must(b.ExtendMode(ctx, "k", "w", ttl, write))
	info, err := a.InspectMode(ctx, "k", write)
	if err != nil || info.Holders != 1 || !info.Exclusive {
		t.Fatalf("inspect: %+v, %v; want a writer", info, err)
	}
	info, err = b.InspectMode(ctx, "k", write)
	if err != nil || info.Token != "w" || info.Fence != w.Fence || info.TTL <= 0 {
		t.Fatalf("inspect by the holder's backend: %+v, %v", info, err)
	}
	if err := b.ReleaseMode(ctx, "k", "w", write); err != nil {
		t.Fatal(err)
	}
	must(a.AcquireMode(ctx, "k", "r6", ttl, read))
}

func TestReadWriteExpiry(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	must(a.AcquireMode(ctx, "k", "r", 200*time.Millisecond, read))
	must(a.AcquireMode(ctx, "k", "long", time.Minute, read))
	if err := a.ReleaseMode(ctx, "k", "long", read); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	must(b.AcquireModeWait(ctx, "k", "w", time.Minute, write))
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("writer waited %v for an expired reader", el)
	}
	_, err := a.ExtendMode(ctx, "k", "r", time.Minute, read)
	wantErr(t, err, distlock.ErrNotHeld, "extend after expiry")
	// A waiting-writer mark lasts its TTL only.
	if err := b.ReleaseMode(ctx, "k", "w", write); err != nil {
		t.Fatal(err)
	}
	must(a.AcquireMode(ctx, "k", "r2", time.Minute, read))
	_, err = b.AcquireMode(ctx, "k", "w2", 100*time.Millisecond, write)
	wantErr(t, err, distlock.ErrNotAcquired, "write while read")
	waitFor(t, "the mark to expire", func() bool {
		_, err := b.AcquireMode(ctx, "k", "r3", time.Minute, read)
		return err == nil
	})
}

func TestWaitingWriterFirst(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b, c := h.backend(t), h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	must(a.AcquireMode(ctx, "k", "r1", time.Minute, read))

	done := make(chan error, 1)
	go func() {
		_, err := b.AcquireModeWait(ctx, "k", "w", time.Minute, write)
		done <- err
	}()
	id := postgres.ModeLockID(h.ns, driver.Read, "k")
	waitFor(t, "the writer to queue", func() bool { return queued(t, h, id) == 1 })
	// Neither a new session nor the reader's own (whose lock table would
	// grant it at once) lets a new reader overtake the writer.
	_, err := c.AcquireMode(ctx, "k", "r2", time.Minute, read)
	wantErr(t, err, distlock.ErrNotAcquired, "read behind a queued writer")
	_, err = a.AcquireMode(ctx, "k", "r3", time.Minute, read)
	wantErr(t, err, distlock.ErrNotAcquired, "read behind a queued writer, same session")

	// A reader waiting queues behind the writer.
	rdone := make(chan error, 1)
	go func() {
		_, err := c.AcquireModeWait(ctx, "k", "r4", time.Minute, read)
		rdone <- err
	}()
	waitFor(t, "the reader to queue", func() bool { return queued(t, h, id) == 2 })
	if err := a.ReleaseMode(ctx, "k", "r1", read); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	select {
	case err := <-rdone:
		t.Fatalf("reader overtook the writer: %v", err)
	default:
	}
	if err := b.ReleaseMode(ctx, "k", "w", write); err != nil {
		t.Fatal(err)
	}
	if err := <-rdone; err != nil {
		t.Fatalf("reader: %v", err)
	}

	// A wait cut off leaves nothing behind.
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = b.AcquireModeWait(wctx, "k", "w2", time.Minute, write)
	wantErr(t, err, context.DeadlineExceeded, "cut-off wait")
	if n := queued(t, h, id); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	if err := c.ReleaseMode(ctx, "k", "r4", read); err != nil {
		t.Fatal(err)
	}
	must(a.AcquireMode(ctx, "k", "w3", time.Minute, write))
}

// queued counts the sessions waiting for the advisory lock id.
func queued(t *testing.T, h *harness, id int64) int {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	p := pool(t, h)
	var n int
	if err := p.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 AND classid::int8 = $1 AND objid::int8 = $2",
		int64(uint64(id)>>32), int64(uint32(id))).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSemaphore(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	p1 := must(a.AcquireMode(ctx, "s", "p1", time.Minute, permit(2)))
	p2 := must(a.AcquireMode(ctx, "s", "p2", time.Minute, permit(2)))
	if p2.Fence <= p1.Fence {
		t.Fatalf("fences %d, %d", p1.Fence, p2.Fence)
	}
	_, err := b.AcquireMode(ctx, "s", "p3", time.Minute, permit(2))
	wantErr(t, err, distlock.ErrNotAcquired, "third of two")
	_, err = b.AcquireMode(ctx, "s", "p3", time.Minute, permit(3))
	wantErr(t, err, distlock.ErrLimitMismatch, "another limit")
	_, err = a.AcquireMode(ctx, "s", "p3", time.Minute, permit(3))
	wantErr(t, err, distlock.ErrLimitMismatch, "another limit, same backend")
	info, err := b.InspectMode(ctx, "s", permit(2))
	if err != nil || info.Holders != 2 || info.Limit != 2 {
		t.Fatalf("inspect: %+v, %v", info, err)
	}
	if err := a.ReleaseMode(ctx, "s", "p1", permit(2)); err != nil {
		t.Fatal(err)
	}
	must(b.AcquireMode(ctx, "s", "p3", time.Minute, permit(2)))
	wantErr(t, b.ReleaseMode(ctx, "s", "p2", permit(2)), distlock.ErrNotHeld, "wrong backend")

	// Permits have no server queue: AcquireModeWait says so, and the
	// Manager retries AcquireMode instead.
	if _, err := b.AcquireModeWait(ctx, "s", "p4", time.Minute, permit(2)); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("AcquireModeWait(Permit): %v, want errors.ErrUnsupported", err)
	}
	if err := a.ReleaseMode(ctx, "s", "p2", permit(2)); err != nil {
		t.Fatal(err)
	}
	must(b.AcquireMode(ctx, "s", "p4", time.Minute, permit(2)))
	for _, p := range []string{"p3", "p4"} {
		if err := b.ReleaseMode(ctx, "s", p, permit(2)); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody holds: the limit is free to change.
	must(a.AcquireMode(ctx, "s", "q", time.Minute, permit(3)))
	info, err = b.InspectMode(ctx, "s", permit(3))
	if err != nil || info.Holders != 1 || info.Limit != 3 {
		t.Fatalf("inspect: %+v, %v", info, err)
	}
}

func TestElection(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	if info, err := b.InspectMode(ctx, "e", leader("")); err != nil || info != (driver.ModeInfo{}) {
		t.Fatalf("no leader yet: %+v, %v", info, err)
	}
	g := must(a.AcquireMode(ctx, "e", "la", time.Minute, leader("v1")))
	_, err := b.AcquireMode(ctx, "e", "lb", time.Minute, leader("x"))
	wantErr(t, err, distlock.ErrNotAcquired, "second leader")
	info, err := b.InspectMode(ctx, "e", leader(""))
	if err != nil || info.Holders != 1 || !info.Exclusive || info.Token != "la" || info.Value != "v1" || info.Fence != g.Fence ||
		info.TTL <= 0 || info.TTL > time.Minute {
		t.Fatalf("inspect: %+v, %v", info, err)
	}
	must(a.AcquireMode(ctx, "e", "la", time.Minute, leader("v2")))
	must(a.ExtendMode(ctx, "e", "la", time.Minute, leader("")))
	if info, err := b.InspectMode(ctx, "e", leader("")); err != nil || info.Value != "v2" || info.Fence != g.Fence {
		t.Fatalf("after re-acquire: %+v, %v", info, err)
	}

	// The leader's session dies: its row is not reported, a waiter leads.
	done := make(chan driver.Grant, 1)
	go func() {
		g, err := b.AcquireModeWait(ctx, "e", "lb", time.Minute, leader("vb"))
		if err != nil {
			t.Error(err)
		}
		done <- g
	}()
	waitFor(t, "the waiter to queue", func() bool { return queued(t, h, postgres.ModeLockID(h.ns, driver.Leader, "e")) == 1 })
	if err := h.RevokeMode(ctx, "e", driver.Leader); err != nil {
		t.Fatal(err)
	}
	gb := <-done
	if gb.Fence <= g.Fence {
		t.Fatalf("new leader's fence %d not above %d", gb.Fence, g.Fence)
	}
	info, err = a.InspectMode(ctx, "e", leader(""))
	if err != nil || info.Token != "lb" || info.Value != "vb" || info.Fence != gb.Fence {
		t.Fatalf("new leader: %+v, %v", info, err)
	}
	_, err = a.ExtendMode(ctx, "e", "la", time.Minute, leader(""))
	wantErr(t, err, distlock.ErrNotHeld, "extend by the lost leader")

	// Expiry ends leadership for everyone at once.
	if err := b.ReleaseMode(ctx, "e", "lb", leader("")); err != nil {
		t.Fatal(err)
	}
	must(b.AcquireMode(ctx, "e", "lc", 150*time.Millisecond, leader("vc")))
	waitFor(t, "the leader to expire", func() bool {
		info, err := a.InspectMode(ctx, "e", leader(""))
		return err == nil && info == (driver.ModeInfo{})
	})
	// The row's expiry (server clock, at the statement) comes a moment
	// before the holder's timer unlocks (client clock, at the answer).
	waitFor(t, "the expired leader's lock to go", func() bool {
		_, err := a.AcquireMode(ctx, "e", "ld", time.Minute, leader("vd"))
		return err == nil
	})
}

func TestModeRevokeURL(t *testing.T) {
	// conformance.URL's revoker finds the same ids (namespace from the URL).
	h := newHarness(t, server(t), "")
	u, err := url.Parse(h.url())
	if err != nil || !strings.Contains(u.RawQuery, url.QueryEscape(h.ns)) {
		t.Fatalf("url %v", err)
	}
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	must(a.AcquireMode(ctx, "k", "r", time.Minute, read))
	if err := h.RevokeMode(ctx, "k", driver.Read); err != nil {
		t.Fatal(err)
	}
	must(b.AcquireMode(ctx, "k", "w", time.Minute, write))
}

// pool connects to the harness's server (no namespace: it only reads).
func pool(t *testing.T, h *harness) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(ctxT(t, 10*time.Second), h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestWatchMode(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	watch := func(key string, m driver.Mode) chan struct{} {
		ch := make(chan struct{}, 100)
		stop, err := a.WatchMode(ctx, key, m, func() {
			select {
			case ch <- struct{}{}:
			default:
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		return ch
	}
	expect := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification of %s", what)
		}
		for len(ch) > 0 { // several notifications may describe one change
			<-ch
		}
	}
	le, rw, se := watch("e", leader("")), watch("k", write), watch("s", permit(1))
	other := watch("other", leader(""))

	must(b.AcquireMode(ctx, "e", "l", time.Minute, leader("v1")))
	expect(le, "a new leader")
	must(b.AcquireMode(ctx, "e", "l", time.Minute, leader("v2")))
	expect(le, "a new value")
	if err := b.ReleaseMode(ctx, "e", "l", leader("")); err != nil {
		t.Fatal(err)
	}
	expect(le, "the leader's release")
	must(b.AcquireModeWait(ctx, "e", "l2", 100*time.Millisecond, leader("v3")))
	expect(le, "a leader after a wait")
	expect(le, "the leader's expiry")

	must(b.AcquireMode(ctx, "k", "r", time.Minute, read))
	expect(rw, "a reader")
	if err := b.ReleaseMode(ctx, "k", "r", read); err != nil {
		t.Fatal(err)
	}
	expect(rw, "the reader's release")
	must(b.AcquireMode(ctx, "s", "p", time.Minute, permit(1)))
	expect(se, "a permit")
	if err := b.ReleaseMode(ctx, "s", "p", permit(1)); err != nil {
		t.Fatal(err)
	}
	expect(se, "the permit's release")
	select {
	case <-other:
		t.Fatal("notified of another key")
	default:
	}
}

// TestContendedPrimitives runs readers and writers, and permit holders, of
// three backends at once, waiting in the server's queue, and checks the
// exclusions held throughout.
func TestContendedPrimitives(t *testing.T) {
	h := newHarness(t, server(t), "")
	bs := []*postgres.Backend{h.backend(t), h.backend(t), h.backend(t)}
	ctx := ctxT(t, 60*time.Second)
	var readers, writers, permits atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bs[g%len(bs)]
			for i := range 15 {
				tok := fmt.Sprint("t", g, "-", i)
				var err error
				switch g % 4 {
				case 0: // a writer
					if _, err = b.AcquireModeWait(ctx, "k", tok, 10*time.Second, write); err == nil {
						if writers.Add(1) != 1 || readers.Load() != 0 {
							errs <- fmt.Errorf("writer beside %d writers, %d readers", writers.Load(), readers.Load())
						}
						writers.Add(-1)
						err = b.ReleaseMode(ctx, "k", tok, write)
					}
				case 1, 2: // readers
					if _, err = b.AcquireModeWait(ctx, "k", tok, 10*time.Second, read); err == nil {
						readers.Add(1)
						if writers.Load() != 0 {
							errs <- errors.New("reader beside a writer")
						}
						readers.Add(-1)
						err = b.ReleaseMode(ctx, "k", tok, read)
					}
				case 3: // permits of 2
					if err = retryPermit(ctx, b, tok); err == nil {
						if n := permits.Add(1); n > 2 {
							errs <- fmt.Errorf("%d permits of 2", n)
						}
						permits.Add(-1)
						err = b.ReleaseMode(ctx, "s", tok, permit(2))
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, kind := range []driver.Mode{read, permit(2)} {
		key := map[driver.Kind]string{driver.Read: "k", driver.Permit: "s"}[kind.Kind]
		if info, err := bs[0].InspectMode(ctx, key, kind); err != nil || info.Holders != 0 {
			t.Errorf("%v left: %+v, %v", kind.Kind, info, err)
		}
	}
}

// BenchmarkPrimitives measures an uncontended acquire and release of each
// kind on one backend, and of a plain lock beside them.
func BenchmarkPrimitives(b *testing.B) {
	srv := distlocktest.StartPostgres(b)
	ctx := context.Background()
	sep := "?"
	if strings.Contains(srv.URL, "?") {
		sep = "&"
	}
	be, err := distlock.OpenBackend(ctx, srv.URL+sep+"distlock_namespace=bench")
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	pb := be.(*postgres.Backend)
	for _, m := range []driver.Mode{{}, read, write, permit(4), leader("v")} {
		name := "lock"
		if m.Kind != 0 {
			name = m.Kind.String()
		}
		b.Run(name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				tok := strconv.Itoa(i)
				if m.Kind == 0 {
					if _, err := pb.Acquire(ctx, "k", tok, time.Minute); err != nil {
						b.Fatal(err)
					}
					if err := pb.Release(ctx, "k", tok); err != nil {
						b.Fatal(err)
					}
					continue
				}
				if _, err := pb.AcquireMode(ctx, "k", tok, time.Minute, m); err != nil {
					b.Fatal(err)
				}
				if err := pb.ReleaseMode(ctx, "k", tok, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestModeBinaryTokensAndValues(t *testing.T) {
	h := newHarness(t, server(t), "")
	a, b := h.backend(t), h.backend(t)
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	tok, val := "t\x00\xff", "\x00v\xfe"
	g := must(a.AcquireMode(ctx, "\x00e", tok, time.Minute, leader(val)))
	info, err := b.InspectMode(ctx, "\x00e", leader(""))
	if err != nil || info.Token != tok || info.Value != val || info.Fence != g.Fence {
		t.Fatalf("inspect: %+v, %v", info, err)
	}
	must(a.AcquireMode(ctx, "\x00k", tok, time.Minute, read))
	_, err = b.AcquireMode(ctx, "\x00k", tok+"w", time.Minute, write)
	wantErr(t, err, distlock.ErrNotAcquired, "write while read")
	wantErr(t, b.ReleaseMode(ctx, "\x00k", tok+"w", write), distlock.ErrNotHeld, "release of the mark")
	if err := a.ReleaseMode(ctx, "\x00k", tok, read); err != nil {
		t.Fatal(err)
	}
	must(b.AcquireMode(ctx, "\x00k", tok+"w", time.Minute, write))
}

func TestModeTableMigration(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 30*time.Second)
	must := musts(t)
	p := pool(t, h)
	table := fmt.Sprintf("state_manual_%d", nsSeq.Add(1))
	if err := postgres.Migrate(ctx, p); err != nil { // the sequence (and the default table)
		t.Fatal(err)
	}
	// No table, no auto-migration: the primitives that need it say so, and
	// the plain locks on the same session are untouched.
	b := postgres.New(p, postgres.WithNamespace(h.ns), postgres.WithoutAutoMigrate(), postgres.WithTable(table), postgres.WithSessions(1))
	t.Cleanup(func() { b.Close() })
	must(b.Acquire(ctx, "plain", "t", time.Minute))
	_, err := b.AcquireMode(ctx, "e", "l", time.Minute, leader("v"))
	if !errors.Is(err, distlock.ErrUnavailable) || !strings.Contains(err.Error(), "Migrate") {
		t.Fatalf("leader without its table: %v", err)
	}
	must(b.AcquireMode(ctx, "s", "p", time.Minute, permit(1))) // needs no table
	if err := b.Release(ctx, "plain", "t"); err != nil {
		t.Fatalf("plain lock after the refusal: %v", err)
	}
	if err := postgres.Migrate(ctx, p, postgres.WithTable(table)); err != nil {
		t.Fatal(err)
	}
	must(b.AcquireMode(ctx, "e", "l", time.Minute, leader("v")))
	var n int
	if err := p.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in %s: %d, %v", table, n, err)
	}
}

// retryPermit retries AcquireMode of a permit of 2 as the Manager does
// (permits have no server queue), until it is granted or ctx ends.
func retryPermit(ctx context.Context, b driver.Backend, tok string) error {
	for {
		_, err := b.(driver.Primitives).AcquireMode(ctx, "s", tok, 10*time.Second, permit(2))
		if !errors.Is(err, distlock.ErrNotAcquired) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond): // the retry's pause
		}
	}
}
