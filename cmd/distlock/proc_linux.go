package main

import "syscall"

// setParentDeathSignal makes the kernel send CMD SIGTERM if distlock dies
// (even by SIGKILL): renewals stop then, and CMD must not run on unprotected.
func setParentDeathSignal(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGTERM }
