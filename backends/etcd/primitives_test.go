package etcd_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	rd    = driver.Mode{Kind: driver.Read}
	wr    = driver.Mode{Kind: driver.Write}
	sem2  = driver.Mode{Kind: driver.Permit, Limit: 2}
	elect = driver.Mode{Kind: driver.Leader}
)

// entries counts the entries of key in kind's key space (default prefix).
func entries(t testing.TB, cli *clientv3.Client, key string, kind driver.Kind) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), etcd.ModePrefix(etcd.DefaultPrefix, key, kind), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// waitAsync runs AcquireModeWait in a goroutine; the result comes on the
// channel.
func waitAsync(ctx context.Context, b *etcd.Backend, key, token string, m driver.Mode) chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := b.AcquireModeWait(ctx, key, token, 5*time.Second, m)
		ch <- err
	}()
	return ch
}

func recv(t *testing.T, ch chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return nil
	}
}

func TestPrimitivesCapabilities(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	if c := b.Capabilities(); !c.ReadWrite || !c.Semaphore || !c.Election {
		t.Fatalf("capabilities %+v", c)
	}
	ctx := ctxT(t, 10*time.Second)
	if _, err := b.AcquireMode(ctx, "k", "t", time.Second, driver.Mode{Kind: 9}); !errors.Is(err, distlock.ErrUnsupported) {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, err := b.AcquireMode(ctx, "k", "t", time.Second, driver.Mode{Kind: driver.Permit}); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("limit 0: %v", err)
	}
}

// The key spaces of plain locks and of each primitive are apart, for every
// key, and user keys of plain locks cannot reach them.
func TestPrimitivesKeySpacesApart(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 20*time.Second)
	for _, k := range []string{"a", "rw:1:a/", "sem:1:a/t", "elect:", ""} {
		if _, err := b.Acquire(ctx, k, "plain", 5*time.Second); err != nil && k != "" {
			t.Fatalf("plain %q: %v", k, err)
		}
		for i, m := range []driver.Mode{wr, sem2, elect} {
			if _, err := b.AcquireMode(ctx, k, "t"+string(rune('0'+i)), 5*time.Second, m); err != nil {
				t.Fatalf("%v %q: %v", m.Kind, k, err)
			}
		}
	}
	for _, k := range []string{"a", "rw:1:a/"} {
		for _, m := range []driver.Mode{wr, sem2, elect} {
			if info, err := b.InspectMode(ctx, k, m); err != nil || info.Holders != 1 {
				t.Fatalf("%v %q: %+v %v", m.Kind, k, info, err)
			}
		}
	}
}

func TestReadWrite(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	o, _ := countingBackend(t, srv.Endpoints)
	cli := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)

	r1, err := b.AcquireMode(ctx, "rw", "r1", 5*time.Second, rd)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := o.AcquireMode(ctx, "rw", "r2", 5*time.Second, rd)
	if err != nil || r2.Fence <= r1.Fence {
		t.Fatalf("second reader: %+v %v (first %+v)", r2, err, r1)
	}
	if _, err := o.AcquireMode(ctx, "rw", "w", 5*time.Second, wr); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("write while read: %v", err)
	}
	if _, err := b.AcquireMode(ctx, "rw", "r1", 5*time.Second, wr); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("upgrade: %v", err)
	}
	if n := entries(t, cli, "rw", driver.Read); n != 2 {
		t.Fatalf("a refused acquire left something: %d entries", n)
	}
	if g, err := b.AcquireMode(ctx, "rw", "r1", 5*time.Second, rd); err != nil || g.Fence != r1.Fence {
		t.Fatalf("re-acquire: %+v %v (was %+v)", g, err, r1)
	}
	if info, err := o.InspectMode(ctx, "rw", rd); err != nil || info.Holders != 2 || info.Exclusive {
		t.Fatalf("inspect: %+v %v", info, err)
	}

	// A waiting writer keeps new readers out and comes before them.
	wch := waitAsync(ctx, o, "rw", "w", wr)
	testwait.For(t, 5*time.Second, "the writer's entry", func() bool { return entries(t, cli, "rw", driver.Write) == 3 })
	if _, err := b.AcquireMode(ctx, "rw", "r3", 5*time.Second, rd); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("read past a waiting writer: %v", err)
	}
	rch := waitAsync(ctx, b, "rw", "r3", rd)
	testwait.For(t, 5*time.Second, "the late reader's entry", func() bool { return entries(t, cli, "rw", driver.Write) == 4 })
	if err := b.ReleaseMode(ctx, "rw", "r1", wr); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release read as write: %v", err)
	}
	if err := b.ReleaseMode(ctx, "rw", "nobody", rd); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release by a stranger: %v", err)
	}
	for _, tok := range []string{"r1", "r2"} {
		if err := b.ReleaseMode(ctx, "rw", tok, rd); err != nil {
			t.Fatal(err)
		}
	}
	if err := recv(t, wch, "the writer"); err != nil {
		t.Fatal(err)
	}
	info, err := b.InspectMode(ctx, "rw", wr)
	if err != nil || info.Holders != 1 || !info.Exclusive || info.Token != "w" || info.Fence <= r2.Fence || info.TTL <= 0 {
		t.Fatalf("inspect writer: %+v %v", info, err)
	}
	select {
	case err := <-rch:
		t.Fatalf("reader got in beside the writer: %v", err)
	default:
	}
	if err := o.ReleaseMode(ctx, "rw", "w", wr); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, rch, "the late reader"); err != nil {
		t.Fatal(err)
	}
	if err := b.ReleaseMode(ctx, "rw", "r3", rd); err != nil {
		t.Fatal(err)
	}
	if err := b.ReleaseMode(ctx, "rw", "w", wr); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release twice: %v", err)
	}
	if n := entries(t, cli, "rw", driver.Read); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

// A wait that ends with ctx leaves nothing behind, and a holder that does
// not extend frees the key at its TTL.
func TestModeWaitCancelAndExpiry(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	cli := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	if _, err := b.AcquireMode(ctx, "x", "holder", time.Second, wr); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	ch := waitAsync(wctx, b, "x", "waiter", wr)
	testwait.For(t, 5*time.Second, "the waiter's entry", func() bool { return entries(t, cli, "x", driver.Write) == 2 })
	cancel()
	if err := recv(t, ch, "the cancelled wait"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	if n := entries(t, cli, "x", driver.Write); n != 1 {
		t.Fatalf("%d entries after the cancelled wait", n)
	}
	start := time.Now()
	g, err := b.AcquireModeWait(ctx, "x", "next", 5*time.Second, rd)
	if err != nil || time.Since(start) > 4*time.Second {
		t.Fatalf("after the holder's TTL: %+v %v in %v", g, err, time.Since(start))
	}
	if _, err := b.ExtendMode(ctx, "x", "holder", time.Second, wr); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend expired: %v", err)
	}
	// Extend to a longer lease keeps the fence.
	g2, err := b.ExtendMode(ctx, "x", "next", 10*time.Second, rd)
	if err != nil || g2.Fence != g.Fence || g2.TTL < 10*time.Second {
		t.Fatalf("extend: %+v %v (grant %+v)", g2, err, g)
	}
	if g3, err := b.AcquireMode(ctx, "x", "next", 10*time.Second, rd); err != nil || g3.Fence != g.Fence {
		t.Fatalf("re-acquire after the move: %+v %v", g3, err)
	}
}

func TestSemaphore(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	cli := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	var fences []uint64
	for _, tok := range []string{"p1", "p2"} {
		g, err := b.AcquireMode(ctx, "s", tok, 5*time.Second, sem2)
		if err != nil {
			t.Fatal(err)
		}
		fences = append(fences, g.Fence)
	}
	if _, err := b.AcquireMode(ctx, "s", "p3", 5*time.Second, sem2); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("third permit: %v", err)
	}
	for _, wait := range []bool{false, true} {
		acq := b.AcquireMode
		if wait {
			acq = b.AcquireModeWait
		}
		if _, err := acq(ctx, "s", "p3", 5*time.Second, driver.Mode{Kind: driver.Permit, Limit: 3}); !errors.Is(err, distlock.ErrLimitMismatch) {
			t.Fatalf("other limit (wait %v): %v", wait, err)
		}
	}
	if _, err := b.AcquireMode(ctx, "s", "p1", 5*time.Second, driver.Mode{Kind: driver.Permit, Limit: 3}); !errors.Is(err, distlock.ErrLimitMismatch) {
		t.Fatalf("re-acquire with another limit: %v", err)
	}
	if n := entries(t, cli, "s", driver.Permit); n != 2 {
		t.Fatalf("%d entries after refusals", n)
	}
	if info, err := b.InspectMode(ctx, "s", driver.Mode{Kind: driver.Permit}); err != nil || info.Holders != 2 || info.Limit != 2 {
		t.Fatalf("inspect: %+v %v", info, err)
	}
	ch := make(chan driver.Grant, 1)
	go func() {
		g, err := b.AcquireModeWait(ctx, "s", "p3", 5*time.Second, sem2)
		if err != nil {
			t.Error(err)
		}
		ch <- g
	}()
	testwait.For(t, 5*time.Second, "the waiter's entry", func() bool { return entries(t, cli, "s", driver.Permit) == 3 })
	if err := b.ReleaseMode(ctx, "s", "p1", driver.Mode{Kind: driver.Permit}); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-ch:
		if g.Fence <= fences[1] {
			t.Fatalf("fence %d after %v", g.Fence, fences)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not granted")
	}
	for _, tok := range []string{"p2", "p3"} {
		if err := b.ReleaseMode(ctx, "s", tok, sem2); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody holds: another limit is fine now.
	if _, err := b.AcquireMode(ctx, "s", "q", 5*time.Second, driver.Mode{Kind: driver.Permit, Limit: 5}); err != nil {
		t.Fatal(err)
	}
}

func TestElection(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	o, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	var changes atomic.Int64
	stop, err := o.WatchMode(ctx, "e", elect, func() { changes.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	g, err := b.AcquireMode(ctx, "e", "a", 5*time.Second, driver.Mode{Kind: driver.Leader, Value: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 5*time.Second, "a change seen by the watch", func() bool { return changes.Load() > 0 })
	if _, err := o.AcquireMode(ctx, "e", "b", 5*time.Second, driver.Mode{Kind: driver.Leader, Value: "x"}); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("second leader: %v", err)
	}
	g2, err := b.AcquireMode(ctx, "e", "a", 5*time.Second, driver.Mode{Kind: driver.Leader, Value: "v2;with;semicolons"})
	if err != nil || g2.Fence != g.Fence {
		t.Fatalf("re-acquire: %+v %v (was %+v)", g2, err, g)
	}
	info, err := o.InspectMode(ctx, "e", elect)
	if err != nil || info.Holders != 1 || !info.Exclusive || info.Token != "a" || info.Value != "v2;with;semicolons" || info.Fence != g.Fence || info.TTL <= 0 {
		t.Fatalf("inspect: %+v %v", info, err)
	}
	if _, err := b.ExtendMode(ctx, "e", "a", 5*time.Second, elect); err != nil {
		t.Fatal(err)
	}
	if info, _ := o.InspectMode(ctx, "e", elect); info.Value != "v2;with;semicolons" {
		t.Fatalf("extend changed the value: %+v", info)
	}
	ch := make(chan driver.Grant, 1)
	go func() {
		g, err := o.AcquireModeWait(ctx, "e", "b", 5*time.Second, driver.Mode{Kind: driver.Leader, Value: "vb"})
		if err != nil {
			t.Error(err)
		}
		ch <- g
	}()
	seen := changes.Load()
	testwait.For(t, 5*time.Second, "the candidate's entry", func() bool { return changes.Load() > seen })
	if err := b.ReleaseMode(ctx, "e", "a", elect); err != nil {
		t.Fatal(err)
	}
	select {
	case gb := <-ch:
		if gb.Fence <= g.Fence {
			t.Fatalf("fence %d after %d", gb.Fence, g.Fence)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("candidate not elected")
	}
	if info, err := b.InspectMode(ctx, "e", elect); err != nil || info.Token != "b" || info.Value != "vb" {
		t.Fatalf("inspect new leader: %+v %v", info, err)
	}
}

// Many waiters in several backends: a writer is alone, readers never meet
// a writer, at most limit permits are held, and fences increase with each
// exclusive grant.
func TestModeWaitContended(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	cli := newClient(t, srv.Endpoints)
	var bs []*etcd.Backend
	for range 3 {
		b, _ := countingBackend(t, srv.Endpoints)
		bs = append(bs, b)
	}
	ctx := ctxT(t, 60*time.Second)
	type state struct {
		readers, writers, permits atomic.Int64
		lastFence                 atomic.Uint64
	}
	var st state
	errc := make(chan error, 24)
	for i := range 12 {
		go func() {
			b, tok := bs[i%3], "tok"+string(rune('a'+i))
			m := []driver.Mode{rd, wr, rd, sem2}[i%4]
			for range 5 {
				g, err := b.AcquireModeWait(ctx, "c", tok, 5*time.Second, m)
				if err != nil {
					errc <- err
					return
				}
				var bad bool
				switch m.Kind {
				case driver.Read:
					bad = st.readers.Add(1) < 1 || st.writers.Load() != 0
				case driver.Write:
					bad = st.writers.Add(1) != 1 || st.readers.Load() != 0
					if f := st.lastFence.Swap(g.Fence); f >= g.Fence {
						errc <- errors.New("writer fence did not increase")
						return
					}
				case driver.Permit:
					bad = st.permits.Add(1) > 2
				}
				if bad {
					errc <- errors.New(m.Kind.String() + ": exclusion broken")
					return
				}
				switch m.Kind {
				case driver.Read:
					st.readers.Add(-1)
				case driver.Write:
					st.writers.Add(-1)
				case driver.Permit:
					st.permits.Add(-1)
				}
				if err := b.ReleaseMode(ctx, "c", tok, m); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 12 {
		if err := recv(t, errc, "a worker"); err != nil {
			t.Fatal(err)
		}
	}
	if n := entries(t, cli, "c", driver.Read) + entries(t, cli, "c", driver.Permit); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

// A watch ends with Close; stop after Close returns, and WatchMode after
// Close is ErrClosed.
func TestWatchModeClose(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 10*time.Second)
	stop, err := b.WatchMode(ctx, "w", sem2, func() {})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	stop()
	if _, err := b.WatchMode(ctx, "w", sem2, func() {}); !errors.Is(err, distlock.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// A watch outlives a restart of the server: it starts again and sees the
// changes made after.
func TestWatchModeRestart(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	if srv.Cluster == nil {
		t.Skip("an external server cannot be restarted")
	}
	b, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 40*time.Second)
	var changes atomic.Int64
	stop, err := b.WatchMode(ctx, "r", elect, func() { changes.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := srv.Cluster.StopMember(0); err != nil {
		t.Fatal(err)
	}
	if err := srv.Cluster.StartMember(ctx, 0); err != nil {
		t.Fatal(err)
	}
	o, _ := countingBackend(t, srv.Endpoints)
	testwait.For(t, 20*time.Second, "a grant after the restart", func() bool {
		_, err := o.AcquireMode(ctx, "r", "l", 5*time.Second, elect)
		return err == nil
	})
	for range 3 { // a late call for the break itself could pass one round, not three
		seen := changes.Load()
		if err := o.ReleaseMode(ctx, "r", "l", elect); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, 20*time.Second, "the release seen by the watch", func() bool { return changes.Load() > seen })
		seen = changes.Load()
		if _, err := o.AcquireMode(ctx, "r", "l", 5*time.Second, elect); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, 20*time.Second, "the grant seen by the watch", func() bool { return changes.Load() > seen })
	}
}

// Readers racing each other with one try each all get in: other readers'
// entries do not refuse a reader.
func TestReadersRaceTryOnce(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	var bs []*etcd.Backend
	for range 4 {
		b, _ := countingBackend(t, srv.Endpoints)
		bs = append(bs, b)
	}
	ctx := ctxT(t, 30*time.Second)
	if _, err := bs[0].AcquireMode(ctx, "race", "first", 10*time.Second, rd); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 32)
	for i := range 32 {
		go func() {
			_, err := bs[i%4].AcquireMode(ctx, "race", "r"+string(rune('A'+i)), 10*time.Second, rd)
			errc <- err
		}()
	}
	for range 32 {
		if err := recv(t, errc, "a reader"); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := bs[1].InspectMode(ctx, "race", rd); err != nil || info.Holders != 33 {
		t.Fatalf("inspect: %+v %v", info, err)
	}
}
