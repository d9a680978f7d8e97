package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
)

type checkOutput struct {
	OK       bool   `json:"ok"`
	Backend  string `json:"backend"`
	Passed   int    `json:"passed"`
	Failed   int    `json:"failed"`
	Skipped  int    `json:"skipped"`
	Warnings []string
	Results  []struct {
		Name, Status, Message string
	} `json:"results"`
}

func TestCheckMemory(t *testing.T) {
	t.Parallel()
	r := cli(t, nil, "check", "--url", "memory://check", "--json")
	var out checkOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("check --json: %v\n%s", err, r)
	}
	if len(out.Results) == 0 || out.Passed == 0 {
		t.Fatalf("no checks ran:\n%s", r)
	}
	for _, res := range out.Results {
		if res.Status == "fail" {
			t.Errorf("%s: %s", res.Name, res.Message)
		}
	}
	wantCode(t, r, exitOK)

	r = cli(t, nil, "check", "--url", "memory://check2")
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "PASS") || !strings.Contains(r.stdout, "passed") {
		t.Errorf("check table:\n%s", r.stdout)
	}
}

// TestCheckLive runs `distlock check` against every live backend: the
// command must run the suite end to end and report consistently. (Whether
// a backend passes is its own tests' business; failures are logged.)
func TestCheckLive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		r := cli(t, nil, "check", "--url", url, "--json")
		var out checkOutput
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("check --json: %v\n%s", err, r)
		}
		if len(out.Results) == 0 || out.Backend != caps.Name {
			t.Fatalf("check ran nothing:\n%s", r)
		}
		if (r.code == exitCheckFailed) != (out.Failed > 0) || (r.code != exitOK && r.code != exitCheckFailed) {
			t.Fatalf("exit code does not match the results:\n%s", r)
		}
		for _, res := range out.Results {
			if res.Status == "fail" {
				t.Logf("%s fails %s: %s", b.name, res.Name, res.Message)
			}
		}
		for _, w := range out.Warnings {
			// The test servers run without persistence: that warning is right.
			if strings.Contains(w, "maxmemory") || strings.Contains(w, "pooler") || strings.Contains(w, "standby") || strings.Contains(w, "cannot") {
				t.Errorf("warning for a plain test server: %q", w)
			}
		}
	})
}

func TestCheckRedisWarnings(t *testing.T) {
	if !compiledIn("redis") {
		t.Skip("redis backend not compiled in")
	}
	t.Parallel()
	evicting := distlocktest.StartRedis(t, distlocktest.RedisOptions{Args: []string{"--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"}})
	safe := distlocktest.StartRedis(t, distlocktest.RedisOptions{Args: []string{"--maxmemory", "64mb", "--maxmemory-policy", "noeviction", "--appendonly", "yes"}})
	for _, c := range []struct {
		url  string
		want []string
	}{
		{"redis://" + evicting.Addr, []string{"maxmemory-policy is volatile-lru", "persistence is off"}},
		{"redis://" + safe.Addr, nil},
		{"redlock://" + evicting.Addr + "," + safe.Addr, []string{"redis at " + evicting.Addr + ": maxmemory-policy is volatile-lru"}},
	} {
		r := cli(t, nil, "check", "--url", c.url, "--inspect-only", "--json")
		wantCode(t, r, exitOK)
		var out checkOutput
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("%v\n%s", err, r)
		}
		all := strings.Join(out.Warnings, "\n")
		if len(c.want) == 0 && len(out.Warnings) > 0 {
			t.Errorf("%s: unexpected warnings %q", c.url, out.Warnings)
		}
		for _, w := range c.want {
			if !strings.Contains(all, w) {
				t.Errorf("%s: warnings lack %q: %q", c.url, w, out.Warnings)
			}
		}
	}
	wantCode(t, cli(t, nil, "check", "--url", "redis://"+evicting.Addr, "--inspect-only", "--strict"), exitCheckFailed)
}
