package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/vswitch"
)

func (l *Lab) bessPath(domain string) string { return filepath.Join(l.RunDir(), domain+".bess") }
func (l *Lab) mgmtPath(domain string) string { return filepath.Join(l.RunDir(), domain+".mgmt") }
func (l *Lab) pidPath(domain string) string  { return filepath.Join(l.RunDir(), domain+".pid") }

// SwitchClient talks to the switch of domain.
func (l *Lab) SwitchClient(domain string) (*vswitch.Client, error) {
	if l.Domain(domain) == nil {
		var names []string
		for _, d := range l.Domains {
			names = append(names, d.Name)
		}
		return nil, fmt.Errorf("lab %s has no collision domain %s (it has %s)", l.Dir, domain, strings.Join(names, ", "))
	}
	c := &vswitch.Client{Path: l.mgmtPath(domain)}
	if _, err := c.Stats(); err != nil {
		return nil, fmt.Errorf("collision domain %s: its switch does not answer (is the lab up? umlkit lab up %s): %w", domain, l.Dir, err)
	}
	return c, nil
}

// startSwitch runs the domain's switch in the background unless it
// answers already.
func (l *Lab) startSwitch(ctx context.Context, d *Domain, exe string) error {
	mgmt := l.mgmtPath(d.Name)
	if len(mgmt) > hostdirs.MaxSocketPath {
		return fmt.Errorf("collision domain %s: socket path %s is longer than %d bytes: use a shorter domain name or set %s to a shorter directory", d.Name, mgmt, hostdirs.MaxSocketPath, hostdirs.EnvRuntime)
	}
	c := &vswitch.Client{Path: mgmt}
	if _, err := c.Stats(); err == nil {
		return nil
	}
	if err := os.MkdirAll(l.RunDir(), 0o700); err != nil {
		return err
	}
	args := []string{"switch", "--bess", l.bessPath(d.Name), "--mgmt", mgmt, "--no-keeper"}
	if d.Hub {
		args = append(args, "--hub")
	}
	logf, err := os.OpenFile(filepath.Join(l.RunDir(), d.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("collision domain %s: start its switch: %w", d.Name, err)
	}
	os.WriteFile(l.pidPath(d.Name), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if _, err := c.Stats(); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(l.RunDir(), d.Name+".log"))
			return fmt.Errorf("collision domain %s: its switch exited at once (%v): %s", d.Name, err, lastLines(string(b), 3))
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopSwitch ends the domain's switch and removes its sockets.
func (l *Lab) stopSwitch(d *Domain) error {
	b, err := os.ReadFile(l.pidPath(d.Name))
	if err == nil {
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 0 && isSwitch(pid) {
			syscall.Kill(pid, syscall.SIGTERM)
			// No instance is left on it, so there is nothing to drain: a
			// switch that has not exited after a second is killed.
			deadline := time.Now().Add(time.Second)
			for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if syscall.Kill(pid, 0) == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, p := range []string{l.pidPath(d.Name), l.bessPath(d.Name), l.mgmtPath(d.Name)} {
		os.Remove(p)
	}
	return nil
}

// isSwitch checks that pid is still a umlkit switch (pids are reused).
func isSwitch(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 1 && args[1] == "switch"
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// Capture writes the pcap stream of domain's switch to w until stop closes.
func Capture(l *Lab, domain string, w io.Writer, stop <-chan struct{}) error {
	c, err := l.SwitchClient(domain)
	if err != nil {
		return err
	}
	return c.Capture(w, 0, 0, stop)
}
