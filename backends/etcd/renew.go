package etcd

import (
	"context"
	"errors"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// renewer refreshes leases over one long-lived keep-alive stream per
// backend, where clientv3's KeepAliveOnce opens (and closes) a gRPC stream
// per call. The server answers a stream's requests in order, so responses
// are matched to callers first come, first served per lease. When the
// stream cannot be had or breaks, callers fall back to KeepAliveOnce.
type renewer struct {
	mu       sync.Mutex
	stream   grpc.BidiStreamingClient[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]
	cancel   context.CancelFunc
	waiting  map[int64][]*renewal
	failedAt time.Time
}

type renewal struct {
	ch        chan renewed
	abandoned bool // its caller gave up: drop the response
}

type renewed struct {
	ttl int64
	err error
}

var errStreamBroken = errors.New("etcd keep-alive stream broken")

// renew refreshes lease id and returns its TTL in seconds; the lease lives
// at least that long after the moment renew was called.
func (b *Backend) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	if r := b.rn.send(b, id); r != nil {
		select {
		case res := <-r.ch:
			if !errors.Is(res.err, errStreamBroken) {
				return res.ttl, res.err
			}
		case <-ctx.Done():
			b.rn.mu.Lock()
			r.abandoned = true
			b.rn.mu.Unlock()
			return 0, ctx.Err()
		}
	}
	ka, err := b.cli.KeepAliveOnce(ctx, id)
	if err != nil {
		return 0, err
	}
	return ka.TTL, nil
}

// send sends a keep-alive request for id on the stream, opening it if need
// be; nil means no stream (fall back).
func (rn *renewer) send(b *Backend, id clientv3.LeaseID) *renewal {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	if rn.stream == nil {
		if time.Since(rn.failedAt) < time.Second || b.ctx.Err() != nil {
			return nil
		}
		sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(b.ctx))
		// Not WaitForReady: without a connection, fall back at once.
		st, err := pb.NewLeaseClient(b.cli.ActiveConnection()).LeaseKeepAlive(sctx, grpc.WaitForReady(false))
		if err != nil {
			cancel()
			rn.failedAt = time.Now()
			return nil
		}
		rn.stream, rn.cancel = st, cancel
		if rn.waiting == nil {
			rn.waiting = map[int64][]*renewal{}
		}
		b.wg.Add(1)
		go rn.recv(b, st)
	}
	if err := rn.stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		rn.dropLocked(rn.stream)
		return nil
	}
	r := &renewal{ch: make(chan renewed, 1)}
	rn.waiting[int64(id)] = append(rn.waiting[int64(id)], r)
	return r
}

func (rn *renewer) recv(b *Backend, st grpc.BidiStreamingClient[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) {
	defer b.wg.Done()
	for {
		resp, err := st.Recv()
		rn.mu.Lock()
		if err != nil {
			rn.dropLocked(st)
			rn.mu.Unlock()
			return
		}
		q := rn.waiting[resp.ID]
		if len(q) > 0 {
			r := q[0]
			if len(q) == 1 {
				delete(rn.waiting, resp.ID)
			} else {
				rn.waiting[resp.ID] = q[1:]
			}
			if !r.abandoned {
				res := renewed{ttl: resp.TTL}
				if resp.TTL <= 0 {
					res.err = rpctypes.ErrLeaseNotFound
				}
				r.ch <- res
			}
		}
		rn.mu.Unlock()
	}
}

// dropLocked forgets a broken stream and sends its waiters to the fallback.
func (rn *renewer) dropLocked(st grpc.BidiStreamingClient[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) {
	if rn.stream != st {
		return
	}
	rn.stream = nil
	rn.cancel()
	for id, q := range rn.waiting {
		for _, r := range q {
			r.ch <- renewed{err: errStreamBroken}
		}
		delete(rn.waiting, id)
	}
}
