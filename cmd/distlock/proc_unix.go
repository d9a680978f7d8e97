//go:build unix

package main

import (
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/term"
)

var (
	sigTERM os.Signal = syscall.SIGTERM
	sigKILL os.Signal = syscall.SIGKILL

	// forwardedSignals are passed on from distlock to CMD.
	forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}
)

// isTerminating reports whether s ends a wait for the lock.
func isTerminating(s os.Signal) bool {
	switch s {
	case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT:
		return true
	}
	return false
}

// isKeyboardSignal reports whether s is one a terminal sends to its whole
// foreground process group (Ctrl-C, Ctrl-\).
func isKeyboardSignal(s os.Signal) bool { return s == syscall.SIGINT || s == syscall.SIGQUIT }

// configureChild puts CMD in its own process group unless stdin is a
// terminal (an interactive CMD must stay in the terminal's foreground group
// to read from it). It reports whether CMD got its own group.
func configureChild(cmd *exec.Cmd) bool {
	attr := &syscall.SysProcAttr{}
	setParentDeathSignal(attr)
	group := !term.IsTerminal(int(os.Stdin.Fd()))
	attr.Setpgid = group
	cmd.SysProcAttr = attr
	return group
}

// signalChild sends s to CMD, or to its whole process group.
func signalChild(p *os.Process, group bool, s os.Signal) error {
	if sig, ok := s.(syscall.Signal); ok && group {
		return syscall.Kill(-p.Pid, sig)
	}
	return p.Signal(s)
}

// childStatus is CMD's exit status as a shell reports it: 128+N when killed
// by signal N.
func childStatus(ps *os.ProcessState) int {
	if ps == nil {
		return exitError
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// signalExit is the exit status for distlock interrupted by s.
func signalExit(s os.Signal) int {
	if sig, ok := s.(syscall.Signal); ok {
		return 128 + int(sig)
	}
	return exitError
}
