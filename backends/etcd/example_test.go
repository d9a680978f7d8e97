package etcd_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/internal/embedetcd"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A Manager on your own etcd client. (The example starts an in-process etcd;
// point the client at your cluster instead.)
func Example() {
	ctx := context.Background()
	cluster, err := embedetcd.Start(ctx, embedetcd.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()

	lm := distlock.New(etcd.New(cli, etcd.WithPrefix("myapp/locks/")))
	defer lm.Close()

	l, err := lm.Lock(ctx, "seat:42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	// Pass the fence to the resource the lock protects: it is the key's
	// create revision, strictly increasing across grants.
	fmt.Println("held, fenced:", l.Fence() > 0)
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released")
	// Output:
	// held, fenced: true
	// released
}

// Opening by URL: import the package for its side effect and pass an
// etcd:// (or etcds://) URL to distlock.Open.
func Example_open() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cluster, err := embedetcd.Start(ctx, embedetcd.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	// e.g. "etcds://user:password@10.0.0.1:2379,10.0.0.2:2379?prefix=myapp/locks/&ca=/etc/etcd/ca.pem"
	lm, err := distlock.Open(ctx, cluster.URL()+"?prefix=myapp/locks/")
	if err != nil {
		log.Fatal(err)
	}
	defer lm.Close()
	// The embedded member runs with a 100ms election timeout, so the
	// server grants leases from 1s; with etcd's default timing it is 2s.
	fmt.Println(lm.Capabilities().MinTTL, lm.Capabilities().Granularity)
	err = lm.Do(ctx, "nightly-report", 5*time.Second, func(ctx context.Context) error {
		return nil // runs only while the lock is held; ctx ends if it is lost
	})
	fmt.Println(err)
	// Output:
	// 1s 1s
	// <nil>
}
