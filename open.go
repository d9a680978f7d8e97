package distlock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/distlock/distlock/driver"
)

// OpenFunc opens a Backend from a parsed URL. Backend packages register one
// per scheme with Register.
type OpenFunc func(ctx context.Context, u *url.URL) (driver.Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]OpenFunc{}
)

// Register makes a backend available to Open under scheme. Backend packages
// call it from init; importing the package (for its side effect, with a
// blank import if need be) is what makes the scheme known. Register panics
// if the scheme is empty, fn is nil, or the scheme is registered twice —
// mistakes in a program, never in user input.
func Register(scheme string, fn OpenFunc) {
	scheme = strings.ToLower(scheme)
	if scheme == "" || fn == nil {
		panic("distlock: Register with empty scheme or nil OpenFunc")
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("distlock: Register called twice for scheme " + scheme)
	}
	registry[scheme] = fn
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// Open opens the backend named by rawURL and returns a Manager over it.
// The scheme picks the backend (memory://, redis://, etcd://, postgres://,
// …); each backend package documents its URL. Passwords in the URL never
// appear in the errors Open returns.
//
// Open fails with an error matching ErrUnsupported when the backend does
// not meet a Require option, and with ErrInvalidArgument for an invalid
// retry strategy (LinearBackoff(0), say). Backends bound the time Open
// takes by their URL's connect timeout (5s unless the URL says otherwise;
// see each backend's documentation), even when ctx has no deadline.
func Open(ctx context.Context, rawURL string, opts ...Option) (*Manager, error) {
	b, err := OpenBackend(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	m := New(b, opts...)
	if u, err := url.Parse(rawURL); err == nil && u.Host != "" {
		m.where = strings.ToLower(u.Scheme) + "://" + u.Host // no user, no password
	}
	if err := open(m); err != nil {
		_ = m.Close()
		return nil, err
	}
	return m, nil
}

// open checks the options given to Open: requirements (Require) and the
// retry strategy.
func open(m *Manager) error {
	if m.unmet != nil {
		return &Error{Op: "open " + m.where, Kind: ErrUnsupported, Err: m.unmet}
	}
	if err := checkRetry(m.cfg.retry); err != nil {
		return &Error{Op: "open " + m.where, Kind: ErrInvalidArgument, Err: fmt.Errorf("WithRetry: %w", err)}
	}
	return nil
}

// OpenBackend opens the Backend named by rawURL without wrapping it in a
// Manager (the conformance suite and tools use it).
func OpenBackend(ctx context.Context, rawURL string) (driver.Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		// url.Parse's error repeats the whole URL, password included.
		return nil, &Error{Op: "open", Kind: ErrInvalidArgument, Err: errors.New("malformed URL (want scheme://…)")}
	}
	scheme := strings.ToLower(u.Scheme)
	registryMu.RLock()
	fn := registry[scheme]
	registryMu.RUnlock()
	if fn == nil {
		return nil, &Error{Op: "open", Kind: ErrInvalidArgument, Err: fmt.Errorf("unknown scheme %q (registered: %s; import the backend package to register its scheme)", scheme, strings.Join(Schemes(), ", "))}
	}
	b, err := fn(ctx, u)
	if err != nil {
		err = scrub(err, u)
		kind := classify(err)
		return nil, &Error{Op: "open " + RedactURL(u), Kind: kind, Err: cause(err, kind)}
	}
	return b, nil
}

// RedactURL returns u as a string with any password replaced by "xxxxx",
// for errors and logs.
func RedactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	q := c.Query()
	changed := false
	for k := range q {
		if isSecretParam(k) {
			q.Set(k, "xxxxx")
			changed = true
		}
	}
	if changed {
		c.RawQuery = q.Encode()
	}
	return c.Redacted()
}

func isSecretParam(k string) bool {
	k = strings.ToLower(k)
	return strings.Contains(k, "password") || strings.Contains(k, "secret") || k == "sslkey" || strings.Contains(k, "token")
}

// scrub hides the URL's secrets from an error a backend's opener returned,
// as a last line of defence; errors.Is still sees the original chain.
func scrub(err error, u *url.URL) error {
	var secrets []string
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			secrets = append(secrets, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	for k, vs := range u.Query() {
		if isSecretParam(k) {
			for _, v := range vs {
				if v != "" {
					secrets = append(secrets, v)
				}
			}
		}
	}
	if len(secrets) == 0 {
		return err
	}
	return &scrubbedError{err: err, secrets: secrets}
}

type scrubbedError struct {
	err     error
	secrets []string
}

func (s *scrubbedError) Error() string {
	msg := s.err.Error()
	for _, sec := range s.secrets {
		msg = strings.ReplaceAll(msg, sec, "xxxxx")
	}
	return msg
}

func (s *scrubbedError) Unwrap() error { return s.err }
