// Package testserver holds test helpers that only this repository needs;
// real servers for tests are github.com/distlock/distlock/distlocktest.
package testserver

import (
	"net"
	"sync"
	"testing"
)

// Bogus is a TCP server on 127.0.0.1 that accepts connections but does not
// speak the protocol a client expects: it sends Greeting (nil: nothing at
// all) and then keeps the connection open, reading and dropping whatever
// arrives, until the test ends. Tests of "fail fast on the wrong port" use
// it.
type Bogus struct {
	// Addr is host:port.
	Addr string
}

// SSHGreeting is what an SSH server says first: another protocol on the
// port a client dialled.
var SSHGreeting = []byte("SSH-2.0-OpenSSH_9.6\r\n")

// StartBogus starts a Bogus server sending greeting, closed when t ends.
func StartBogus(t testing.TB, greeting []byte) *Bogus {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if greeting != nil {
					_, _ = c.Write(greeting)
				}
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return &Bogus{Addr: ln.Addr().String()}
}
