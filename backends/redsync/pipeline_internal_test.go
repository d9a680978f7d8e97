package redsync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/internal/testserver"
	"github.com/redis/go-redis/v9"
)

// gateHook holds commands sent alone on keys starting with "gate:" until
// open is closed, and counts the pipelines and their sizes.
type gateHook struct {
	open      chan struct{}
	held      atomic.Int32 // commands waiting at the gate
	pipelines atomic.Int32
	biggest   atomic.Int32
	evals     atomic.Int32 // EVAL (not EVALSHA) commands in pipelines
}

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 3 {
			if k, _ := args[3].(string); strings.HasPrefix(k, "gate:") {
				h.held.Add(1)
				<-h.open
			}
		}
		return next(ctx, cmd)
	}
}

func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		for _, c := range cmds {
			if c.Name() == "eval" {
				h.evals.Add(1)
			}
		}
		for n := int32(len(cmds)); ; {
			b := h.biggest.Load()
			if n <= b || h.biggest.CompareAndSwap(b, n) {
				break
			}
		}
		return next(ctx, cmds)
	}
}

// gatedBackend returns a fenced backend whose client has a gateHook, and
// a raw client to the same server.
func gatedBackend(t *testing.T) (*Backend, *gateHook, *redis.Client) {
	t.Helper()
	opts, err := redis.ParseURL(testserver.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	c := redis.NewClient(opts)
	h := &gateHook{open: make(chan struct{})}
	c.AddHook(h)
	raw := redis.NewClient(opts)
	t.Cleanup(func() { _ = raw.Close() })
	b := NewBackend(c, WithCloseClient(), WithFenceKey("test:fence:"+t.Name()))
	t.Cleanup(func() { _ = b.Close() })
	return b, h, raw
}

// fillLanes starts maxInFlight extends (of keys nobody holds) that wait at
// the gate, so that the batcher queues what comes next. It returns a func
// that opens the gate and waits for them.
func fillLanes(t *testing.T, b *Backend, h *gateHook, prefix string) func() {
	t.Helper()
	var wg sync.WaitGroup
	for i := range maxInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Extend(context.Background(), fmt.Sprintf("gate:%s:%d", prefix, i), "tok", time.Minute)
			if !errors.Is(err, distlock.ErrNotHeld) {
				t.Errorf("gated extend: got %v, want ErrNotHeld", err)
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.held.Load() < maxInFlight {
		if time.Now().After(deadline) {
			t.Fatal("the gated commands never reached the gate")
		}
		time.Sleep(time.Millisecond)
	}
	var once sync.Once
	return func() {
		once.Do(func() { close(h.open) })
		wg.Wait()
	}
}

// TestBatcherPipelines: commands that find every lane busy leave together
// as a pipeline when one frees, and each gets its own answer — including
// after the server lost its scripts.
func TestBatcherPipelines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, h, raw := gatedBackend(t)
	base := fmt.Sprintf("test:batch:%d:", time.Now().UnixNano())
	openGate := fillLanes(t, b, h, base)
	defer openGate()
	// The queued acquires' EVALSHA meets NOSCRIPT (the gated extends load
	// only their own script).
	if err := raw.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	const n = 12
	fences := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var g distlock.Grant
			g, errs[i] = b.Acquire(ctx, fmt.Sprint(base, i), "tok", time.Minute)
			fences[i] = g.Fence
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.n.batch.mu.Lock()
		queued := len(b.n.batch.queue)
		b.n.batch.mu.Unlock()
		if queued == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d commands queued", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
	openGate()
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("queued acquire %d: %v", i, errs[i])
		}
		if fences[i] == 0 || seen[fences[i]] {
			t.Fatalf("queued acquire %d: fence %d (zero or repeated)", i, fences[i])
		}
		seen[fences[i]] = true
		if v := raw.Get(ctx, fmt.Sprint(base, i)).Val(); v != fmt.Sprintf("%d:tok", fences[i]) {
			t.Fatalf("key %d holds %q, want fence %d and the token", i, v, fences[i])
		}
	}
	if h.pipelines.Load() == 0 || h.biggest.Load() < 2 {
		t.Fatalf("%d pipelines, the biggest of %d commands: the queued commands were not batched", h.pipelines.Load(), h.biggest.Load())
	}
	if h.evals.Load() == 0 {
		t.Fatal("no pipeline resent its scripts after NOSCRIPT")
	}

	// Every kind of command, many goroutines at once.
	var failed atomic.Int32
	for g := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprint(base, "g", g)
			for range 20 {
				if _, err := b.Acquire(ctx, key, "a", time.Minute); err != nil {
					t.Errorf("acquire: %v", err)
					failed.Add(1)
					return
				}
				if _, err := b.Extend(ctx, key, "a", time.Minute); err != nil {
					t.Errorf("extend: %v", err)
				}
				if _, err := b.Transfer(ctx, key, "a", "b", time.Minute); err != nil {
					t.Errorf("transfer: %v", err)
				}
				if err := b.Release(ctx, key, "a"); !errors.Is(err, distlock.ErrNotHeld) {
					t.Errorf("release by the old token: %v", err)
				}
				if err := b.Release(ctx, key, "b"); err != nil {
					t.Errorf("release: %v", err)
				}
			}
		}()
	}
	wg.Wait()
}

// TestBatcherCallerGivesUp: a queued command whose context ends returns at
// once with ErrUnavailable and the context's error, and is not sent.
func TestBatcherCallerGivesUp(t *testing.T) {
	b, h, raw := gatedBackend(t)
	key := fmt.Sprintf("test:giveup:%d", time.Now().UnixNano())
	openGate := fillLanes(t, b, h, key)
	defer openGate()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := b.Acquire(ctx, key, "late", time.Minute)
	if !errors.Is(err, distlock.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("returned %v after a 50ms deadline", d)
	}
	openGate()
	// Whatever comes next flushes the queue: the abandoned command is
	// dropped, not sent.
	if _, err := b.Acquire(context.Background(), key+":next", "tok", time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := raw.Exists(context.Background(), key).Val(); n != 0 {
		t.Fatal("the abandoned acquire was sent")
	}
}

// TestBatcherCloseSendsQueued: Close serves commands queued behind
// requests still in flight rather than stranding them.
func TestBatcherCloseSendsQueued(t *testing.T) {
	b, h, _ := gatedBackend(t)
	key := fmt.Sprintf("test:closeq:%d", time.Now().UnixNano())
	openGate := fillLanes(t, b, h, key)
	defer openGate()
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(context.Background(), key, "queued", time.Minute)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.n.batch.mu.Lock()
		queued := len(b.n.batch.queue)
		b.n.batch.mu.Unlock()
		if queued == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the command never queued")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan struct{})
	go func() {
		b.n.batch.close()
		close(closed)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("queued acquire: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued command was stranded by close")
	}
	<-closed
	openGate()
}

// TestUndoTransferExpired: undoing a transfer after the old grant's expiry
// deletes the key, and announces the release if someone waited for it.
func TestUndoTransferExpired(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opts, err := redis.ParseURL(testserver.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	n := newNode(c, false, newConfig(nil))
	defer n.close()
	key := fmt.Sprintf("test:undo:%d", time.Now().UnixNano())

	// Before the old expiry: the old value comes back, the mark kept.
	c.Set(ctx, key, "7w:to", time.Minute)
	if r, err := n.undoTransfer(ctx, key, "to", "7", "5:from", time.Now().Add(time.Hour).UnixMilli()); err != nil || r != 1 {
		t.Fatalf("undo: %d, %v", r, err)
	}
	if v, ttl := c.Get(ctx, key).Val(), c.PTTL(ctx, key).Val(); v != "5w:from" || ttl < 50*time.Minute {
		t.Fatalf("after the undo: %q, TTL %v; want 5w:from and about an hour", v, ttl)
	}
	// Not what the round wrote (another nonce): left alone.
	if r, _ := n.undoTransfer(ctx, key, "to", "8", "5:from", time.Now().Add(time.Hour).UnixMilli()); r != 0 {
		t.Fatal("undo of another round's value")
	}

	// After it: deleted, and a waiter hears of it.
	ps := c.Subscribe(ctx, n.channel(key))
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	c.Set(ctx, key, "7w:to", time.Minute)
	if r, err := n.undoTransfer(ctx, key, "to", "7", "5:from", time.Now().Add(-time.Second).UnixMilli()); err != nil || r != 1 {
		t.Fatalf("undo after expiry: %d, %v", r, err)
	}
	if c.Exists(ctx, key).Val() != 0 {
		t.Fatal("the key outlived its old expiry")
	}
	mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
	defer mcancel()
	if _, err := ps.ReceiveMessage(mctx); err != nil {
		t.Fatalf("no release announced: %v", err)
	}
}
