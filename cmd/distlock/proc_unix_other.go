//go:build unix && !linux

package main

import "syscall"

// setParentDeathSignal is a no-op where the kernel has no parent-death
// signal: if distlock is killed, CMD keeps running and the lock expires.
func setParentDeathSignal(*syscall.SysProcAttr) {}
