// Package testserver starts real servers for distlock's tests: an explicit
// URL from the environment first, then a local binary on PATH started on a
// free loopback port in a temp dir, then an embedded server where one exists
// (etcd), then testcontainers-go where a Docker engine answers. When none is
// available the test fails under CI=true and is skipped elsewhere, with a
// line saying how to install what is missing.
package testserver

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Unavailable ends the test when a server cannot be had: a failure under
// CI=true (CI must install what the tests need), a skip elsewhere.
func Unavailable(t testing.TB, what, howto string) {
	t.Helper()
	msg := fmt.Sprintf("%s not available: %s", what, howto)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
