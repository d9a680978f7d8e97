package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func init() {
	distlock.Register("etcd", Open)
	distlock.Register("etcds", Open)
}

// DefaultConnectTimeout bounds Open when the URL has no dial_timeout: the
// connection and the first request must succeed within it, whatever the
// caller's ctx (an earlier ctx deadline still applies).
const DefaultConnectTimeout = 5 * time.Second

// Open opens a backend from an etcd:// or etcds:// URL (see the package
// documentation) with a client of its own, which Close closes. It checks
// the cluster answers — and learns the server's minimum lease TTL — by
// granting and revoking a one-second lease. All of it is bounded by the
// URL's dial_timeout (DefaultConnectTimeout, 5s, when absent) and by ctx,
// whichever ends first: an endpoint that is down, or that speaks another
// protocol than etcd's gRPC, gives ErrUnavailable naming the endpoints
// within that time. Errors never contain the password.
func Open(ctx context.Context, u *url.URL) (driver.Backend, error) {
	cfg, opts, err := parseURL(u)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", distlock.ErrInvalidArgument, err)
	}
	timeout, set := cfg.DialTimeout, "dial_timeout"
	if timeout == 0 {
		timeout, set = DefaultConnectTimeout, "the default dial_timeout"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	cfg.DialTimeout = max(time.Until(dl), time.Millisecond)
	eps := strings.Join(cfg.Endpoints, ",")
	fail := func(step string, err error) error {
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer from etcd within %v (%s; a ctx deadline may end it sooner): check the endpoints are reachable and serve etcd v3's gRPC API (etcd:// expects gRPC over HTTP/2, etcds:// the same over TLS): %w", timeout, set, err)
		}
		return distlock.Unavailable(fmt.Errorf("etcd %s: %s%s: %w", eps, step, asUser(cfg), err))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fail("connect", err)
	}
	minTTL, err := DetectMinTTL(ctx, cli)
	if err != nil {
		cli.Close()
		return nil, fail("first request (lease grant)", err)
	}
	b := New(cli, append(opts, WithMinTTL(minTTL))...)
	b.ownClient = true
	return b, nil
}

func asUser(cfg clientv3.Config) string {
	if cfg.Username == "" {
		return ""
	}
	return fmt.Sprintf(" as user %q", cfg.Username)
}

// parseURL turns an etcd:// or etcds:// URL into a client config and
// backend options. Its errors never quote the password.
func parseURL(u *url.URL) (clientv3.Config, []Option, error) {
	var cfg clientv3.Config
	var opts []Option
	scheme := strings.ToLower(u.Scheme)
	if scheme != "etcd" && scheme != "etcds" {
		return cfg, nil, fmt.Errorf("etcd: scheme %q: want etcd:// or etcds://", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		return cfg, nil, errors.New("etcd: no endpoints in URL (want etcd://host:port[,host:port…])")
	}
	for h := range strings.SplitSeq(u.Host, ",") {
		if h == "" {
			return cfg, nil, errors.New("etcd: empty endpoint in URL")
		}
		if _, port, err := net.SplitHostPort(h); err != nil {
			if strings.Contains(err.Error(), "missing port") {
				h = net.JoinHostPort(strings.Trim(h, "[]"), "2379")
			} else {
				return cfg, nil, fmt.Errorf("etcd: bad endpoint %q", h)
			}
		} else if port == "" {
			return cfg, nil, fmt.Errorf("etcd: bad endpoint %q", h)
		}
		cfg.Endpoints = append(cfg.Endpoints, h)
	}
	if u.Path != "" && u.Path != "/" {
		return cfg, nil, errors.New("etcd: URL path not supported (set the key prefix with ?prefix=)")
	}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
		if cfg.Username == "" || cfg.Password == "" {
			return cfg, nil, errors.New("etcd: user and password must both be given")
		}
	}
	q := u.Query()
	var tlsCfg *tls.Config
	if scheme == "etcds" {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	for name, vs := range q {
		v := vs[len(vs)-1]
		switch name {
		case "prefix":
			opts = append(opts, WithPrefix(v))
		case "dial_timeout", "request_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return cfg, nil, fmt.Errorf("etcd: %s=%q: want a duration such as 5s", name, v)
			}
			if name == "dial_timeout" {
				cfg.DialTimeout = d
			} else {
				opts = append(opts, WithRequestTimeout(d))
			}
		case "ca", "cert", "key", "server_name":
			if tlsCfg == nil {
				return cfg, nil, fmt.Errorf("etcd: %s= needs the etcds:// scheme", name)
			}
		default:
			return cfg, nil, fmt.Errorf("etcd: unknown URL option %q", name)
		}
	}
	if tlsCfg != nil {
		if err := setupTLS(tlsCfg, q); err != nil {
			return cfg, nil, err
		}
		cfg.TLS = tlsCfg
	}
	cfg.Logger = zap.NewNop()
	cfg.DialKeepAliveTime = 10 * time.Second
	cfg.DialKeepAliveTimeout = 5 * time.Second
	return cfg, opts, nil
}

func setupTLS(c *tls.Config, q url.Values) error {
	c.ServerName = q.Get("server_name")
	if ca := q.Get("ca"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return fmt.Errorf("etcd: ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("etcd: ca %s: no PEM certificate", ca)
		}
		c.RootCAs = pool
	}
	cert, key := q.Get("cert"), q.Get("key")
	if (cert == "") != (key == "") {
		return errors.New("etcd: cert= and key= go together")
	}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return fmt.Errorf("etcd: client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return nil
}
