package distlock

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// gaveUp is the cause of ErrNotAcquired when the retry strategy gave up: it
// says how long the call waited and how to change that.
func gaveUp(attempts int, waited time.Duration, backend error) error {
	var err error
	switch {
	case attempts <= 1 && backend != nil: // the backend waited in its own way (go-redsync's tries)
		return fmt.Errorf("held by another token: %w", backend)
	case attempts <= 1:
		err = errors.New("held by another token; the retry strategy makes one attempt (to wait for the lock, give one that retries with distlock.WithRetry or WithLockRetry)")
	default:
		err = fmt.Errorf("held by another token; gave up after %d attempts over %v, the retry strategy's limit (the default waits 5s): wait longer with distlock.WithRetry or WithLockRetry, e.g. LimitWait(ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute), or bound the wait by ctx alone with ExponentialBackoff",
			attempts, waited.Round(time.Millisecond))
	}
	if backend != nil { // the backend's own words, e.g. go-redsync's after its own tries
		err = fmt.Errorf("%w; the backend said: %w", err, backend)
	}
	return err
}

// waitEnded is the cause of ErrNotAcquired when ctx ended the wait.
func waitEnded(waited time.Duration, ctxErr error) error {
	return &waitEndedError{waited: waited, err: ctxErr}
}

type waitEndedError struct {
	waited time.Duration
	err    error
}

func (w *waitEndedError) Error() string {
	return fmt.Sprintf("held by another token; waited %v until the context ended (give ctx a later deadline to wait longer): %v", w.waited.Round(time.Millisecond), w.err)
}

func (w *waitEndedError) Unwrap() error { return w.err }

// annotate adds where the backend is (scheme://host, never a secret) to the
// cause of an ErrUnavailable, unless the cause names the host already. A
// Manager made by New knows no address: the backend's own errors have to.
func (m *Manager) annotate(c error) error {
	if m.where == "" {
		return c
	}
	if c == nil {
		return errors.New(m.where)
	}
	if i := strings.Index(m.where, "://"); i >= 0 && strings.Contains(c.Error(), m.where[i+3:]) {
		return c
	}
	return &whereError{where: m.where, err: c}
}

type whereError struct {
	where string
	err   error
}

func (w *whereError) Error() string { return w.where + ": " + w.err.Error() }
func (w *whereError) Unwrap() error { return w.err }
