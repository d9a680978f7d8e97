package redsync

import (
	"testing"
	"time"

	rs "github.com/go-redsync/redsync/v4"
)

// TestRedsyncOptionsTranslate pins how go-redsync options are read back
// from a Mutex: a redsync upgrade that renames its fields fails here.
func TestRedsyncOptionsTranslate(t *testing.T) {
	s := readMutexSettings([]rs.Option{
		rs.WithTries(3), rs.WithRetryDelay(100 * time.Millisecond),
		rs.WithDriftFactor(0.02), rs.WithTimeoutFactor(0.1),
	})
	if s.tries != 3 || s.delay == nil || s.delay(1) != 100*time.Millisecond {
		t.Fatalf("tries/delay not read: %+v", s)
	}
	if s.driftFactor != 0.02 || s.timeoutFactor != 0.1 {
		t.Fatalf("factors not read: %+v", s)
	}
	if s.genValue != nil {
		t.Fatal("redsync's default value generator taken for the caller's")
	}
	s = readMutexSettings([]rs.Option{rs.WithGenValueFunc(func() (string, error) { return "v", nil })})
	if s.genValue == nil {
		t.Fatal("WithGenValueFunc not read")
	}
	if d := s.delay(1); d < 50*time.Millisecond || d > 250*time.Millisecond {
		t.Fatalf("default delay %v outside redsync's 50-250ms", d)
	}

	cfg := newConfig([]Option{WithRedsyncOptions(rs.WithTries(3), rs.WithRetryDelay(100*time.Millisecond))})
	if n := len(cfg.managerOptions()); n != 1 {
		t.Fatalf("%d manager options, want 1 (the retry)", n)
	}
	r := redsyncRetry{tries: 3, delay: func(int) time.Duration { return time.Millisecond }}
	for attempt, want := range []bool{true, true, false} {
		if _, ok := r.NextBackoff(attempt+1, 0); ok != want {
			t.Fatalf("attempt %d: retry=%v, want %v", attempt+1, ok, want)
		}
	}
}

func TestClusterSlots(t *testing.T) {
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16 check value %#x, want 0x31c3", got)
	}
	if got := keySlot("foo"); got != 12182 { // CLUSTER KEYSLOT foo
		t.Fatalf("slot of foo = %d, want 12182", got)
	}
	if keySlot("{user1000}.following") != keySlot("user1000") {
		t.Fatal("hash tag ignored")
	}
	if keySlot("foo{}{bar}") != int(crc16("foo{}{bar}"))%numSlots {
		t.Fatal("empty hash tag must hash the whole key")
	}
	n := &node{cluster: true, fenceKey: DefaultFenceKey}
	for _, k := range []string{"a", "seat:42", "x}y", "{tag}z", "\x00\xff"} {
		if fk := n.fenceKeyFor(k); keySlot(fk) != keySlot(k) {
			t.Fatalf("fence key %q of %q is in slot %d, key in %d", fk, k, keySlot(fk), keySlot(k))
		}
	}
}
