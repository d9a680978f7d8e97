package distlock_test

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/distlock/distlock"
	_ "github.com/distlock/distlock/backends/etcd" // etcd:// for the etcd rows
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/distlocktest"
)

// What a held lock costs: a plain Acquire (the caller keeps the token), a
// Lock handle, and a Lock handle made WithAutoRenew, on the memory backend
// and on Redis (the redis rows need a redis-server, see distlocktest). Each operation takes one more key and keeps it, and every
// heldBatch operations the locks are released with the timer stopped:
// ns/op, B/op and allocs/op (-benchmem) are what taking one lock costs.
// Besides, on a fresh Manager and store, it holds heldBatch locks and
// reports what stays allocated while they are held (retained-B/lock: live
// heap, map growth included, plus goroutine stacks, after a GC) and
// goroutines/lock.
//
//	go test -run '^$' -bench 'HeldLock/memory' -benchtime 20000x -count 3 -benchmem .
//	go test -run '^$' -bench 'HeldLock/redis' -benchtime 8192x -count 3 -benchmem .
//	go test -run '^$' -bench 'HeldLock/etcd' -benchtime 4096x -benchmem .
func BenchmarkHeldLock(b *testing.B) {
	const ttl = time.Minute // long enough that no renewal runs while measuring
	rows := []struct {
		name string
		hold func(ctx context.Context, m *distlock.Manager, key string) (held, error)
	}{
		{"Acquire", func(ctx context.Context, m *distlock.Manager, key string) (held, error) {
			tok, err := m.Acquire(ctx, key, ttl)
			return held{token: tok}, err
		}},
		{"Lock", func(ctx context.Context, m *distlock.Manager, key string) (held, error) {
			l, err := m.Lock(ctx, key, ttl)
			return held{lock: l}, err
		}},
		{"LockAutoRenew", func(ctx context.Context, m *distlock.Manager, key string) (held, error) {
			l, err := m.Lock(ctx, key, ttl, distlock.WithAutoRenew())
			return held{lock: l}, err
		}},
	}
	const heldBatch = 4096
	keys := make([]string, heldBatch)
	for i := range keys {
		keys[i] = "held:" + strconv.Itoa(i)
	}
	backends := []struct {
		name string
		open func(b *testing.B) func() *distlock.Manager
	}{
		{"memory", func(*testing.B) func() *distlock.Manager {
			return func() *distlock.Manager { return memory.NewManager() }
		}},
		{"etcd", func(b *testing.B) func() *distlock.Manager { return opener(b, distlocktest.Etcd(b)) }},
		{"redis", func(b *testing.B) func() *distlock.Manager { return opener(b, distlocktest.Redis(b)) }},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			newManager := be.open(b)
			for _, row := range rows {
				b.Run(row.name, func(b *testing.B) { benchHeld(b, newManager, keys, row.hold) })
			}
		})
	}
}

// opener returns a function that opens a new Manager on url.
func opener(b *testing.B, url string) func() *distlock.Manager {
	return func() *distlock.Manager {
		m, err := distlock.Open(context.Background(), url)
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
}

// benchHeld is one row of BenchmarkHeldLock.
func benchHeld(b *testing.B, newManager func() *distlock.Manager, keys []string, hold func(context.Context, *distlock.Manager, string) (held, error)) {
	heldBatch := len(keys)
	ctx := context.Background()
	m := newManager()
	defer m.Close()
	hs := make([]held, 0, heldBatch)
	for i := 0; i < b.N; i++ {
		h, err := hold(ctx, m, keys[len(hs)])
		if err != nil {
			b.Fatal(err)
		}
		hs = append(hs, h)
		if len(hs) == heldBatch || i == b.N-1 {
			b.StopTimer()
			releaseAll(b, m, keys, hs)
			hs = hs[:0]
			b.StartTimer()
		}
	}
	b.StopTimer()

	// What heldBatch held locks retain, on a fresh Manager warmed up by
	// one lock (connections, buffers).
	m2 := newManager()
	defer m2.Close()
	h, err := hold(ctx, m2, keys[0])
	if err != nil {
		b.Fatal(err)
	}
	releaseAll(b, m2, keys, []held{h})
	var ms runtime.MemStats
	measure := func() (mem int64, goroutines int) {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc + ms.StackInuse), runtime.NumGoroutine()
	}
	mem0, g0 := measure()
	for _, key := range keys {
		h, err := hold(ctx, m2, key)
		if err != nil {
			b.Fatal(err)
		}
		hs = append(hs, h)
	}
	mem1, g1 := measure()
	b.ReportMetric(float64(mem1-mem0)/float64(heldBatch), "retained-B/lock")
	b.ReportMetric(float64(g1-g0)/float64(heldBatch), "goroutines/lock")
	releaseAll(b, m2, keys, hs)
}

// held is one lock a benchmark holds: a token, or a handle.
type held struct {
	token string
	lock  *distlock.Lock
}

// releaseAll releases hs, the locks of keys[:len(hs)].
func releaseAll(b *testing.B, m *distlock.Manager, keys []string, hs []held) {
	ctx := context.Background()
	for i, h := range hs {
		var err error
		if h.lock != nil {
			err = h.lock.Release(ctx)
		} else {
			err = m.Release(ctx, keys[i], h.token)
		}
		if err != nil {
			b.Fatal(err)
		}
		hs[i] = held{}
	}
}
