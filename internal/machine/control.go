package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/console"
	"github.com/umlkit/umlkit/internal/machine/cmdline"
	"github.com/umlkit/umlkit/internal/machine/preflight"
	"github.com/umlkit/umlkit/mconsole"
)

// StartOptions configures Start.
type StartOptions struct {
	Name string
	// Args are the kernel arguments (disks, NICs, mem=, ...). Start sets
	// umid= to Name, uml_dir= to UMLDir(), con0 to the supervised console
	// and con=null, unless they are given.
	Args []string
	// Dir is the kernel's working directory; "" means the current one.
	Dir string
	// Timeout bounds the boot; zero means 60s.
	Timeout time.Duration
	// WaitKernel returns once the kernel's mconsole answers, instead of
	// waiting for the guest to say it is ready (for images that do not).
	WaitKernel bool
	// Exe is the umlkit binary that supervises; "" means this one.
	Exe string
	// NoAgent leaves out the exec agent's serial line.
	NoAgent bool
}

// Prepare turns user arguments into the kernel command line umlkit runs for
// the instance name, and checks it before boot.
func Prepare(ctx context.Context, name string, args []string, dir string, supervised bool) (*cmdline.CommandLine, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	c, err := cmdline.Parse(args)
	if err != nil {
		return nil, err
	}
	if u, ok := c.Umid(); ok && u != name {
		return nil, fmt.Errorf("umid=%s conflicts with the instance name %s: drop one", u, name)
	}
	c.Set(&cmdline.Umid{Name: name})
	if d, ok := c.UMLDir(); ok && d != UMLDir() {
		return nil, fmt.Errorf("uml_dir=%s: umlkit keeps its instances in %s; drop uml_dir= (or run the kernel yourself)", d, UMLDir())
	}
	c.Set(&cmdline.UMLDir{Dir: UMLDir()})
	if supervised {
		if c.Get("con0") != nil {
			return nil, errors.New("con0= is the supervised console under umlkit vm start: drop it (umlkit vm console attaches to it)")
		}
		c.Set(cmdline.MustParse("con0=fd:0,fd:1").Get("con0"))
	}
	if c.Get("con") == nil {
		c.Set(cmdline.MustParse("con=null").Get("con"))
	}
	if err := os.MkdirAll(UMLDir(), 0o755); err != nil {
		return nil, err
	}
	run := "umlkit vm run"
	if supervised {
		run = "umlkit vm start"
	}
	_, rep := preflight.CheckArgs(ctx, c.Strings(), preflight.Options{Dir: dir, UMLDirs: []string{UMLDir()}, Run: run})
	if err := rep.Err(); err != nil {
		return nil, fmt.Errorf("instance %s would not boot:\n%w", name, err)
	}
	return c, nil
}

// Start starts the instance in the background under a supervisor that
// outlives the caller, and waits until it is ready (or exits, or the
// timeout passes).
func Start(ctx context.Context, opts StartOptions) (*Instance, error) {
	if in, err := Get(opts.Name); err == nil && in.State.Live() {
		return nil, fmt.Errorf("instance %s (pid %d): %w; stop it first: umlkit vm stop %s", opts.Name, in.State.PID, ErrAlreadyStarted, opts.Name)
	}
	dir := opts.Dir
	if dir == "" {
		dir, _ = os.Getwd()
	}
	c, err := Prepare(ctx, opts.Name, opts.Args, dir, true)
	if err != nil {
		return nil, err
	}
	p := PathsOf(opts.Name)
	os.RemoveAll(p.Dir)
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := writeJSON(p.Spec(), Spec{Name: opts.Name, Args: c.Strings(), Dir: dir, Created: time.Now(), Agent: !opts.NoAgent}); err != nil {
		return nil, err
	}
	exe := opts.Exe
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	logf, err := os.OpenFile(p.SupLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	sup := exec.Command(exe, "vm", "supervise", opts.Name)
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sup.Start(); err != nil {
		return nil, fmt.Errorf("start the supervisor of %s: %w", opts.Name, err)
	}
	go sup.Wait() // reaps it if it ends while we wait
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	return waitReady(ctx, opts.Name, timeout, opts.WaitKernel)
}

func waitReady(ctx context.Context, name string, timeout time.Duration, kernelOnly bool) (*Instance, error) {
	deadline := time.Now().Add(timeout)
	for {
		in, err := Get(name)
		if err == nil {
			switch {
			case in.State.Panic != "":
				if in.State.Live() && time.Now().Before(deadline) {
					break // the kernel is going down; report its final state
				}
				return in, fmt.Errorf("instance %s: kernel panic: %s%s (umlkit vm logs %s shows the console)", name, in.State.Panic, panicCause(PathsOf(name).Log()), name)
			case !in.State.Live():
				return in, fmt.Errorf("instance %s %s during boot (exit status %d%s): umlkit vm logs %s shows why", name, in.State.Status, in.State.ExitCode, errSuffix(in.State.Error), name)
			case in.State.Status == Running, kernelOnly && in.State.Status == Booting:
				return in, nil
			}
		}
		if time.Now().After(deadline) {
			if in != nil && in.State.Status == Booting {
				return in, fmt.Errorf("instance %s: the kernel is up but the guest did not say it is ready within %v (images umlkit did not build do not; use --wait kernel)", name, timeout)
			}
			return in, fmt.Errorf("instance %s not ready within %v: umlkit vm logs %s shows the console", name, timeout, name)
		}
		select {
		case <-ctx.Done():
			return in, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// panicCause is what the console log says before the panic about why,
// as text to follow the panic's own message, or "".
func panicCause(log string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return ""
	}
	cause := console.PanicCause(string(b), 4)
	if len(cause) == 0 {
		return ""
	}
	return "; before it the kernel said: " + strings.Join(cause, " / ")
}

func errSuffix(s string) string {
	if s == "" {
		return ""
	}
	return ", " + s
}

// Stop shuts the instance down: through mconsole it syncs and remounts the
// guest's disks read-only and halts; if the kernel is still there after
// half the timeout, SIGTERM; after the timeout, SIGKILL to its process
// group. Stopping a stopped instance is not an error.
func Stop(ctx context.Context, name string, timeout time.Duration) error {
	in, err := Get(name)
	if err != nil {
		return err
	}
	if !in.State.Live() || in.State.PID == 0 {
		return nil
	}
	pid := in.State.PID
	if mc, err := mconsole.DialPath(PathsOf(name).Mconsole(name)); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		mc.Sysrq(cctx, "s")
		mc.Sysrq(cctx, "u")
		mc.Halt(cctx)
		cancel()
		mc.Close()
	}
	if waitGone(ctx, pid, timeout/2) {
		return waitFinal(ctx, name)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(ctx, pid, timeout/2) {
		return waitFinal(ctx, name)
	}
	return Kill(ctx, name)
}

// Kill ends the instance at once: SIGKILL to the kernel's process group.
func Kill(ctx context.Context, name string) error {
	in, err := Get(name)
	if err != nil {
		return err
	}
	if !in.State.Live() || in.State.PID == 0 {
		return nil
	}
	if err := syscall.Kill(-in.State.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill instance %s (pid %d): %w", name, in.State.PID, err)
	}
	waitGone(ctx, in.State.PID, 5*time.Second)
	return waitFinal(ctx, name)
}

func waitGone(ctx context.Context, pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return !alive(pid)
}

// waitFinal waits for the supervisor to record the end.
func waitFinal(ctx context.Context, name string) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		in, err := Get(name)
		if err != nil || !in.State.Live() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("instance %s: the kernel is gone but its supervisor did not record it", name)
}

// Mconsole dials the instance's management console.
func Mconsole(name string) (*mconsole.Client, error) {
	in, err := Get(name)
	if err != nil {
		return nil, err
	}
	if !in.State.Live() {
		return nil, fmt.Errorf("instance %s is %s: start it with umlkit vm start", name, in.State.Status)
	}
	return mconsole.DialPath(PathsOf(name).Mconsole(name))
}

// DetachKey ends an attached console session (Ctrl-]).
const DetachKey = 0x1d

// Attach connects in and out to the instance's console until in ends, the
// detach key is typed, or the instance exits.
func Attach(ctx context.Context, name string, in io.Reader, out io.Writer) error {
	inst, err := Get(name)
	if err != nil {
		return err
	}
	if !inst.State.Live() {
		return fmt.Errorf("instance %s is %s; umlkit vm logs %s shows its console", name, inst.State.Status, name)
	}
	conn, err := net.Dial("unix", PathsOf(name).Console())
	if err != nil {
		return fmt.Errorf("console of %s: %w", name, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(out, conn); done <- struct{}{} }()
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := in.Read(buf)
			for i := 0; i < n; i++ {
				if buf[i] == DetachKey {
					conn.Write(buf[:i])
					done <- struct{}{}
					return
				}
			}
			if n > 0 {
				if _, err := conn.Write(buf[:n]); err != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// ErrNoAgent is returned by Exec when the guest runs no exec agent.
var ErrNoAgent = errors.New("the guest's exec agent does not answer")

// Agent connects to the instance's exec agent through its supervisor.
func Agent(ctx context.Context, name string) (*agent.Client, error) {
	in, err := Get(name)
	if err != nil {
		return nil, err
	}
	if !in.State.Live() {
		return nil, fmt.Errorf("instance %s is %s: start it with umlkit vm start", name, in.State.Status)
	}
	if !in.Spec.Agent {
		return nil, fmt.Errorf("instance %s: %w: it was started without one (--no-agent)", name, ErrNoAgent)
	}
	conn, err := net.Dial("unix", PathsOf(name).Agent())
	if err != nil {
		return nil, fmt.Errorf("instance %s: agent socket: %w", name, err)
	}
	c, err := agent.NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("instance %s: %w: images umlkit builds run it; in others start it with umlkit guest-agent --tty /dev/ttyS%d", name, ErrNoAgent, AgentLine)
	}
	return c, nil
}
