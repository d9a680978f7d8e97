package redsync_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
)

// newTransferBackend returns a single-node backend on the shared server
// with the test's own fence counter (so that the test can watch it), and
// the counter's name.
func newTransferBackend(t *testing.T, fenced bool) (*redsyncLocker.Backend, string) {
	t.Helper()
	fenceKey := "test:fence:" + t.Name()
	opts := []redsyncLocker.Option{redsyncLocker.WithFenceKey(fenceKey)}
	if !fenced {
		opts = append(opts, redsyncLocker.WithoutFencing())
	}
	b := redsyncLocker.NewBackend(newClient(t, sharedAddr), opts...)
	t.Cleanup(func() { _ = b.Close() })
	return b, fenceKey
}

func bothFencings(t *testing.T, f func(t *testing.T, fenced bool)) {
	t.Run("Fenced", func(t *testing.T) { f(t, true) })
	t.Run("WithoutFencing", func(t *testing.T) { f(t, false) })
}

// TestTransfer: the holder hands the key to another token in one step: the
// new token holds it with the new TTL and (fenced) a greater fence; the old
// token can neither extend nor release it any more; the key never
// disappears.
func TestTransfer(t *testing.T) {
	bothFencings(t, func(t *testing.T, fenced bool) {
		ctx := ctxTimeout(t, 20*time.Second)
		b, _ := newTransferBackend(t, fenced)
		other, _ := newTransferBackend(t, fenced) // like another process: cross-instance
		raw := newClient(t, sharedAddr)
		key := uniqueKey(t)

		g0, err := b.Acquire(ctx, key, "from", 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		g, err := b.Transfer(ctx, key, "from", "to", 5*time.Second)
		if err != nil {
			t.Fatalf("transfer by the holder: %v", err)
		}
		if g.TTL != 5*time.Second {
			t.Fatalf("transfer grant TTL %v, want 5s", g.TTL)
		}
		if fenced && g.Fence <= g0.Fence {
			t.Fatalf("transfer fence %d not above the old grant's %d", g.Fence, g0.Fence)
		}
		if !fenced && (g.Fence != 0 || g0.Fence != 0) {
			t.Fatalf("unfenced grants carry fences %d, %d", g0.Fence, g.Fence)
		}
		if ttl := raw.PTTL(ctx, key).Val(); ttl < 4*time.Second || ttl > 5*time.Second {
			t.Fatalf("TTL after transfer %v, want about 5s", ttl)
		}
		if v := raw.Get(ctx, key).Val(); fenced && !strings.HasSuffix(v, ":to") || !fenced && v != "to" {
			t.Fatalf("value after transfer %q, want to's", v)
		}

		if _, err := b.Extend(ctx, key, "from", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("extend by the old token: got %v, want ErrNotHeld", err)
		}
		if err := other.Release(ctx, key, "from"); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("release by the old token: got %v, want ErrNotHeld", err)
		}
		if _, err := b.Transfer(ctx, key, "from", "third", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("second transfer by the old token: got %v, want ErrNotHeld", err)
		}
		if _, err := other.Acquire(ctx, key, "third", time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
			t.Fatalf("acquire by a third token: got %v, want ErrNotAcquired", err)
		}

		// The new holder's grant behaves like any other: extend and
		// re-acquire keep its fence, from another instance too.
		ge, err := other.Extend(ctx, key, "to", 5*time.Second)
		if err != nil || ge.Fence != g.Fence {
			t.Fatalf("extend by the new token: grant %+v, err %v; want fence %d", ge, err, g.Fence)
		}
		ga, err := b.Acquire(ctx, key, "to", 5*time.Second)
		if err != nil || ga.Fence != g.Fence {
			t.Fatalf("re-acquire by the new token: grant %+v, err %v; want fence %d", ga, err, g.Fence)
		}
		// A transfer onwards gives a fence greater again.
		g2, err := other.Transfer(ctx, key, "to", "next", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if fenced && g2.Fence <= g.Fence {
			t.Fatalf("second transfer fence %d not above %d", g2.Fence, g.Fence)
		}
		if err := b.Release(ctx, key, "to"); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("release by the previous token: got %v, want ErrNotHeld", err)
		}
		if err := b.Release(ctx, key, "next"); err != nil {
			t.Fatalf("release by the new token: %v", err)
		}
		if n := raw.Exists(ctx, key).Val(); n != 0 {
			t.Fatal("key still there after the release")
		}
	})
}

// TestTransferNotHeld: a transfer by a token that does not hold the key
// (another holder's key, an absent key, an expired grant) returns
// ErrNotHeld and changes nothing: not the value, not the TTL, not the
// fence counter.
func TestTransferNotHeld(t *testing.T) {
	bothFencings(t, func(t *testing.T, fenced bool) {
		ctx := ctxTimeout(t, 20*time.Second)
		b, fenceKey := newTransferBackend(t, fenced)
		raw := newClient(t, sharedAddr)
		key := uniqueKey(t)

		if _, err := b.Acquire(ctx, key, "holder", 3*time.Second); err != nil {
			t.Fatal(err)
		}
		value, counter := raw.Get(ctx, key).Val(), raw.Get(ctx, fenceKey).Val()
		time.Sleep(20 * time.Millisecond) // a TTL reset would show
		ttlBefore := raw.PTTL(ctx, key).Val()
		if _, err := b.Transfer(ctx, key, "not-the-holder", "to", 10*time.Second); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("transfer by a non-holder: got %v, want ErrNotHeld", err)
		}
		if v := raw.Get(ctx, key).Val(); v != value {
			t.Fatalf("value changed from %q to %q", value, v)
		}
		if ttl := raw.PTTL(ctx, key).Val(); ttl > ttlBefore {
			t.Fatalf("TTL grew from %v to %v", ttlBefore, ttl)
		}
		if c := raw.Get(ctx, fenceKey).Val(); c != counter {
			t.Fatalf("fence counter moved from %q to %q", counter, c)
		}
		if _, err := b.Extend(ctx, key, "holder", 3*time.Second); err != nil {
			t.Fatalf("the holder lost the key: %v", err)
		}

		// Absent key: nothing is created.
		absent := key + ":absent"
		if _, err := b.Transfer(ctx, absent, "from", "to", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("transfer of an absent key: got %v, want ErrNotHeld", err)
		}
		if raw.Exists(ctx, absent).Val() != 0 {
			t.Fatal("transfer of an absent key created it")
		}

		// Expired grant: nothing is re-created.
		expired := key + ":expired"
		if _, err := b.Acquire(ctx, expired, "from", 30*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "lock expiry", func() error {
			if raw.Exists(ctx, expired).Val() != 0 {
				return errors.New("key still there")
			}
			return nil
		})
		counter = raw.Get(ctx, fenceKey).Val()
		if _, err := b.Transfer(ctx, expired, "from", "to", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("transfer of an expired grant: got %v, want ErrNotHeld", err)
		}
		if raw.Exists(ctx, expired).Val() != 0 {
			t.Fatal("transfer of an expired grant re-created the key")
		}
		if c := raw.Get(ctx, fenceKey).Val(); c != counter {
			t.Fatalf("fence counter moved from %q to %q", counter, c)
		}
	})
}
