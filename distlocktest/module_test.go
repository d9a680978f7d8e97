package distlocktest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// repoRoot returns the root of this module (the directory of go.mod).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod above the kit: %v", err)
	}
	return root
}

func goTool(t *testing.T) string {
	t.Helper()
	g, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	return g
}

// goEnv is the environment for go commands the tests run: offline (the
// module cache has what the repository needs), no workspace.
func goEnv() []string {
	return append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOSUMDB=off", "GOWORK=off")
}

// TestUserModule is what a user does: a module of its own, outside this
// repository, requires distlock and runs the whole conformance suite
// against a Redis, an etcd and a PostgreSQL from the kit, in three lines
// each (testdata/usermodule/locks_test.go, shown in docs/testing.md). The
// module replaces distlock with this checkout and builds offline.
func TestUserModule(t *testing.T) {
	goBin := goTool(t)
	root := repoRoot(t)
	dir := t.TempDir()
	src, err := os.ReadFile(filepath.Join("testdata", "usermodule", "locks_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	// Each test function is at most 10 lines, as promised.
	for _, fn := range regexp.MustCompile(`(?ms)^func Test.*?^}$`).FindAllString(string(src), -1) {
		if n := strings.Count(fn, "\n") + 1; n > 10 {
			t.Fatalf("a user's test takes %d lines, more than 10:\n%s", n, fn)
		}
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(readFile(t, filepath.Join(root, "go.mod")))
	if goVersion == nil {
		t.Fatal("no go directive in go.mod")
	}
	gomod := "module example.com/locks\n\ngo " + goVersion[1] + "\n\n" +
		"require github.com/distlock/distlock v0.0.0-00010101000000-000000000000\n\n" +
		"replace github.com/distlock/distlock => " + root + "\n"
	write(t, filepath.Join(dir, "go.mod"), gomod)
	write(t, filepath.Join(dir, "go.sum"), readFile(t, filepath.Join(root, "go.sum")))
	write(t, filepath.Join(dir, "locks_test.go"), string(src))

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "test", "-count=1", "-timeout=10m", "-v", ".")
	cmd.Dir = dir
	cmd.Env = goEnv()
	out, err := cmd.CombinedOutput()
	summary := topLevel(string(out))
	t.Logf("go test in a module outside the repository:\n%s", summary)
	if err != nil {
		t.Fatalf("go test: %v\n%s", err, tailLines(string(out), 80))
	}
	for _, name := range []string{"TestRedis", "TestEtcd", "TestPostgres"} {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass (skipped?)", name)
		}
	}
	// Every case runs that the backend's capabilities allow: the harness
	// has a Revoker and a Stopper.
	if strings.Contains(string(out), "harness does not implement") {
		t.Errorf("cases were skipped for want of a harness interface:\n%s", grepLines(string(out), "harness does not implement", 20))
	}
	t.Logf("skipped for the backend's declared capabilities:\n%s", grepLines(string(out), "--- SKIP", 20))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// topLevel keeps the top-level results and the final lines of go test -v.
func topLevel(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "FAIL") || l == "PASS" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func grepLines(out, sub string, n int) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, sub) && len(keep) < n {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func tailLines(out string, n int) string {
	ls := strings.Split(out, "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}
