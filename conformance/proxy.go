package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy puts a TCP proxy on 127.0.0.1 in front of every server rawURL
// names (its host list, and the addr parameters of a redlock URL) and
// returns the URL rewritten to go through the proxies, with a Stopper that
// cuts them: Stop closes the listeners and every open connection, so the
// servers look down to the clients; Start listens again on the same ports.
// The servers themselves are never touched, so this works against any
// deployment. The proxies are closed when t ends.
//
//	u, stopper := conformance.Proxy(t, os.Getenv("LOCK_URL"))
//	conformance.Run(t, conformance.URL(u, conformance.WithStopper(stopper)))
//
// TLS passes through untouched, but the client then checks the server's
// certificate against 127.0.0.1: name the server explicitly (for example
// etcds://…?server_name=) where the URL allows it.
func Proxy(t testing.TB, rawURL string) (string, Stopper) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		t.Fatalf("conformance.Proxy: want a URL with host:port, got a malformed one")
	}
	ps := &proxies{}
	t.Cleanup(ps.close)
	rewrite := func(hosts []string) []string {
		out := make([]string, 0, len(hosts))
		for _, h := range hosts {
			if h = strings.TrimSpace(h); h == "" {
				continue
			}
			p, err := newProxy(h)
			if err != nil {
				t.Fatalf("conformance.Proxy: %v", err)
			}
			ps.list = append(ps.list, p)
			out = append(out, p.addr)
		}
		return out
	}
	c := *u
	c.Host = strings.Join(rewrite(strings.Split(u.Host, ",")), ",")
	if q := u.Query(); q.Has("addr") {
		q["addr"] = rewrite(q["addr"])
		c.RawQuery = q.Encode()
	}
	return c.String(), ps
}

type proxies struct{ list []*proxy }

// Stop cuts every proxy: listeners and open connections are closed.
func (ps *proxies) Stop(context.Context) error {
	for _, p := range ps.list {
		p.stop()
	}
	return nil
}

// Start listens again on every proxy's address.
func (ps *proxies) Start(ctx context.Context) error {
	var errs []error
	for _, p := range ps.list {
		errs = append(errs, p.start(ctx))
	}
	return errors.Join(errs...)
}

func (ps *proxies) close() {
	for _, p := range ps.list {
		p.stop()
	}
}

// proxy forwards connections from addr to target.
type proxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newProxy(target string) (*proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("server %q: want host:port", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{target: target, addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	return p, nil
}

// start listens on p.addr again, retrying while the port is still taken
// (bounded by ctx and five seconds).
func (p *proxy) start(ctx context.Context) error {
	p.mu.Lock()
	running := p.ln != nil
	p.mu.Unlock()
	if running {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.serve(ln)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("proxy for %s: listen on %s again: %w", p.target, p.addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by stop
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.forward(c) }()
		}
	}()
}

// forward copies between c and a new connection to the target until either
// side closes or stop cuts them.
func (p *proxy) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // stopped meanwhile
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// stop closes the listener and every connection, and waits until every
// goroutine of the proxy has returned.
func (p *proxy) stop() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
