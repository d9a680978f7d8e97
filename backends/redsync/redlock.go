package redsync

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
	rs "github.com/go-redsync/redsync/v4"
	"github.com/redis/go-redis/v9"
)

// Redlock is the distlock backend over N independent Redis masters, with
// go-redsync's algorithm: a grant needs a quorum of N/2+1 masters, asked
// in parallel, within the lock's validity (TTL minus the time the round
// took minus the clock-drift allowance). It survives the loss of up to
// N-quorum masters.
//
// Redlock grants carry no fencing number (Capabilities.Fencing is false):
// counters on independent masters do not form one order, and a master that
// restarts without persistence forgets its counter, so no number derived
// from them is guaranteed to increase. Use a single-node Backend (or
// etcd/PostgreSQL) when the protected resource needs fencing.
type Redlock struct {
	nodes         []*node
	quorum        int
	driftFactor   float64
	timeoutFactor float64

	wg        sync.WaitGroup // stragglers of a round and cleanups
	workers   *workerPool    // run the masters' operations
	closeOnce sync.Once

	// Acquire and release rounds that returned on a quorum while some
	// masters had not answered yet, by key. The next acquire or release
	// of the key waits on each master for their answer before it sends
	// its own command there, so that a key's commands reach every master
	// in the order they were issued: a late grant never lands after the
	// release (blocking a master until its TTL), and a late release never
	// lands after the next grant (which would lose that master's copy).
	smu        sync.Mutex
	stragglers map[string][]*fanoutState
	closing    bool // guarded by smu: no more background work starts
	closeErr   error
}

var (
	_ distlock.Backend         = (*Redlock)(nil)
	_ distlock.ReleaseNotifier = (*Redlock)(nil)
	_ distlock.Transferer      = (*Redlock)(nil)
)

// Bounds of one Redlock round.
const (
	// minNodeTimeout is the least a round waits for a master (the TTL
	// times redsync's timeout factor, but at least this, at most the TTL).
	minNodeTimeout = 100 * time.Millisecond
	// releaseTimeout bounds a release on each master.
	releaseTimeout = time.Second
	// fixedDrift is added to the drift allowance, as the Redlock
	// description asks (redsync itself uses the factor alone).
	fixedDrift = 2 * time.Millisecond
)

// NewRedlock returns a Redlock backend over clients, one per independent
// master (not replicas of one another). The clients stay the caller's
// unless WithCloseClient is given.
// redsync.WithDriftFactor and redsync.WithTimeoutFactor given through
// WithRedsyncOptions are honoured.
func NewRedlock(clients []redis.UniversalClient, opts ...Option) (*Redlock, error) {
	cfg := newConfig(opts)
	return newRedlock(clients, cfg.closeClient, cfg)
}

// NewRedlockManager returns a distlock Manager over a Redlock of clients.
func NewRedlockManager(clients []redis.UniversalClient, opts ...Option) (*distlock.Manager, error) {
	cfg := newConfig(opts)
	r, err := newRedlock(clients, cfg.closeClient, cfg)
	if err != nil {
		return nil, err
	}
	return distlock.New(r, cfg.managerOptions()...), nil
}

func newRedlock(clients []redis.UniversalClient, owned bool, cfg *config) (*Redlock, error) {
	if len(clients) == 0 {
		return nil, fmt.Errorf("%w: redlock needs at least one client", distlock.ErrInvalidArgument)
	}
	s := readMutexSettings(cfg.redsync)
	r := &Redlock{
		quorum:        len(clients)/2 + 1,
		driftFactor:   s.driftFactor,
		timeoutFactor: s.timeoutFactor,
		workers:       newWorkerPool(),
	}
	for _, c := range clients {
		if c == nil {
			return nil, fmt.Errorf("%w: nil redis client", distlock.ErrInvalidArgument)
		}
		n := newNode(c, owned, cfg)
		n.index = len(r.nodes)
		r.nodes = append(r.nodes, n)
	}
	return r, nil
}

// Quorum returns how many masters must agree on a grant.
func (r *Redlock) Quorum() int { return r.quorum }

// Clients returns the masters' clients.
func (r *Redlock) Clients() []redis.UniversalClient {
	out := make([]redis.UniversalClient, len(r.nodes))
	for i, n := range r.nodes {
		out[i] = n.client
	}
	return out
}

type fanoutState struct {
	left     atomic.Int32
	answered atomic.Uint64 // bit i: master i has answered (masters 0..63)
	cancel   context.CancelFunc
	done     chan struct{} // closed when every master has answered
	deadline time.Time     // when the masters' timeout ends
	key      string        // set while tracked in Redlock.stragglers
	tracked  bool          // guarded by Redlock.smu
}

type nodeResult struct {
	node int
	v    int64
	err  error
}

// fanout runs op on every master in parallel, each bounded by timeout but
// not by ctx: a caller that stops waiting leaves the stragglers to finish
// (and be cleaned up) on their own. Results arrive on the returned channel.
func (r *Redlock) fanout(ctx context.Context, timeout time.Duration, op func(context.Context, *node) (int64, error)) (<-chan nodeResult, *fanoutState) {
	out := make(chan nodeResult, len(r.nodes))
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	st := &fanoutState{cancel: cancel, done: make(chan struct{})}
	st.deadline, _ = octx.Deadline()
	st.left.Store(int32(len(r.nodes)))
	if !r.spawn(len(r.nodes)) {
		cancel()
		close(st.done)
		for i := range r.nodes {
			out <- nodeResult{node: i, err: errClosed}
		}
		return out, st
	}
	for i, n := range r.nodes {
		r.workers.run(func() {
			defer r.wg.Done()
			v, err := op(octx, n)
			if i < 64 {
				st.answered.Or(1 << uint(i))
			}
			out <- nodeResult{node: i, v: v, err: err}
			if st.left.Add(-1) == 0 { // the last one out
				st.cancel()
				close(st.done)
				r.untrack(st)
			}
		})
	}
	return out, st
}

var errClosed = distlock.Unavailable(errors.New("redlock: backend closed"))

// spawn accounts for n goroutines about to start, unless Close has begun
// (WaitGroup.Add must not race with Wait).
func (r *Redlock) spawn(n int) bool {
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.closing {
		return false
	}
	r.wg.Add(n)
	return true
}

// track records a round whose stragglers are still out.
func (r *Redlock) track(key string, st *fanoutState) {
	r.smu.Lock()
	defer r.smu.Unlock()
	select {
	case <-st.done:
		return
	default:
	}
	if r.stragglers == nil {
		r.stragglers = make(map[string][]*fanoutState)
	}
	st.key, st.tracked = key, true
	r.stragglers[key] = append(r.stragglers[key], st)
}

func (r *Redlock) untrack(st *fanoutState) {
	r.smu.Lock()
	defer r.smu.Unlock()
	if !st.tracked {
		return
	}
	st.tracked = false
	list := r.stragglers[st.key]
	for i, x := range list {
		if x == st {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(r.stragglers, st.key)
	} else {
		r.stragglers[st.key] = list
	}
}

// stragglersOf returns the rounds of key whose answers are still out on
// some master.
func (r *Redlock) stragglersOf(key string) []*fanoutState {
	r.smu.Lock()
	defer r.smu.Unlock()
	list := r.stragglers[key]
	if len(list) == 0 {
		return nil
	}
	return append([]*fanoutState(nil), list...)
}

// awaitNode waits until every round in pending has heard from master i:
// a command sent to that master before then could overtake the late one
// (a release landing before the late grant, which then stays until its
// TTL; a grant landing before the late release, which then deletes it).
// Masters that answered are not waited for, so a round is not held up by
// the slowest master of the one before.
func awaitNode(pending []*fanoutState, i int) {
	for _, st := range pending {
		if i < 64 && st.answered.Load()&(1<<uint(i)) != 0 {
			continue
		}
		<-st.done
	}
}

// newNonce returns a random decimal nonce for one acquire round, below
// 2^53 so that Lua reads it back exactly.
func newNonce() string {
	return strconv.FormatInt(rand.Int64N(1<<53), 10)
}

func (r *Redlock) nodeTimeout(ttl time.Duration) time.Duration {
	return min(max(time.Duration(float64(ttl)*r.timeoutFactor), minNodeTimeout), max(ttl, minNodeTimeout))
}

// validity returns how long a grant from a round that started at start
// can be relied on, from start: the TTL minus the drift allowance, if the
// round left any (Redlock's validity is TTL − round time − drift; the
// round time is already counted by measuring from start). ok is false if
// the round took too long.
func (r *Redlock) validity(start time.Time, ttl time.Duration) (valid time.Duration, ok bool) {
	drift := time.Duration(float64(ttl)*r.driftFactor) + fixedDrift
	return ttl - drift, time.Since(start)+drift < ttl
}

// Acquire asks every master for key at once and succeeds as soon as a
// quorum granted it within its validity. On a master that has not yet
// answered an earlier round of key (a release that returned on a quorum,
// say), it waits for that answer first, so that the late release cannot
// delete the new grant's copy there. A key held by token on a master has
// its TTL reset there, never deleted. A failed round deletes only the
// copies it created, in the background.
func (r *Redlock) Acquire(ctx context.Context, key, token string, ttl time.Duration) (distlock.Grant, error) {
	start := time.Now()
	nonce := newNonce()
	pending := r.stragglersOf(key)
	results, st := r.fanout(ctx, r.nodeTimeout(ttl), func(c context.Context, n *node) (int64, error) {
		if pending != nil {
			awaitNode(pending, n.index)
		}
		return n.redlockAcquire(c, key, token, nonce, ttl)
	})
	var (
		total               = len(r.nodes)
		got, ok, failed     int
		created, takenNodes []int
		errs                error
		outcome             error
	)
	for got < total {
		select {
		case res := <-results:
			got++
			switch {
			case res.err != nil:
				failed++
				errs = errors.Join(errs, &rs.RedisError{Node: res.node, Err: res.err})
			case res.v == 1:
				ok++
				created = append(created, res.node)
			case res.v == 2:
				ok++
			default:
				takenNodes = append(takenNodes, res.node)
			}
		case <-ctx.Done():
			if len(takenNodes) > 0 {
				outcome = fmt.Errorf("%w: %w", distlock.ErrNotAcquired, ctx.Err())
			} else {
				outcome = distlock.Unavailable(ctx.Err())
			}
		}
		if outcome != nil {
			break
		}
		if ok >= r.quorum {
			if v, valid := r.validity(start, ttl); valid {
				if got < total {
					r.track(key, st)
				}
				return distlock.Grant{TTL: ttl, Valid: v}, nil
			}
			outcome = errLateQuorum(ttl)
			break
		}
		if ok+total-got < r.quorum {
			// The nodes that are taken alone rule out a quorum: someone
			// else holds the lock. Otherwise failures played a part.
			if len(takenNodes) > total-r.quorum {
				outcome = fmt.Errorf("%w: %w", distlock.ErrNotAcquired, &rs.ErrTaken{Nodes: takenNodes})
			} else {
				outcome = r.errFailed(failed, errs)
			}
			break
		}
	}
	r.cleanup(ctx, key, token, nonce, created, results, total-got)
	return distlock.Grant{}, outcome
}

// cleanup deletes the copies a failed round created: those already known
// and those still to arrive on results. It deletes a copy only if it
// still holds the round's nonce, so a later round of the same token that
// took the copy over keeps it. It returns when done (so the Manager's next
// attempt with the same token does not find this round's copies and take
// them for its own), or when ctx ends, leaving the rest to the background.
func (r *Redlock) cleanup(ctx context.Context, key, token, nonce string, created []int, results <-chan nodeResult, pending int) {
	r.undo(ctx, created, results, pending, func(c context.Context, n *node) {
		_, _ = n.redlockCleanup(c, key, token, nonce)
	})
}

// undo runs fix on every master a failed round changed: those in changed
// and those whose answer, still to arrive on results (pending of them),
// reports a change (1). It returns when done, or when ctx ends, leaving
// the rest to the background (Close waits for it).
func (r *Redlock) undo(ctx context.Context, changed []int, results <-chan nodeResult, pending int, fix func(context.Context, *node)) {
	if len(changed) == 0 && pending == 0 {
		return
	}
	if !r.spawn(1) {
		return
	}
	done := make(chan struct{})
	go func() {
		defer r.wg.Done()
		defer close(done)
		for range pending {
			if res := <-results; res.err == nil && res.v == 1 {
				changed = append(changed, res.node)
			}
		}
		var wg sync.WaitGroup
		for _, i := range changed {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
				fix(cctx, r.nodes[i])
				cancel()
			}()
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Extend resets key's TTL on every master where token holds it, and
// succeeds if a quorum did so within the validity. It never re-creates
// the key.
func (r *Redlock) Extend(ctx context.Context, key, token string, ttl time.Duration) (distlock.Grant, error) {
	start := time.Now()
	results, _ := r.fanout(ctx, r.nodeTimeout(ttl), func(c context.Context, n *node) (int64, error) {
		return n.extend(c, key, token, ttl)
	})
	total := len(r.nodes)
	var got, ok, notHeld, failed int
	var errs error
	for got < total {
		select {
		case res := <-results:
			got++
			switch {
			case res.err != nil:
				failed++
				errs = errors.Join(errs, &rs.RedisError{Node: res.node, Err: res.err})
			case res.v >= 0:
				ok++
			default:
				notHeld++
			}
		case <-ctx.Done():
			return distlock.Grant{}, distlock.Unavailable(ctx.Err())
		}
		if ok >= r.quorum {
			if v, valid := r.validity(start, ttl); valid {
				return distlock.Grant{TTL: ttl, Valid: v}, nil
			}
			return distlock.Grant{}, errLateQuorum(ttl)
		}
		if ok+total-got < r.quorum {
			break
		}
	}
	if notHeld > total-r.quorum { // not held on enough masters, whatever the others say
		return distlock.Grant{}, distlock.ErrNotHeld
	}
	return distlock.Grant{}, r.errFailed(failed, errs)
}

// Transfer implements distlock.Transferer over the masters, with the
// rules of Acquire: every master where from holds key gives it to to (a
// fresh TTL, the waited-for mark kept, nothing published), and the
// transfer succeeds if a quorum did so within the validity (the grant's
// Valid as for Acquire). No master is ever free in between, so nobody
// else can gather a quorum during the round; once it succeeded from holds
// at most N-quorum masters, so its Extend and Release give ErrNotHeld.
//
// Across independent masters a transfer cannot be one atomic step. If the
// round fails — from does not hold a quorum (ErrNotHeld), too many
// masters failed (ErrUnavailable), or the quorum came too late — every
// master it moved is put back as it was (the old value, until its old
// expiry by that master's clock), before Transfer returns or in the
// background once ctx ends. A master that moved and then became
// unreachable keeps to's copy until its TTL: to's holder was never told
// it holds the lock, and from keeps its quorum if it had one.
func (r *Redlock) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (distlock.Grant, error) {
	type saved struct {
		old      string
		expireAt int64
	}
	start := time.Now()
	nonce := newNonce()
	undo := make([]saved, len(r.nodes)) // master i's entry is set before its result is sent
	pending := r.stragglersOf(key)
	results, st := r.fanout(ctx, r.nodeTimeout(ttl), func(c context.Context, n *node) (int64, error) {
		if pending != nil {
			awaitNode(pending, n.index)
		}
		old, at, moved, err := n.redlockTransfer(c, key, from, to, nonce, ttl)
		if !moved {
			return 0, err
		}
		undo[n.index] = saved{old, at}
		return 1, nil
	})
	var (
		total                = len(r.nodes)
		got, notHeld, failed int
		moved                []int
		errs                 error
		outcome              error
	)
	for got < total && outcome == nil {
		select {
		case res := <-results:
			got++
			switch {
			case res.err != nil:
				failed++
				errs = errors.Join(errs, &rs.RedisError{Node: res.node, Err: res.err})
			case res.v == 1:
				moved = append(moved, res.node)
			default:
				notHeld++
			}
		case <-ctx.Done():
			outcome = distlock.Unavailable(ctx.Err())
			continue
		}
		switch {
		case len(moved) >= r.quorum:
			if v, valid := r.validity(start, ttl); valid {
				if got < total {
					r.track(key, st)
				}
				return distlock.Grant{TTL: ttl, Valid: v}, nil
			}
			outcome = errLateQuorum(ttl)
		case len(moved)+total-got < r.quorum:
			if notHeld > total-r.quorum { // not held on enough masters, whatever the others say
				outcome = distlock.ErrNotHeld
			} else {
				outcome = r.errFailed(failed, errs)
			}
		}
	}
	r.undo(ctx, moved, results, total-got, func(c context.Context, n *node) {
		u := undo[n.index]
		_, _ = n.undoTransfer(c, key, to, nonce, u.old, u.expireAt)
	})
	return distlock.Grant{}, outcome
}

// Release deletes key on every master where token holds it. On a master
// that has not yet answered an earlier round of key (an acquire that
// returned on a quorum), the release waits for that answer first (so a
// late grant never lands after the release); the other masters are
// released at once. It succeeds as soon as a quorum released it (the
// other masters finish in the background, tracked like an acquire's),
// returns ErrNotHeld if token cannot have held it on a quorum, and
// ErrUnavailable when too many masters failed to tell.
func (r *Redlock) Release(ctx context.Context, key, token string) error {
	pending := r.stragglersOf(key)
	timeout := releaseTimeout
	for _, st := range pending { // a release may first wait for a late answer
		timeout = max(timeout, time.Until(st.deadline)+releaseTimeout)
	}
	results, st := r.fanout(ctx, timeout, func(c context.Context, n *node) (int64, error) {
		if pending != nil {
			awaitNode(pending, n.index)
		}
		return n.release(c, key, token)
	})
	total := len(r.nodes)
	var released, failed int
	var errs error
	for got := 1; got <= total; got++ {
		select {
		case res := <-results:
			switch {
			case res.err != nil:
				failed++
				errs = errors.Join(errs, &rs.RedisError{Node: res.node, Err: res.err})
			case res.v == 1:
				released++
			}
		case <-ctx.Done():
			r.track(key, st)
			return distlock.Unavailable(ctx.Err())
		}
		if released >= r.quorum {
			if got < total {
				r.track(key, st) // the others finish in the background
			}
			return nil
		}
	}
	if released+failed < r.quorum {
		return distlock.ErrNotHeld
	}
	return r.errFailed(failed, errs)
}

// errLateQuorum is the error of a round whose quorum came after the
// lock's validity had run out.
func errLateQuorum(ttl time.Duration) error {
	return distlock.Unavailable(fmt.Errorf("redlock: quorum reached after the lock's validity (%v TTL too short for these masters?)", ttl))
}

// errFailed is the error of a round in which too many masters failed to
// answer for a quorum either way; errs joins their errors.
func (r *Redlock) errFailed(failed int, errs error) error {
	return distlock.Unavailable(fmt.Errorf("redlock: %d of %d masters failed (quorum %d): %w", failed, len(r.nodes), r.quorum, errs))
}

// Capabilities: no fencing (see the type's doc), cross-instance release,
// TTLs of at least 10ms so that a round leaves the lock some validity.
func (r *Redlock) Capabilities() distlock.Capabilities {
	return distlock.Capabilities{
		Name:                 "redlock",
		Fencing:              false,
		CrossInstanceRelease: true,
		MinTTL:               10 * time.Millisecond,
		Granularity:          time.Millisecond,
	}
}

// SubscribeRelease implements distlock.ReleaseNotifier: it listens on
// every reachable master (a release is announced by each) and returns
// once one of them has confirmed the subscription.
func (r *Redlock) SubscribeRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	ch := make(chan struct{}, 1)
	var (
		stops []func()
		ready <-chan struct{}
		first error
	)
	for _, n := range r.nodes {
		rd, stop, err := n.notify.add(ctx, n.channel(key), ch)
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		stops = append(stops, stop)
		if ready == nil {
			ready = rd
		}
	}
	stopAll := func() {
		for _, s := range stops {
			s()
		}
	}
	if ready == nil {
		return nil, nil, classify(first)
	}
	if err := waitReady(ctx, ready); err != nil {
		stopAll()
		return nil, nil, err
	}
	return ch, stopAll, nil
}

// Close waits for the background work of past rounds, ends the pub/sub
// subscriptions and closes the clients if the backend opened them.
func (r *Redlock) Close() error {
	r.closeOnce.Do(func() {
		r.smu.Lock()
		r.closing = true
		r.smu.Unlock()
		r.wg.Wait()
		r.workers.close()
		var errs error
		for _, n := range r.nodes {
			errs = errors.Join(errs, n.close())
		}
		r.closeErr = errs
	})
	return r.closeErr
}
