// Package testwait waits in tests for a condition with a deadline, instead
// of sleeping and hoping.
package testwait

import (
	"testing"
	"time"
)

// For polls cond until it holds, failing the test (naming what it waited
// for) once d has passed. It polls after 1 ms at first, backing off to
// 20 ms, so a quick condition costs little and a slow one little CPU.
func For(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}
