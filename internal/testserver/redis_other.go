//go:build !linux

package testserver

import "os/exec"

// dieWithParent is a no-op where the kernel cannot tie a child's life to
// its parent's; t.Cleanup still stops the servers.
func dieWithParent(*exec.Cmd) {}
