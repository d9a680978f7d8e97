//go:build !linux

package distlocktest

import "os/exec"

// dieWithParent is a no-op where the kernel cannot tie a child's life to
// its parent's; t.Cleanup still stops the servers.
func dieWithParent(*exec.Cmd) {}
