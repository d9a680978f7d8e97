package testserver

import (
	"net"
	"testing"
	"time"
)

// The testcontainers path runs only where a Docker engine answers; this
// project's CI has none, so there the test reports a skip.
func TestContainerPath(t *testing.T) {
	if !DockerAvailable() {
		t.Skip("no Docker engine answers: the testcontainers fallback is not exercised on this machine")
	}
	addr, err := Container(t.Context(), t, "redis:7-alpine", "6379/tcp", nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
