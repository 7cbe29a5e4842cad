package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// EnvTerminal is the terminal emulator command that lab up opens terminal
// windows with; the umlkit command the window runs follows as arguments
// ("xterm -e", "gnome-terminal --", "tmux new-window"). It is shell text:
// $UMLKIT_NODE and $UMLKIT_LAB are set, so
// UMLKIT_TERMINAL='xterm -T "$UMLKIT_NODE" -e' titles each window.
const EnvTerminal = "UMLKIT_TERMINAL"

// TerminalMode says which started nodes get terminal windows.
type TerminalMode int

const (
	// TerminalsAuto opens the terminals lab.conf asks for (NODE[num_terms])
	// when $UMLKIT_TERMINAL names a terminal emulator; without one it only
	// says which nodes asked and how to attach.
	TerminalsAuto TerminalMode = iota
	// TerminalsAll opens num_terms terminals (1 when lab.conf does not
	// say) for every node started, as Kathara does.
	TerminalsAll
	// TerminalsNone opens none and says nothing.
	TerminalsNone
)

// Terminal is one window to open: the umlkit arguments it runs.
type Terminal struct {
	Node string
	Args []string // lab console DIR NODE (the first), lab shell DIR NODE (the others)
}

// TerminalPlan is what lab up does about terminals once nodes started.
type TerminalPlan struct {
	Command string     // the terminal emulator command; "" opens nothing
	Open    []Terminal // in lab.conf order
	Hint    string     // when nothing opens but lab.conf asked for terminals: which nodes, how to attach
}

// TerminalCommand returns the terminal emulator command for mode:
// $UMLKIT_TERMINAL; for TerminalsAll without it, Debian's
// x-terminal-emulator when a display is set. TerminalsAll with neither is
// an error, so that lab up refuses before it starts anything. getenv and
// lookPath are os.Getenv and exec.LookPath outside tests.
func TerminalCommand(mode TerminalMode, getenv func(string) string, lookPath func(string) (string, error)) (string, error) {
	if mode == TerminalsNone {
		return "", nil
	}
	if c := strings.TrimSpace(getenv(EnvTerminal)); c != "" {
		return c, nil
	}
	if mode != TerminalsAll {
		return "", nil
	}
	if getenv("DISPLAY") != "" || getenv("WAYLAND_DISPLAY") != "" {
		if _, err := lookPath("x-terminal-emulator"); err == nil {
			return "x-terminal-emulator -e", nil
		}
	}
	return "", fmt.Errorf("--terminals: no terminal emulator to open: set %s to the command that opens a window running the rest of its arguments, such as %s='xterm -e' (with a display, x-terminal-emulator -e is used when installed), or attach later with umlkit lab console DIR NODE", EnvTerminal, EnvTerminal)
}

// terminalCount is how many terminals node gets in mode.
func terminalCount(n *Node, mode TerminalMode) int {
	switch {
	case mode == TerminalsNone:
		return 0
	case n.NumTerms != nil:
		return *n.NumTerms
	case mode == TerminalsAll:
		return 1
	}
	return 0
}

// PlanTerminals decides the terminals of the nodes started (by name)
// in mode, with the terminal emulator command (from TerminalCommand). A
// node's first terminal attaches to its console; the others are shells,
// each its own.
func PlanTerminals(l *Lab, started []string, mode TerminalMode, command string) TerminalPlan {
	isStarted := map[string]bool{}
	for _, s := range started {
		isStarted[s] = true
	}
	p := TerminalPlan{Command: command}
	var asked []string
	for _, n := range l.Nodes {
		k := terminalCount(n, mode)
		if !isStarted[n.Name] || k == 0 {
			continue
		}
		if command == "" {
			asked = append(asked, fmt.Sprintf("%s (%d)", n.Name, k))
			continue
		}
		for i := 0; i < k; i++ {
			verb := "shell"
			if i == 0 {
				verb = "console"
			}
			p.Open = append(p.Open, Terminal{Node: n.Name, Args: []string{"lab", verb, l.Dir, n.Name}})
		}
	}
	if len(asked) > 0 {
		p.Hint = fmt.Sprintf("terminals asked for in lab.conf (num_terms): %s; attach with umlkit lab console %s NODE (a shell: umlkit lab shell %s NODE), or set %s (such as %s='xterm -e') and lab up opens them",
			strings.Join(asked, ", "), l.Dir, l.Dir, EnvTerminal, EnvTerminal)
	}
	return p
}

// OpenTerminals opens the plan's terminals, each running exe (umlkit)
// with its arguments, in a session of its own so that it outlives lab up.
// What the terminal emulators print goes to DIR/.umlkit/terminal.log.
// It returns once each has been launched, not when it closes.
func OpenTerminals(l *Lab, p TerminalPlan, exe string) error {
	if len(p.Open) == 0 {
		return nil
	}
	logPath := filepath.Join(l.StateDir(), "terminal.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab %s: terminals: %w", l.Dir, err)
	}
	defer log.Close()
	var errs []error
	for _, t := range p.Open {
		// The shell starts the emulator in the background and exits, so
		// nothing waits here for the window to close and no child is left
		// for this process to reap.
		script := p.Command + ` "$@" </dev/null &`
		cmd := exec.Command("/bin/sh", append([]string{"-c", script, "umlkit-terminal", exe}, t.Args...)...)
		cmd.Env = append(os.Environ(), "UMLKIT_NODE="+t.Node, "UMLKIT_LAB="+l.Name())
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Run(); err != nil {
			errs = append(errs, fmt.Errorf("node %s: open a terminal with %s=%q: %w (see %s)", t.Node, EnvTerminal, p.Command, err, logPath))
		}
	}
	return errors.Join(errs...)
}
