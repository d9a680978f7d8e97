package redsync_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	"github.com/redis/go-redis/v9"
)

var (
	modeRead   = driver.Mode{Kind: driver.Read}
	modeWrite  = driver.Mode{Kind: driver.Write}
	modeWait   = driver.Mode{Kind: driver.Write, Waiting: true} // a Write that will try again
	modeLeader = func(v string) driver.Mode { return driver.Mode{Kind: driver.Leader, Value: v} }
	modePermit = func(n int) driver.Mode { return driver.Mode{Kind: driver.Permit, Limit: n} }
)

// newModeBackend returns a single-node backend on the shared server.
func newModeBackend(t *testing.T, opts ...redsyncLocker.Option) *redsyncLocker.Backend {
	t.Helper()
	b := redsyncLocker.NewBackend(newClient(t, sharedAddr), opts...)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// must returns a function that fails t on an error and returns the grant.
func must(t *testing.T) func(driver.Grant, error) driver.Grant {
	return func(g driver.Grant, err error) driver.Grant {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
}

func inspect(t *testing.T, b *redsyncLocker.Backend, key string, m driver.Mode) driver.ModeInfo {
	t.Helper()
	info, err := b.InspectMode(ctxTimeout(t, 5*time.Second), key, m)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// waitHolders waits, with a deadline, until key has n live holders in m's
// key space.
func waitHolders(t *testing.T, b *redsyncLocker.Backend, key string, m driver.Mode, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for inspect(t, b, key, m).Holders != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not %d holders after 5s", key, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestModeReadWrite(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	b := newModeBackend(t)
	key := uniqueKey(t)
	ttl := 10 * time.Second

	r1 := must(t)(b.AcquireMode(ctx, key, "r1", ttl, modeRead))
	r2 := must(t)(b.AcquireMode(ctx, key, "r2", ttl, modeRead))
	if r1.Fence == 0 || r2.Fence <= r1.Fence {
		t.Fatalf("fences %d, %d: want increasing from 1", r1.Fence, r2.Fence)
	}
	if got := inspect(t, b, key, modeRead); got.Holders != 2 || got.Exclusive {
		t.Fatalf("inspect with two readers: %+v", got)
	}
	// A try-once writer is refused and leaves nothing; a waiting one marks
	// itself, and new readers are then refused (writer preference), a
	// reader's re-acquire is not.
	_, err := b.AcquireMode(ctx, key, "w", ttl, modeWrite)
	wantErr(t, err, distlock.ErrNotAcquired)
	must(t)(b.AcquireMode(ctx, key, "r3", ttl, modeRead))
	if err := b.ReleaseMode(ctx, key, "r3", modeRead); err != nil {
		t.Fatal(err)
	}
	_, err = b.AcquireMode(ctx, key, "w", ttl, modeWait)
	wantErr(t, err, distlock.ErrNotAcquired)
	_, err = b.AcquireMode(ctx, key, "r3", ttl, modeRead)
	wantErr(t, err, distlock.ErrNotAcquired)
	if g := must(t)(b.AcquireMode(ctx, key, "r1", ttl, modeRead)); g.Fence != r1.Fence {
		t.Fatalf("re-acquire changed the fence: %d, was %d", g.Fence, r1.Fence)
	}
	// A token holds one kind at a time.
	_, err = b.AcquireMode(ctx, key, "r1", ttl, modeWrite)
	wantErr(t, err, distlock.ErrNotAcquired)
	wantErr(t, b.ReleaseMode(ctx, key, "r1", modeWrite), distlock.ErrNotHeld)
	for _, tok := range []string{"r1", "r2"} {
		if err := b.ReleaseMode(ctx, key, tok, modeRead); err != nil {
			t.Fatal(err)
		}
	}
	w := must(t)(b.AcquireMode(ctx, key, "w", ttl, modeWrite))
	if w.Fence <= r2.Fence {
		t.Fatalf("writer's fence %d not above the readers' %d", w.Fence, r2.Fence)
	}
	got := inspect(t, b, key, modeWrite)
	if got.Holders != 1 || !got.Exclusive || got.Token != "w" || got.Fence != w.Fence || got.TTL <= 0 || got.TTL > ttl {
		t.Fatalf("inspect with a writer: %+v", got)
	}
	_, err = b.AcquireMode(ctx, key, "r1", ttl, modeRead)
	wantErr(t, err, distlock.ErrNotAcquired)
	_, err = b.AcquireMode(ctx, key, "w", ttl, modeRead)
	wantErr(t, err, distlock.ErrNotAcquired)
	_, err = b.AcquireMode(ctx, key, "w2", ttl, modeWait)
	wantErr(t, err, distlock.ErrNotAcquired)
	wantErr(t, b.ReleaseMode(ctx, key, "w", modeRead), distlock.ErrNotHeld)
	if err := b.ReleaseMode(ctx, key, "w", modeWrite); err != nil {
		t.Fatal(err)
	}
	// w2's mark holds readers off until w2 gives up: its release of Write
	// drops the mark (ErrNotHeld: it held nothing).
	_, err = b.AcquireMode(ctx, key, "r1", ttl, modeRead)
	wantErr(t, err, distlock.ErrNotAcquired)
	wantErr(t, b.ReleaseMode(ctx, key, "w2", modeWrite), distlock.ErrNotHeld)
	must(t)(b.AcquireMode(ctx, key, "r1", ttl, modeRead))
}

func TestModeWriterMarkExpires(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	b := newModeBackend(t)
	key := uniqueKey(t)
	must(t)(b.AcquireMode(ctx, key, "r1", 10*time.Second, modeRead))
	_, err := b.AcquireMode(ctx, key, "w", 200*time.Millisecond, modeWait)
	wantErr(t, err, distlock.ErrNotAcquired)
	start := time.Now()
	for {
		_, err := b.AcquireMode(ctx, key, "r2", 10*time.Second, modeRead)
		if err == nil {
			break
		}
		wantErr(t, err, distlock.ErrNotAcquired)
		if time.Since(start) > 5*time.Second {
			t.Fatal("writer's mark outlived its TTL by 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("reader admitted %v after a 200ms mark", d)
	}
}

func TestModeSemaphore(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	b := newModeBackend(t)
	key := uniqueKey(t)
	long := 10 * time.Second

	p1 := must(t)(b.AcquireMode(ctx, key, "p1", 300*time.Millisecond, modePermit(2)))
	p2 := must(t)(b.AcquireMode(ctx, key, "p2", long, modePermit(2)))
	if p2.Fence <= p1.Fence {
		t.Fatalf("fences %d, %d", p1.Fence, p2.Fence)
	}
	_, err := b.AcquireMode(ctx, key, "p3", long, modePermit(2))
	wantErr(t, err, distlock.ErrNotAcquired)
	_, err = b.AcquireMode(ctx, key, "p3", long, modePermit(3))
	wantErr(t, err, distlock.ErrLimitMismatch)
	if got := inspect(t, b, key, modePermit(2)); got.Holders != 2 || got.Limit != 2 || got.Exclusive {
		t.Fatalf("inspect: %+v", got)
	}
	// p1's expiry frees its permit, server-side.
	waitHolders(t, b, key, modePermit(2), 1)
	_, err = b.ExtendMode(ctx, key, "p1", long, modePermit(2))
	wantErr(t, err, distlock.ErrNotHeld)
	p3 := must(t)(b.AcquireMode(ctx, key, "p3", long, modePermit(2)))
	if p3.Fence <= p2.Fence {
		t.Fatalf("fence %d not above %d", p3.Fence, p2.Fence)
	}
	if g := must(t)(b.ExtendMode(ctx, key, "p3", long, modePermit(2))); g.Fence != p3.Fence {
		t.Fatalf("extend changed the fence: %d, was %d", g.Fence, p3.Fence)
	}
	wantErr(t, b.ReleaseMode(ctx, key, "nobody", modePermit(2)), distlock.ErrNotHeld)
	for _, tok := range []string{"p2", "p3"} {
		if err := b.ReleaseMode(ctx, key, tok, modePermit(2)); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody holds: the limit is reset.
	if got := inspect(t, b, key, modePermit(2)); got != (driver.ModeInfo{}) {
		t.Fatalf("inspect of a free semaphore: %+v", got)
	}
	must(t)(b.AcquireMode(ctx, key, "p4", long, modePermit(5)))
	if got := inspect(t, b, key, modePermit(5)); got.Limit != 5 {
		t.Fatalf("limit %d after reset, want 5", got.Limit)
	}
	_, err = b.AcquireMode(ctx, key, "bad", long, modePermit(0))
	wantErr(t, err, distlock.ErrInvalidArgument)
}

func TestModeLeader(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	b := newModeBackend(t)
	key := uniqueKey(t)
	ttl := 10 * time.Second

	if got := inspect(t, b, key, modeLeader("")); got != (driver.ModeInfo{}) {
		t.Fatalf("inspect with no leader: %+v", got)
	}
	a := must(t)(b.AcquireMode(ctx, key, "a", ttl, modeLeader("addr-a")))
	_, err := b.AcquireMode(ctx, key, "b", ttl, modeLeader("addr-b"))
	wantErr(t, err, distlock.ErrNotAcquired)
	got := inspect(t, b, key, modeLeader(""))
	if got.Holders != 1 || !got.Exclusive || got.Token != "a" || got.Value != "addr-a" || got.Fence != a.Fence || got.TTL <= 0 {
		t.Fatalf("inspect: %+v", got)
	}
	// The leader's re-acquire publishes its new value and keeps its fence;
	// extend keeps the value.
	if g := must(t)(b.AcquireMode(ctx, key, "a", ttl, modeLeader("addr-a2"))); g.Fence != a.Fence {
		t.Fatalf("re-acquire fence %d, was %d", g.Fence, a.Fence)
	}
	must(t)(b.ExtendMode(ctx, key, "a", ttl, modeLeader("ignored")))
	if got := inspect(t, b, key, modeLeader("")); got.Value != "addr-a2" {
		t.Fatalf("value %q, want addr-a2", got.Value)
	}
	_, err = b.ExtendMode(ctx, key, "b", ttl, modeLeader(""))
	wantErr(t, err, distlock.ErrNotHeld)
	if err := b.ReleaseMode(ctx, key, "a", modeLeader("")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, b.ReleaseMode(ctx, key, "a", modeLeader("")), distlock.ErrNotHeld)
	bg := must(t)(b.AcquireMode(ctx, key, "b", 200*time.Millisecond, modeLeader("addr-b")))
	if bg.Fence <= a.Fence {
		t.Fatalf("new leader's fence %d not above %d", bg.Fence, a.Fence)
	}
	// An expired leader is nobody, at once.
	waitHolders(t, b, key, modeLeader(""), 0)
	_, err = b.ExtendMode(ctx, key, "b", ttl, modeLeader(""))
	wantErr(t, err, distlock.ErrNotHeld)
	if got := inspect(t, b, key, modeLeader("")); got != (driver.ModeInfo{}) {
		t.Fatalf("inspect after expiry: %+v", got)
	}
	c := must(t)(b.AcquireMode(ctx, key, "c", ttl, modeLeader("")))
	if c.Fence <= bg.Fence {
		t.Fatalf("fence %d not above %d", c.Fence, bg.Fence)
	}
}

// TestModeSpaces checks that a lock, a read-write lock, a semaphore and an
// election of one name are four things, out of reach of lock keys.
func TestModeSpaces(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	b := newModeBackend(t)
	key := uniqueKey(t)
	ttl := 10 * time.Second
	lock := must(t)(b.Acquire(ctx, key, "x", ttl))
	w := must(t)(b.AcquireMode(ctx, key, "y", ttl, modeWrite))
	p := must(t)(b.AcquireMode(ctx, key, "y", ttl, modePermit(1)))
	l := must(t)(b.AcquireMode(ctx, key, "y", ttl, modeLeader("v")))
	if !(lock.Fence < w.Fence && w.Fence < p.Fence && p.Fence < l.Fence) {
		t.Fatalf("fences not increasing: %d %d %d %d", lock.Fence, w.Fence, p.Fence, l.Fence)
	}
	for _, k := range []driver.Kind{driver.Read, driver.Permit, driver.Leader} {
		for _, sk := range redsyncLocker.ModeKeys(key, k) {
			_, err := b.Acquire(ctx, sk, "z", ttl)
			wantErr(t, err, distlock.ErrInvalidArgument)
		}
	}
	if err := b.Release(ctx, key, "x"); err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, b, key, modeWrite); got.Token != "y" {
		t.Fatalf("releasing the lock touched the read-write lock: %+v", got)
	}
	_, err := b.AcquireMode(ctx, key, "y", ttl, driver.Mode{Kind: 99})
	wantErr(t, err, distlock.ErrUnsupported)
}

func TestModeUnfenced(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	b := newModeBackend(t, redsyncLocker.WithoutFencing())
	key := uniqueKey(t)
	g := must(t)(b.AcquireMode(ctx, key, "a", time.Second, modeLeader("v")))
	if g.Fence != 0 {
		t.Fatalf("unfenced grant has fence %d", g.Fence)
	}
	if got := inspect(t, b, key, modeLeader("")); got.Token != "a" || got.Value != "v" {
		t.Fatalf("inspect: %+v", got)
	}
}

// TestModePool runs the scripts through go-redsync's redigo adaptor.
func TestModePool(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	pool, closePool := redigoPool(sharedAddr)
	t.Cleanup(func() { _ = closePool() })
	b, err := redsyncLocker.NewPoolBackend(pool)
	if err != nil {
		t.Fatal(err)
	}
	key := uniqueKey(t)
	must(t)(b.AcquireMode(ctx, key, "a", time.Second, modeLeader("v")))
	if got := inspect(t, b, key, modeLeader("")); got.Token != "a" || got.Value != "v" || got.Fence == 0 {
		t.Fatalf("inspect: %+v", got)
	}
	_, err = b.WatchMode(ctx, key, modeLeader(""), func() {})
	wantErr(t, err, distlock.ErrUnsupported)
}

func TestModeRedlockDeclaresNone(t *testing.T) {
	r, err := redsyncLocker.NewRedlock(redlockClients(startN(t, 3)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	c := r.Capabilities()
	if c.ReadWrite || c.Semaphore || c.Election {
		t.Fatalf("Redlock declares primitives: %+v", c)
	}
	if _, ok := any(r).(driver.Primitives); ok {
		t.Fatal("Redlock implements driver.Primitives")
	}
	c = newModeBackend(t).Capabilities()
	if !c.ReadWrite || !c.Semaphore || !c.Election {
		t.Fatalf("single node declares no primitives: %+v", c)
	}
}

// watchLeader watches key's election on b until t ends, and returns a
// function that fails t unless a change is heard within 5s.
func watchLeader(t *testing.T, b *redsyncLocker.Backend, key string) (heard func(after string)) {
	t.Helper()
	changed := make(chan struct{}, 1)
	stop, err := b.WatchMode(ctxTimeout(t, 10*time.Second), key, modeLeader(""), func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return func(after string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(5 * time.Second):
			t.Fatalf("no change heard within 5s of %s", after)
		}
	}
}

// TestModeWatch checks that WatchMode hears grants and releases made by
// another backend, and the revoker's announcement.
func TestModeWatch(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	watcher, other := newModeBackend(t), newModeBackend(t)
	key := uniqueKey(t)
	heard := watchLeader(t, watcher, key)
	// A second watch of the same key shares the subscription.
	stop2, err := watcher.WatchMode(ctx, key, modeLeader(""), func() {})
	if err != nil {
		t.Fatal(err)
	}
	stop2()
	must(t)(other.AcquireMode(ctx, key, "a", 10*time.Second, modeLeader("v1")))
	heard("a grant")
	must(t)(other.AcquireMode(ctx, key, "a", 10*time.Second, modeLeader("v2")))
	heard("a new value")
	if err := other.ReleaseMode(ctx, key, "a", modeLeader("")); err != nil {
		t.Fatal(err)
	}
	heard("a release")
	must(t)(other.AcquireMode(ctx, key, "b", 10*time.Second, modeLeader("")))
	heard("a grant")
	if err := revokeMode(ctx, []*distlocktest.RedisServer{{Addr: sharedAddr}}, key, driver.Leader); err != nil {
		t.Fatal(err)
	}
	heard("a revocation")
	if got := inspect(t, watcher, key, modeLeader("")); got.Holders != 0 {
		t.Fatalf("revoked election still has a leader: %+v", got)
	}
}

// TestModeCluster runs each kind on a Redis Cluster, for keys in many
// slots (and keys with hash tags): every script's keys share the key's
// slot.
func TestModeCluster(t *testing.T) {
	cl := distlocktest.StartRedisCluster(t, 3)
	ctx := ctxTimeout(t, 60*time.Second)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true})
	b := redsyncLocker.NewBackend(c, redsyncLocker.WithCloseClient())
	t.Cleanup(func() { _ = b.Close() })
	h := clusterHarness{c: cl}
	for i := range 20 {
		key := fmt.Sprintf("k%d", i)
		if i%4 == 0 {
			key = fmt.Sprintf("{user%d}:k", i)
		}
		slot := c.ClusterKeySlot(ctx, key).Val()
		for _, k := range []driver.Kind{driver.Write, driver.Permit, driver.Leader} {
			for _, sk := range redsyncLocker.ModeKeys(key, k, redsyncLocker.WithCluster()) {
				if s := c.ClusterKeySlot(ctx, sk).Val(); s != slot {
					t.Fatalf("%q of %q is in slot %d, the key in %d", sk, key, s, slot)
				}
			}
		}
		w := must(t)(b.AcquireMode(ctx, key, "w", 10*time.Second, modeWrite))
		_, err := b.AcquireMode(ctx, key, "r", 10*time.Second, modeRead)
		wantErr(t, err, distlock.ErrNotAcquired)
		p := must(t)(b.AcquireMode(ctx, key, "p", 10*time.Second, modePermit(1)))
		l := must(t)(b.AcquireMode(ctx, key, "l", 10*time.Second, modeLeader("v")))
		if w.Fence == 0 || w.Fence >= p.Fence || p.Fence >= l.Fence {
			t.Fatalf("%s: fences %d %d %d", key, w.Fence, p.Fence, l.Fence)
		}
		if err := h.RevokeMode(ctx, key, driver.Write); err != nil {
			t.Fatal(err)
		}
		must(t)(b.AcquireMode(ctx, key, "r", 10*time.Second, modeRead))
	}
	// Watching works over the cluster's pub/sub.
	heard := watchLeader(t, b, "k1")
	if err := b.ReleaseMode(ctx, "k1", "l", modeLeader("")); err != nil {
		t.Fatal(err)
	}
	heard("a release on the cluster")
}

// TestModeExclusion runs backends of their own (as processes would) on one
// read-write lock and one semaphore: never a writer beside anyone, never
// more permits than the limit.
func TestModeExclusion(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	key := uniqueKey(t)
	var readers, writers, permits atomic.Int32
	var grants atomic.Int32
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for g := range 8 {
		b := newModeBackend(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				tok := fmt.Sprintf("g%d-%d", g, i)
				m := modeRead
				if i%3 == 0 {
					m = modeWait
				}
				if _, err := b.AcquireMode(ctx, key, tok, 10*time.Second, m); err == nil {
					grants.Add(1)
					if m.Kind == driver.Write {
						if writers.Add(1) != 1 || readers.Load() != 0 {
							errs <- fmt.Errorf("writer beside %d readers, %d writers", readers.Load(), writers.Load())
							return
						}
						writers.Add(-1)
					} else {
						readers.Add(1)
						if writers.Load() != 0 {
							errs <- errors.New("reader beside a writer")
							return
						}
						readers.Add(-1)
					}
					if err := b.ReleaseMode(ctx, key, tok, m); err != nil {
						errs <- err
						return
					}
				} else if !errors.Is(err, distlock.ErrNotAcquired) {
					errs <- err
					return
				} else if m.Kind == driver.Write {
					_ = b.ReleaseMode(ctx, key, tok, m) // drop the mark
				}
				if _, err := b.AcquireMode(ctx, key, tok, 10*time.Second, modePermit(2)); err == nil {
					if permits.Add(1) > 2 {
						errs <- errors.New("3 permits of 2")
						return
					}
					permits.Add(-1)
					if err := b.ReleaseMode(ctx, key, tok, modePermit(2)); err != nil {
						errs <- err
						return
					}
				} else if !errors.Is(err, distlock.ErrNotAcquired) {
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
	if grants.Load() == 0 {
		t.Fatal("no read-write grant at all")
	}
}

// BenchmarkModeAcquireRelease measures one grant and its release (two
// scripts, two round trips) per kind, beside the plain lock's.
func BenchmarkModeAcquireRelease(b *testing.B) {
	be := redsyncLocker.NewBackend(newClient(b, sharedAddr))
	b.Cleanup(func() { _ = be.Close() })
	ctx := context.Background()
	key := uniqueKey(b)
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			if _, err := be.Acquire(ctx, key, "t", time.Minute); err != nil {
				b.Fatal(err)
			}
			if err := be.Release(ctx, key, "t"); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, m := range []driver.Mode{modeRead, modeWrite, modePermit(3), modeLeader("v")} {
		b.Run(m.Kind.String(), func(b *testing.B) {
			for b.Loop() {
				if _, err := be.AcquireMode(ctx, key, "t", time.Minute, m); err != nil {
					b.Fatal(err)
				}
				if err := be.ReleaseMode(ctx, key, "t", m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
