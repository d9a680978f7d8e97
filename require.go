package distlock

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// A Requirement is a property a program needs from its backend, checked
// against the backend's Capabilities by Open (see Require). It returns nil
// when caps provide it, else an error saying what is missing.
type Requirement func(caps Capabilities) error

// Require makes Open fail, with an error matching ErrUnsupported, when the
// backend lacks any of reqs — so that swapping the URL for a backend that
// cannot keep a promise the program relies on fails at start-up instead of
// changing behaviour silently:
//
//	lm, err := distlock.Open(ctx, url, distlock.Require(
//		distlock.Fencing(), distlock.CrossInstanceRelease(), distlock.MinTTLAtMost(time.Second)))
//
// New cannot return an error: a Manager it builds with unmet requirements
// fails every call with that error instead (and Capabilities still
// answers). Require may be given more than once; all requirements apply.
func Require(reqs ...Requirement) Option {
	return func(c *managerConfig) { c.require = append(c.require, reqs...) }
}

// Fencing requires grants to carry fencing numbers (Capabilities.Fencing).
func Fencing() Requirement {
	return func(c Capabilities) error {
		if !c.Fencing {
			return errors.New("no fencing numbers")
		}
		return nil
	}
}

// CrossInstanceRelease requires that a Manager other than the one that
// acquired a lock can release or extend it with the token
// (Capabilities.CrossInstanceRelease), as a CLI or a second process does.
func CrossInstanceRelease() Requirement {
	return func(c Capabilities) error {
		if !c.CrossInstanceRelease {
			return errors.New("no cross-instance release (only the instance that acquired a lock can release or extend it)")
		}
		return nil
	}
}

// MinTTLAtMost requires the backend to grant TTLs as short as d: its
// MinTTL, and its Granularity, must be at most d. (etcd's leases are whole
// seconds, 2s at least with the server's default timing, so a program that
// relies on 100ms locks should say MinTTLAtMost(100*time.Millisecond).)
func MinTTLAtMost(d time.Duration) Requirement {
	return func(c Capabilities) error {
		if c.MinTTL > d || c.Granularity > d {
			return fmt.Errorf("TTLs are at least %v in steps of %v, and %v is required", c.MinTTL, c.Granularity, d)
		}
		return nil
	}
}

// ReadWriteLocks requires read-write locks (Capabilities.ReadWrite:
// Manager.RWMutex).
func ReadWriteLocks() Requirement {
	return primitive("read-write locks", func(c Capabilities) bool { return c.ReadWrite })
}

// Semaphores requires counting semaphores (Capabilities.Semaphore:
// Manager.Semaphore).
func Semaphores() Requirement {
	return primitive("semaphores", func(c Capabilities) bool { return c.Semaphore })
}

// Elections requires leader election (Capabilities.Election:
// Manager.Election).
func Elections() Requirement {
	return primitive("leader election", func(c Capabilities) bool { return c.Election })
}

func primitive(what string, has func(Capabilities) bool) Requirement {
	return func(c Capabilities) error {
		if !has(c) {
			return fmt.Errorf("no %s", what)
		}
		return nil
	}
}

// satisfies checks caps against reqs and returns an error matching
// ErrUnsupported naming every requirement that is not met, or nil.
func satisfies(c Capabilities, reqs ...Requirement) error {
	var missing []string
	for _, r := range reqs {
		if r == nil {
			continue
		}
		if err := r(c); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) == 0 {
		return nil
	}
	name := c.Name
	if name == "" {
		name = "unnamed"
	}
	return fmt.Errorf("%w: backend %q does not meet distlock.Require: %s", ErrUnsupported, name, strings.Join(missing, "; "))
}
