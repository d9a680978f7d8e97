package redsync

import "time"

// SetPollEvery sets the waiters' fallback poll for a test and returns a
// function that restores it.
func SetPollEvery(d time.Duration) (restore func()) {
	old := pollEvery.Swap(int64(d))
	return func() { pollEvery.Store(old) }
}
