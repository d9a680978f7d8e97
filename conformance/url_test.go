package conformance_test

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock/conformance"
)

type stopper struct{}

func (stopper) Stop(context.Context) error  { return nil }
func (stopper) Start(context.Context) error { return nil }

func TestURLInterfaces(t *testing.T) {
	for _, c := range []struct {
		url              string
		opts             []conformance.URLOption
		revoker, stopper bool
	}{
		{url: "redis://127.0.0.1:6379", revoker: true},
		{url: "redlock://127.0.0.1:1,127.0.0.1:2?addr=127.0.0.1:3", revoker: true},
		{url: "etcd://127.0.0.1:2379", revoker: true},
		{url: "postgres://u:p@127.0.0.1/db", revoker: true},
		{url: "memory://x"},
		{url: "memory://x", opts: []conformance.URLOption{conformance.WithStopper(stopper{})}, stopper: true},
		{url: "redis://127.0.0.1:6379", opts: []conformance.URLOption{conformance.WithRevoker(nil), conformance.WithStopper(stopper{})}, stopper: true},
	} {
		h := conformance.URL(c.url, c.opts...)
		_, rv := h.(conformance.Revoker)
		_, st := h.(conformance.Stopper)
		if rv != c.revoker || st != c.stopper {
			t.Errorf("URL(%q, %d options): Revoker %v Stopper %v, want %v %v", c.url, len(c.opts), rv, st, c.revoker, c.stopper)
		}
	}
}

// echoServer answers every line with the same line, until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != msg {
		return &net.AddrError{Err: "echo mismatch: " + line}
	}
	return nil
}

func TestProxyCutsAndRestores(t *testing.T) {
	a, b := echoServer(t), echoServer(t)
	u, st := conformance.Proxy(t, "redlock://"+a+"?addr="+b+"&db=0")
	if strings.Contains(u, a) || strings.Contains(u, b) {
		t.Fatalf("proxied URL %q still names a server", u)
	}
	addrs := []string{strings.TrimPrefix(strings.Split(u, "?")[0], "redlock://")}
	for _, p := range strings.Split(strings.Split(u, "?")[1], "&") {
		if v, ok := strings.CutPrefix(p, "addr="); ok {
			addrs = append(addrs, strings.ReplaceAll(v, "%3A", ":"))
		}
	}
	if len(addrs) != 2 || !strings.Contains(u, "db=0") {
		t.Fatalf("proxied URL %q: want two servers and the other parameters kept", u)
	}
	conns := make([]net.Conn, len(addrs))
	for i, addr := range addrs {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := roundTrip(c, "hello"); err != nil {
			t.Fatalf("through the proxy %s: %v", addr, err)
		}
		conns[i] = c
	}
	ctx := t.Context()
	if err := st.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for i, addr := range addrs {
		if err := roundTrip(conns[i], "again"); err == nil {
			t.Fatalf("an open connection through %s still works after Stop", addr)
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s accepts connections after Stop", addr)
		}
	}
	if err := st.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, addr := range addrs {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("after Start: %v", err)
		}
		err = roundTrip(c, "back")
		c.Close()
		if err != nil {
			t.Fatalf("through %s after Start: %v", addr, err)
		}
	}
}
