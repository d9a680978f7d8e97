package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock/driver"
)

type demoOutput struct {
	OK      bool          `json:"ok"`
	Engine  string        `json:"engine"`
	Backend string        `json:"backend"`
	Phases  []phaseResult `json:"phases"`
}

func checkDemo(t *testing.T, r result, seats int) demoOutput {
	t.Helper()
	wantCode(t, r, 0)
	var out demoOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("demo --json: %v\n%s", err, r)
	}
	if len(out.Phases) != 2 {
		t.Fatalf("want 2 phases, got %+v", out.Phases)
	}
	locked := out.Phases[1]
	if !out.OK || locked.DoubleBookings != 0 || locked.Bookings != seats || locked.SeatsBooked != seats || locked.FenceViolations != 0 || locked.Errors != 0 {
		t.Fatalf("with the lock: %+v\n%s", locked, r)
	}
	// Without the lock every worker books a seat it saw free, so some
	// seats may be sold several times and others not at all.
	if un := out.Phases[0]; un.SeatsBooked < 1 || un.Bookings != un.SeatsBooked+un.DoubleBookings || int64(un.Bookings) > un.Attempts {
		t.Fatalf("without the lock: %+v", un)
	}
	return out
}

// TestDemo runs the README's main command, shortened, on the default
// embedded engine.
func TestDemo(t *testing.T) {
	t.Parallel()
	r := cli(t, nil, "demo", "--workers", "12", "--seats", "4", "--json")
	out := checkDemo(t, r, 4)
	if compiledIn("etcd") && out.Backend != "etcd" {
		t.Errorf("the default engine is %s (%s), want embedded etcd", out.Backend, out.Engine)
	}
	if !strings.Contains(r.stderr, "seats booked") {
		t.Errorf("no progress on stderr:\n%s", r.stderr)
	}
	if r.elapsed > 30*time.Second {
		t.Errorf("the demo took %v", r.elapsed)
	}

	// The table.
	r = cli(t, nil, "demo", "--url", "memory://demo-table", "--workers", "8", "--seats", "3", "--quiet")
	wantCode(t, r, 0)
	for _, want := range []string{"double-booked", "without lock", "with lock", "each of the 3 seats was booked exactly once"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r.stderr != "" {
		t.Errorf("--quiet printed progress:\n%s", r.stderr)
	}
}

// TestDemoLive runs the demo against every live backend with --url.
func TestDemoLive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, _ driver.Capabilities) {
		r := cli(t, nil, "demo", "--url", url, "--workers", "8", "--seats", "3", "--json", "--quiet")
		checkDemo(t, r, 3)
	})
}
