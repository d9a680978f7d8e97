package main

// Every backend registers its URL schemes when imported: the CLI imports
// them all so that any URL works.
import (
	_ "github.com/distlock/distlock/backends/etcd"
	_ "github.com/distlock/distlock/backends/memory"
	_ "github.com/distlock/distlock/backends/postgres"
	_ "github.com/distlock/distlock/backends/redsync"
)
