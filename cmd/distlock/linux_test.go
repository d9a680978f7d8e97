//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/distlock/distlock/internal/testwait"
)

// TestRunParentDeath: if distlock is killed, renewals stop, so CMD must not
// run on unprotected: the kernel sends it SIGTERM.
func TestRunParentDeath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	argv, env := child("hold", dir)
	p := start(t, env, append([]string{"run", "--url", "memory://", "--key", "k", "--"}, argv...)...)
	testwait.For(t, 30*time.Second, "CMD to start", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 30*time.Second)
	testwait.For(t, 30*time.Second, "CMD to get SIGTERM", func() bool {
		data, _ := os.ReadFile(filepath.Join(dir, "signals"))
		return strings.Contains(string(data), "term")
	})
}
