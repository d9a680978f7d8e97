package distlock

import "sync"

// ReleaseBroadcaster wakes the waiters of a key when it may have been
// released. Backends that learn of releases — their own, or through a
// server notification — use it to implement ReleaseNotifier. The zero value
// is ready to use; it is safe for concurrent use.
type ReleaseBroadcaster struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

// Subscribe returns a channel that receives (without ever blocking Notify)
// each time key is notified, and a function that ends the subscription.
func (r *ReleaseBroadcaster) Subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	if r.subs == nil {
		r.subs = map[string]map[chan struct{}]struct{}{}
	}
	if r.subs[key] == nil {
		r.subs[key] = map[chan struct{}]struct{}{}
	}
	r.subs[key][ch] = struct{}{}
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		delete(r.subs[key], ch)
		if len(r.subs[key]) == 0 {
			delete(r.subs, key)
		}
		r.mu.Unlock()
	}
}

// Notify wakes every subscriber of key.
func (r *ReleaseBroadcaster) Notify(key string) {
	r.mu.Lock()
	for ch := range r.subs[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	r.mu.Unlock()
}
