package redsync

import (
	"reflect"
	"time"
	"unsafe"

	"github.com/distlock/distlock"
	rs "github.com/go-redsync/redsync/v4"
)

// Option configures NewRedsyncLockManager, NewBackend, NewRedlock and
// their Manager variants. Options that only make sense for a Manager
// (token generator, retry) are ignored by the backend constructors.
type Option func(*config)

type config struct {
	fenceKey      string
	channelPrefix string
	tokenGen      func(key string) string
	redsync       []rs.Option
	manager       []distlock.Option
	closeClient   bool
	noFence       bool
}

func newConfig(opts []Option) *config {
	c := &config{fenceKey: DefaultFenceKey, channelPrefix: DefaultChannelPrefix}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

// WithTokenGenerator makes the Manager call gen for the token of each
// grant made without an explicit token (as go-common's lockmanager did).
// gen must return distinct tokens for distinct callers, or they will all
// hold the lock together.
func WithTokenGenerator(gen func(key string) string) Option {
	return func(c *config) { c.tokenGen = gen }
}

// WithRedsyncOptions takes go-redsync mutex options and maps them onto
// distlock:
//
//   - redsync.WithTries and redsync.WithRetryDelay / WithRetryDelayFunc
//     become the Manager's RetryStrategy (at most that many attempts,
//     that delay between them). The delay is only the fallback poll:
//     waiters wake as soon as the holder releases.
//   - redsync.WithDriftFactor and redsync.WithTimeoutFactor set the
//     Redlock clock-drift allowance and per-node timeout (fraction of the
//     TTL).
//   - redsync.WithGenValueFunc generates tokens unless WithTokenGenerator
//     is given.
//   - redsync.WithExpiry, WithValue, WithShufflePools and WithFailFast
//     have no effect: the TTL is an argument of every call, the token is
//     an argument of Acquire, nodes are always asked in parallel and a
//     Redlock round returns as soon as its outcome is known.
//     redsync.WithSetNXOnExtend is ignored on purpose: extending an
//     expired lock must never re-create it.
func WithRedsyncOptions(opts ...rs.Option) Option {
	return func(c *config) { c.redsync = append(c.redsync, opts...) }
}

// WithManagerOptions passes options to the Manager built by
// NewRedsyncLockManager or NewRedlockManager, such as distlock.WithRetry.
// They apply after the options derived from WithRedsyncOptions.
func WithManagerOptions(opts ...distlock.Option) Option {
	return func(c *config) { c.manager = append(c.manager, opts...) }
}

// WithCloseClient makes the backend's Close (and so the Manager's) close
// the client(s) it was given too.
func WithCloseClient() Option {
	return func(c *config) { c.closeClient = true }
}

// WithoutFencing makes a single-node backend grant locks without fencing
// numbers (Capabilities.Fencing false, Lock.Fence 0). An uncontended
// acquire is then a plain SET NX PX, the cost of the raw floor, instead of
// a script that also increments the counter. Redlock never fences.
func WithoutFencing() Option {
	return func(c *config) { c.noFence = true }
}

// WithFenceKey names the fencing counter key (default DefaultFenceKey).
func WithFenceKey(key string) Option {
	return func(c *config) {
		if key != "" {
			c.fenceKey = key
		}
	}
}

// WithChannelPrefix sets the prefix of the per-key release channels
// (default DefaultChannelPrefix). Every client sharing locks must use the
// same prefix, or waiters fall back to polling.
func WithChannelPrefix(prefix string) Option {
	return func(c *config) {
		if prefix != "" {
			c.channelPrefix = prefix
		}
	}
}

// mutexSettings is what a go-redsync Mutex was configured with.
type mutexSettings struct {
	tries         int
	delay         rs.DelayFunc
	driftFactor   float64
	timeoutFactor float64
	genValue      func() (string, error) // nil unless set by the caller
}

// defaultSettings are go-redsync's defaults that distlock uses where the
// caller gave no option (the retry is distlock's own default instead).
var defaultSettings = mutexSettings{tries: 32, driftFactor: 0.01, timeoutFactor: 0.05}

// readMutexSettings applies opts to a throwaway go-redsync Mutex and reads
// back what they set. redsync.Option values are opaque functions over the
// Mutex's unexported fields, so reading them needs reflection; a field
// that is missing or changed type in another redsync version leaves the
// default (TestRedsyncOptionsTranslate pins the mapping for the version in
// go.mod).
func readMutexSettings(opts []rs.Option) mutexSettings {
	s := defaultSettings
	if len(opts) == 0 {
		return s
	}
	plain := rs.New().NewMutex("distlock-probe")
	m := rs.New().NewMutex("distlock-probe", opts...)
	v := reflect.ValueOf(m).Elem()
	pv := reflect.ValueOf(plain).Elem()
	field := func(v reflect.Value, name string, kind reflect.Kind) (reflect.Value, bool) {
		f := v.FieldByName(name)
		if !f.IsValid() || f.Kind() != kind {
			return reflect.Value{}, false
		}
		return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem(), true
	}
	if f, ok := field(v, "tries", reflect.Int); ok {
		s.tries = int(f.Int())
	}
	if f, ok := field(v, "delayFunc", reflect.Func); ok {
		if d, ok := f.Interface().(rs.DelayFunc); ok && d != nil {
			s.delay = d
		}
	}
	if f, ok := field(v, "driftFactor", reflect.Float64); ok {
		s.driftFactor = f.Float()
	}
	if f, ok := field(v, "timeoutFactor", reflect.Float64); ok {
		s.timeoutFactor = f.Float()
	}
	if f, ok := field(v, "genValueFunc", reflect.Func); ok {
		if p, ok := field(pv, "genValueFunc", reflect.Func); ok && f.Pointer() != p.Pointer() {
			if g, ok := f.Interface().(func() (string, error)); ok {
				s.genValue = g
			}
		}
	}
	return s
}

// redsyncRetry is go-redsync's retry loop as a distlock RetryStrategy:
// tries attempts in all, delay(n) before attempt n+1.
type redsyncRetry struct {
	tries int
	delay rs.DelayFunc
}

func (r redsyncRetry) NextBackoff(attempt int, _ time.Duration) (time.Duration, bool) {
	if attempt >= r.tries {
		return 0, false
	}
	return r.delay(attempt), true
}

// managerOptions returns the distlock options c implies.
func (c *config) managerOptions() []distlock.Option {
	var out []distlock.Option
	if len(c.redsync) > 0 {
		s := readMutexSettings(c.redsync)
		if s.delay != nil {
			out = append(out, distlock.WithRetry(redsyncRetry{tries: max(s.tries, 1), delay: s.delay}))
		}
		if c.tokenGen == nil && s.genValue != nil {
			gen := s.genValue
			out = append(out, distlock.WithTokenGenerator(func(string) string {
				if v, err := gen(); err == nil && v != "" {
					return v
				}
				return distlock.NewToken()
			}))
		}
	}
	if c.tokenGen != nil {
		out = append(out, distlock.WithTokenGenerator(c.tokenGen))
	}
	return append(out, c.manager...)
}
