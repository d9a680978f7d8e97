package conformance_test

import (
	"context"
	"fmt"
	"testing"

	_ "github.com/distlock/distlock/backends/memory" // memory://
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
)

// The suite outside go test, as `distlock check` runs it: here against the
// in-process memory backend (its managers share the store named in the
// URL), which has no server to revoke locks on or to stop.
func ExampleCheck() {
	results, err := conformance.Check(context.Background(), conformance.URL("memory://example-check"))
	if err != nil {
		fmt.Println(err)
		return
	}
	count := map[string]int{}
	for _, r := range results {
		count[r.Status]++
	}
	fmt.Println("failed:", count["fail"])
	// Output: failed: 0
}

// In a _test.go file of your module: the whole suite on a real Redis that
// the kit finds or starts, with the outage cases through a proxy.
func ExampleProxy() {
	_ = func(t *testing.T) {
		url, stopper := conformance.Proxy(t, distlocktest.Redis(t))
		conformance.Run(t, conformance.URL(url, conformance.WithStopper(stopper)))
	}
}
