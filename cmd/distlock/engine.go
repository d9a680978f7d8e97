package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/internal/embedetcd"
)

// engine is the in-process engine the demo runs on without --url.
type engine struct {
	url  string
	desc string
	stop func()
}

// startEngine starts the demo's embedded engine: an etcd server in this
// process (a real distributed store, nothing to install) when the etcd
// backend is compiled in, else the memory backend.
func startEngine(ctx context.Context) (*engine, error) {
	if !slices.Contains(distlock.Schemes(), "etcd") {
		return memoryEngine(), nil
	}
	c, err := embedetcd.Start(ctx, embedetcd.Options{})
	if err != nil {
		return nil, err
	}
	return &engine{
		url:  c.URL(),
		desc: fmt.Sprintf("embedded etcd (in-process, %s)", strings.Join(c.Endpoints(), ",")),
		stop: func() { _ = c.Close() },
	}, nil
}

// memoryEngine is the fallback: the memory backend, in this process.
func memoryEngine() *engine {
	return &engine{url: "memory://distlock-demo", desc: "memory:// (in-process)", stop: func() {}}
}
