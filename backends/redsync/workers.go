package redsync

import "sync"

// maxWorkers bounds the goroutines a workerPool keeps; past it, a task
// runs on a goroutine of its own.
const maxWorkers = 256

// workerPool runs the masters' operations of Redlock rounds on goroutines
// kept from one round to the next. A fresh goroutine per master per call
// starts on a small stack and grows it (copying) on its way through
// go-redis, which cost about a fifth of a round's CPU; a kept worker
// already has the stack it needs. Workers are started on demand (when
// none is idle), up to maxWorkers, and stop at close.
type workerPool struct {
	tasks chan func() // unbuffered: a send succeeds only to an idle worker

	mu     sync.Mutex
	n      int
	closed bool
	wg     sync.WaitGroup
}

func newWorkerPool() *workerPool { return &workerPool{tasks: make(chan func())} }

// run runs f on an idle worker, a new one, or (at the cap, or after
// close) a goroutine of its own.
func (p *workerPool) run(f func()) {
	select {
	case p.tasks <- f:
		return
	default:
	}
	p.mu.Lock()
	if p.closed || p.n >= maxWorkers {
		p.mu.Unlock()
		go f()
		return
	}
	p.n++
	p.wg.Add(1)
	p.mu.Unlock()
	go p.work(f)
}

func (p *workerPool) work(f func()) {
	defer p.wg.Done()
	for f != nil {
		f()
		f = <-p.tasks // nil once closed
	}
}

// close stops the workers once they are idle and waits for them. No run
// may be in progress or follow.
func (p *workerPool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	close(p.tasks)
	p.wg.Wait()
}
