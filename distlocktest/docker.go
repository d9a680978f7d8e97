package distlocktest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
)

// The public images the container path starts by default. Docker pulls
// them on first use.
const (
	DefaultRedisImage    = "redis:7-alpine"
	DefaultEtcdImage     = "gcr.io/etcd-development/etcd:v3.6.5"
	DefaultPostgresImage = "postgres:17-alpine"
)

// Environment variables that replace the default images, for machines that
// cannot pull them (an image from a local registry, or one made with
// BuildImage). The image must start the server the way the default one
// does: see RedisContainer, EtcdContainer and PostgresContainer.
const (
	RedisImageEnv    = "DISTLOCK_TEST_REDIS_IMAGE"
	EtcdImageEnv     = "DISTLOCK_TEST_ETCD_IMAGE"
	PostgresImageEnv = "DISTLOCK_TEST_POSTGRES_IMAGE"
)

// DockerAvailable reports whether a Docker engine answers on DOCKER_HOST (a
// unix socket) or /var/run/docker.sock, within two seconds. It is the
// runtime check in front of the testcontainers-go path.
func DockerAvailable() bool {
	sock := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		if !strings.HasPrefix(h, "unix://") {
			return true // a TCP engine: let testcontainers-go try it
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

// DockerHowTo says how to make the container path available.
const DockerHowTo = "start a Docker engine (the kit then runs the server with testcontainers-go)"

var reaperOnce sync.Once

// noReaper turns testcontainers-go's reaper (Ryuk) off unless the user
// chose: it is one more image to pull, and the kit removes every container
// it starts in t.Cleanup. It must run before testcontainers-go reads its
// configuration (once per process).
func noReaper() {
	reaperOnce.Do(func() {
		if _, set := os.LookupEnv("TESTCONTAINERS_RYUK_DISABLED"); !set {
			_ = os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
		}
	})
}

// Container is a server in a container that testcontainers-go started for
// a test. Its port is published on 127.0.0.1 only, on a host port fixed at
// creation, so Stop and Start keep its address. It is removed when the
// test ends.
type Container struct {
	// Image is the image the container runs.
	Image string
	// Addr is the server's host:port on this machine (127.0.0.1).
	Addr string
	// ID is the Docker container ID.
	ID string

	url   string
	ready func(ctx context.Context, addr string) error
	c     testcontainers.Container
}

// URL returns the URL to open the server with distlock.Open.
func (c *Container) URL() string { return c.url }

// Stop stops the container (SIGTERM, SIGKILL after 10s) and waits until it
// has exited. What the server held in memory is lost.
func (c *Container) Stop(ctx context.Context) error {
	d := 10 * time.Second
	return c.c.Stop(ctx, &d)
}

// Start starts the stopped container again, on the same address, and waits
// until the server answers.
func (c *Container) Start(ctx context.Context) error {
	if err := c.c.Start(ctx); err != nil {
		return err
	}
	return waitReady(ctx, c.Addr, c.ready)
}

// containerSpec is what differs between the servers the kit can run in a
// container.
type containerSpec struct {
	what   string // for messages: "Redis"
	image  string
	envVar string   // the environment variable that overrides the image
	port   string   // the server's port in the container: "6379/tcp"
	entry  []string // replaces the image's entrypoint, if set
	env    map[string]string
	cmd    func(hostAddr string) []string
	url    func(hostAddr string) string
	ready  func(ctx context.Context, addr string) error
	logger tclog.Logger
}

// startContainer starts spec's image with testcontainers-go, publishes its
// port on a free 127.0.0.1 port, waits until the server answers and
// removes the container when t ends.
func startContainer(t testing.TB, spec containerSpec) *Container {
	t.Helper()
	if !DockerAvailable() {
		Unavailable(t, "a Docker engine for "+spec.what, DockerHowTo)
	}
	noReaper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var lastErr error
	for range 3 { // the free port may be taken before Docker binds it
		hostPort, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))
		c, err := runContainer(ctx, t, spec, hostPort, addr)
		if err == nil {
			t.Logf("%s: container %.12s from image %s, started by testcontainers-go, on %s", spec.what, c.ID, spec.image, addr)
			return c
		}
		lastErr = err
		if errors.Is(err, errPull) {
			Unavailable(t, spec.what+" image "+spec.image, fmt.Sprintf(
				"Docker could not pull it (%v); set %s to an image this engine has (distlocktest.BuildImage makes one from local executables)", err, spec.envVar))
		}
		if !strings.Contains(err.Error(), "allocated") && !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("%s in a container (image %s): %v", spec.what, spec.image, lastErr)
	return nil
}

func runContainer(ctx context.Context, t testing.TB, spec containerSpec, hostPort int, addr string) (*Container, error) {
	port, err := network.ParsePort(spec.port)
	if err != nil {
		return nil, err
	}
	logger := spec.logger
	if logger == nil {
		logger = tclog.TestLogger(t)
	}
	req := testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        spec.image,
			ExposedPorts: []string{spec.port},
			Env:          spec.env,
			Entrypoint:   spec.entry,
			Cmd:          spec.cmd(addr),
			Labels:       map[string]string{"org.distlock.distlocktest": "1"},
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.PortBindings = network.PortMap{port: {{
					HostIP:   netip.MustParseAddr("127.0.0.1"),
					HostPort: strconv.Itoa(hostPort),
				}}}
			},
		},
		Started: true,
		Logger:  logger,
	}
	if err := ensureImage(ctx, spec.image, logger); err != nil {
		return nil, err
	}
	c, err := testcontainers.GenericContainer(ctx, req)
	if c != nil {
		t.Cleanup(func() { _ = testcontainers.TerminateContainer(c) })
	}
	if err != nil {
		return nil, fmt.Errorf("testcontainers: %w", err)
	}
	out := &Container{Image: spec.image, Addr: addr, ID: c.GetContainerID(), url: spec.url(addr), ready: spec.ready, c: c}
	if err := waitReady(ctx, addr, spec.ready); err != nil {
		logs := containerLogs(ctx, c)
		return nil, fmt.Errorf("%w; container log: %s", err, logs)
	}
	return out, nil
}

// errPull marks a container that could not start because its image could
// not be pulled.
var errPull = errors.New("image not available")

// ensureImage pulls image unless the engine has it already, within two
// minutes; a failure is errPull.
func ensureImage(ctx context.Context, image string, logger tclog.Logger) error {
	p, err := testcontainers.NewDockerProvider(testcontainers.WithLogger(logger))
	if err != nil {
		return fmt.Errorf("testcontainers: %w", err)
	}
	defer p.Close()
	if _, err := p.Client().ImageInspect(ctx, image); err == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := p.PullImage(ctx, image); err != nil {
		return fmt.Errorf("%w: %w", errPull, err)
	}
	return nil
}

// waitReady polls ready until it succeeds, at most for two minutes.
func waitReady(ctx context.Context, addr string, ready func(context.Context, string) error) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i := 0; ; i++ {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		err := ready(actx, addr)
		acancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server on %s not ready: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(time.Duration(min(i+1, 10)) * 20 * time.Millisecond):
		}
	}
}

func containerLogs(ctx context.Context, c testcontainers.Container) string {
	r, err := c.Logs(ctx)
	if err != nil {
		return err.Error()
	}
	defer r.Close()
	b, _ := io.ReadAll(io.LimitReader(r, 1<<20))
	return tail(string(b), 2000)
}

// imageFor returns the image to run: explicit, else the environment
// variable env, else def.
func imageFor(explicit, env, def string) string {
	if explicit != "" {
		return explicit
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

// BuildImage builds a Docker image for machines that cannot pull one: FROM
// scratch, holding the given executables of this machine and every shared
// library ldd lists for them, with the first executable as the
// entrypoint. An executable lands at its own path in the image, or at the
// path after "=" ("/usr/bin/etcd=/usr/local/bin/etcd"); libraries land at
// their own paths. It returns the image's reference,
// distlocktest/NAME:HASH (NAME the entrypoint's base name, HASH over the
// files and their paths); an image already built under that reference is
// reused. It needs ldd and a Docker engine, and builds through
// testcontainers-go (the Docker API), not the docker command.
//
// The kit's own tests use it to run the machine's redis-server and etcd in
// containers:
//
//	ref, err := distlocktest.BuildImage(ctx, "/usr/bin/redis-server")
//	c := distlocktest.RedisContainer(t, ref)
//
// An etcd image for EtcdContainer needs etcd at /usr/local/bin/etcd, as the
// official image has it: BuildImage(ctx, "/usr/bin/etcd=/usr/local/bin/etcd").
func BuildImage(ctx context.Context, executables ...string) (string, error) {
	if len(executables) == 0 {
		return "", errors.New("distlocktest: BuildImage: no executable")
	}
	noReaper()
	files := map[string]string{} // path in the image → path here
	var libDirs []string
	var entry string
	for i, arg := range executables {
		src, dst, _ := strings.Cut(arg, "=")
		abs, err := filepath.Abs(src)
		if err != nil {
			return "", err
		}
		if dst == "" {
			dst = abs
		}
		if !filepath.IsAbs(dst) {
			return "", fmt.Errorf("distlocktest: BuildImage: %q: the path in the image must be absolute", arg)
		}
		if i == 0 {
			entry = dst
		}
		files[dst] = abs
		libs, err := sharedLibraries(ctx, abs)
		if err != nil {
			return "", err
		}
		for _, l := range libs {
			files[l] = l
			if d := filepath.Dir(l); !slices.Contains(libDirs, d) {
				libDirs = append(libDirs, d)
			}
		}
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	dockerfile := "FROM scratch\nCOPY rootfs/ /\n"
	if len(libDirs) > 0 {
		dockerfile += "ENV LD_LIBRARY_PATH=" + strings.Join(libDirs, ":") + "\n"
	}
	dockerfile += fmt.Sprintf("ENTRYPOINT [%q]\n", entry)

	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	h := sha256.New()
	h.Write([]byte(dockerfile))
	add := func(name string, mode int64, body []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	if err := add("Dockerfile", 0o644, []byte(dockerfile)); err != nil {
		return "", err
	}
	for _, p := range paths {
		body, err := os.ReadFile(files[p]) // follows symlinks: the image gets the file itself
		if err != nil {
			return "", err
		}
		h.Write([]byte(p))
		h.Write(body)
		if err := add("rootfs"+p, 0o755, body); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	name := strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9_.-]`).ReplaceAllString(filepath.Base(entry), "-"))
	repo, tag := "distlocktest/"+name, hex.EncodeToString(h.Sum(nil))[:16]
	ref := repo + ":" + tag

	p, err := testcontainers.NewDockerProvider(testcontainers.WithLogger(quiet{}))
	if err != nil {
		return "", fmt.Errorf("distlocktest: docker: %w", err)
	}
	if _, err := p.Client().ImageInspect(ctx, ref); err == nil {
		_ = p.Close()
		return ref, nil
	}
	// BuildImage closes the provider's client when it is done.
	_, err = p.BuildImage(ctx, &testcontainers.ContainerRequest{FromDockerfile: testcontainers.FromDockerfile{
		ContextArchive: bytes.NewReader(archive.Bytes()),
		Repo:           repo,
		Tag:            tag,
		KeepImage:      true,
	}})
	if err != nil {
		return "", fmt.Errorf("distlocktest: build %s: %w", ref, err)
	}
	return ref, nil
}

// quiet is a testcontainers-go logger that drops everything.
type quiet struct{}

func (quiet) Printf(string, ...any) {}

// sharedLibraries returns the absolute paths of the shared libraries ldd
// lists for exe, the dynamic loader included; none for a static executable.
func sharedLibraries(ctx context.Context, exe string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ldd", exe).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) || bytes.Contains(out, []byte("statically linked")) {
			return nil, nil
		}
		return nil, fmt.Errorf("distlocktest: ldd %s: %v: %s", exe, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		path, _, _ := strings.Cut(line, " ")
		if strings.HasPrefix(path, "/") {
			libs = append(libs, path)
		} else if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("distlocktest: ldd %s: %s", exe, line)
		}
	}
	return libs, nil
}
