package conformance

import (
	"context"
	"errors"

	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdModeRevoke revokes a primitive's key as an operator would on the etcd
// cluster of an etcd:// or etcds:// URL: it deletes every entry (holders
// and waiters) under the key's prefix in kind's key space (etcd.ModePrefix
// of the URL's prefix parameter, by default etcd.DefaultPrefix).
func etcdModeRevoke(rawURL string) func(ctx context.Context, key string, kind driver.Kind) error {
	return func(ctx context.Context, key string, kind driver.Kind) error {
		return onEtcd(ctx, rawURL, func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			sp := etcd.ModePrefix(prefix, key, kind)
			if sp == "" {
				return errors.New("conformance: unknown kind")
			}
			_, err := cli.Delete(ctx, sp, clientv3.WithPrefix())
			return err
		})
	}
}

func init() {
	modeRevokers["etcd"] = etcdModeRevoke
	modeRevokers["etcds"] = etcdModeRevoke
}
