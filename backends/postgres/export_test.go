package postgres

// Freeze pauses every holder session of b, as if the holder process were
// stopped: nothing is sent, not even heartbeats. The returned function
// resumes them.
func (b *Backend) Freeze() (resume func()) {
	var fs []chan struct{}
	b.mu.Lock()
	all := append([]*session(nil), b.sessions...)
	for s := range b.extra {
		b.startLocked(s)
		all = append(all, s)
	}
	b.mu.Unlock()
	for _, s := range all {
		f := make(chan struct{})
		select {
		case s.freeze <- f:
			fs = append(fs, f)
		case <-s.closing:
		case <-s.exited:
		}
	}
	return func() {
		for _, f := range fs {
			close(f)
		}
	}
}

// SetLockID replaces how b maps keys to advisory lock ids (to make
// collisions); call it before b is used.
func (b *Backend) SetLockID(f func(key string) int64) { b.lockID = f }
