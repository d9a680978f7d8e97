package testserver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// DockerAvailable reports whether a Docker engine answers on DOCKER_HOST (a
// unix socket) or /var/run/docker.sock. It is the runtime check in front of
// the testcontainers path, the last resort of every server starter: machines
// without an engine (like this project's CI) never reach testcontainers.
func DockerAvailable() bool {
	sock := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		if !strings.HasPrefix(h, "unix://") {
			return true // a TCP engine: let testcontainers try it
		}
		sock = strings.TrimPrefix(h, "unix://")
	}
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprint(c, "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.Contains(line, " 200 ")
}

// Container starts image with testcontainers-go, waits until port (such as
// "6379/tcp") listens, and returns its host:port. The container is removed
// when the test ends. Callers check DockerAvailable first.
func Container(ctx context.Context, t testing.TB, image, port string, env map[string]string, cmd ...string) (string, error) {
	t.Helper()
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        image,
			ExposedPorts: []string{port},
			Env:          env,
			Cmd:          cmd,
			WaitingFor:   wait.ForListeningPort(port).WithStartupTimeout(2 * time.Minute),
		},
		Started: true,
	})
	if c != nil {
		t.Cleanup(func() { _ = testcontainers.TerminateContainer(c) })
	}
	if err != nil {
		return "", fmt.Errorf("testcontainers %s: %w", image, err)
	}
	return c.PortEndpoint(ctx, port, "")
}
