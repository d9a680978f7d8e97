//go:build !unix

package main

import (
	"os"
	"os/exec"
)

var (
	sigTERM os.Signal = os.Kill // no SIGTERM: stop at once
	sigKILL os.Signal = os.Kill

	forwardedSignals = []os.Signal{os.Interrupt}
)

func isTerminating(os.Signal) bool { return true }

func isKeyboardSignal(os.Signal) bool { return false }

func configureChild(*exec.Cmd) bool { return false }

func signalChild(p *os.Process, _ bool, s os.Signal) error { return p.Signal(s) }

func childStatus(ps *os.ProcessState) int {
	if ps == nil {
		return exitError
	}
	return ps.ExitCode()
}

func signalExit(os.Signal) int { return 130 }
