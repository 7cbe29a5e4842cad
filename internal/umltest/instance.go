package umltest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umlkit/umlkit/internal/console"
	"github.com/umlkit/umlkit/internal/kernel"
)

// ReadyMarker is what the minimal image's init prints when it is up.
const ReadyMarker = "umlkit-ready"

// DefaultTimeout bounds waits for console output.
const DefaultTimeout = 60 * time.Second

// Options configures Boot.
type Options struct {
	// Umid names the instance; empty means one derived from the test name.
	Umid string
	// Root is the ubd0 argument; empty means a fresh COW file in the
	// test's temp dir over the shared Image.
	Root string
	// Mem is the mem= value; empty means 64M.
	Mem string
	// Args are further kernel arguments (eth, ubd1, hostname=...).
	Args []string
	// NoWait returns from Boot at once instead of waiting for ReadyMarker.
	NoWait bool
	// Netns runs the kernel in this named network namespace (see Netns).
	Netns string
	// Env adds environment variables (KEY=VALUE) for the kernel process.
	Env []string
	// Image is the backing image of the default COW root; empty means
	// the shared Image.
	Image string
	// ExtraFiles are passed to the kernel as descriptors 3, 4, ... (after
	// the agent's line when Agent is set).
	ExtraFiles []*os.File
	// Agent connects the exec agent: the kernel gets ssl1 on a socket
	// whose other end is Instance.Agent, and the guest is told to serve
	// the agent there (the image must be AgentImage).
	Agent bool
}

// Instance is a running kernel under test.
type Instance struct {
	t       testing.TB
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	Console *console.Console
	Umid    string
	UMLDir  string // the uml_dir given to the kernel, with trailing '/'
	Args    []string
	// AgentConn is the host end of the agent's serial line (Options.Agent).
	AgentConn *os.File
	exited    chan struct{}
	exit      error
}

// Boot starts the kernel and, unless opts.NoWait, waits for ReadyMarker.
func Boot(t testing.TB, opts Options) *Instance {
	t.Helper()
	k := Kernel(t)
	umid := opts.Umid
	if umid == "" {
		umid = sanitize(t.Name())
	}
	root := opts.Root
	if root == "" {
		img := opts.Image
		if img == "" {
			img = Image(t)
		}
		root = filepath.Join(t.TempDir(), umid+".cow") + "," + img
	}
	var agentHost, agentGuest *os.File
	if opts.Agent {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		agentHost, agentGuest = os.NewFile(uintptr(fds[0]), "agent-host"), os.NewFile(uintptr(fds[1]), "agent-guest")
		t.Cleanup(func() { agentHost.Close() })
		opts.Args = append([]string{"ssl1=fd:3", "umlkit.agent=ttyS1"}, opts.Args...)
	}
	mem := opts.Mem
	if mem == "" {
		mem = "64M"
	}
	dir := ShortDir(t) + "/"
	args := append([]string{"ubd0=" + root, "mem=" + mem, "umid=" + umid,
		"uml_dir=" + dir, "con=null", "ssl=null", "con0=fd:0,fd:1"}, opts.Args...)
	cmd, err := k.Command(context.Background(), args...)
	if err != nil {
		t.Fatalf("umltest: %v", err)
	}
	cmd.Env = append(cmd.Env, opts.Env...)
	if agentGuest != nil {
		cmd.ExtraFiles = []*os.File{agentGuest} // fd 3 in the kernel
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, opts.ExtraFiles...)
	if opts.Netns != "" {
		ip, err := exec.LookPath("ip")
		if err != nil {
			t.Fatalf("umltest: %v", err)
		}
		// ip netns exec enters the namespace and execs the kernel in the
		// same process, so the pid and process group stay the kernel's.
		cmd.Args = append([]string{"ip", "netns", "exec", opts.Netns, k.Path}, args...)
		cmd.Path = ip
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	i := &Instance{t: t, cmd: cmd, stdin: in, Umid: umid, UMLDir: dir, Args: args, exited: make(chan struct{})}
	t.Logf("umltest: %s %s", k.Path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatalf("umltest: start %s: %v", k.Path, err)
	}
	if agentGuest != nil {
		agentGuest.Close()
		i.AgentConn = agentHost
	}
	i.Console = console.New(out, in, func(line string) { t.Logf("%s| %s", umid, line) })
	go func() {
		<-i.Console.Done()
		i.exit = cmd.Wait()
		close(i.exited)
	}()
	t.Cleanup(i.kill)
	if !opts.NoWait {
		i.WaitFor(ReadyMarker, DefaultTimeout)
	}
	return i
}

func (i *Instance) kill() {
	i.stdin.Close()
	kernel.KillGroup(i.cmd)
	<-i.exited
}

// PID is the kernel's main host process id.
func (i *Instance) PID() int { return i.cmd.Process.Pid }

// MconsolePath is the instance's mconsole socket.
func (i *Instance) MconsolePath() string { return filepath.Join(i.UMLDir, i.Umid, "mconsole") }

func (i *Instance) ctx(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), timeout)
}

// fail reports a console error, with the panic text when there was one.
func (i *Instance) fail(what string, err error) {
	i.t.Helper()
	var pe *console.PanicError
	switch {
	case errors.As(err, &pe):
		i.t.Fatalf("umltest: %s panicked %s: %s", i.Umid, what, pe.Text)
	case errors.Is(err, console.ErrClosed):
		<-i.exited
		i.t.Fatalf("umltest: %s exited (%v) %s", i.Umid, i.exit, what)
	default:
		i.t.Fatalf("umltest: %s %s: %v", i.Umid, what, err)
	}
}

// WaitFor waits for a console line containing marker and returns it. A
// kernel panic, an exit, or the timeout fails the test.
func (i *Instance) WaitFor(marker string, timeout time.Duration) string {
	i.t.Helper()
	ctx, cancel := i.ctx(timeout)
	defer cancel()
	line, err := i.Console.WaitFor(ctx, marker)
	if err != nil {
		i.fail(fmt.Sprintf("waiting for %q", marker), err)
	}
	return line
}

// Run runs a shell command line on the instance's console and returns its
// output and exit status.
func (i *Instance) Run(command string) (string, int) {
	i.t.Helper()
	ctx, cancel := i.ctx(DefaultTimeout)
	defer cancel()
	out, status, err := i.Console.Run(ctx, command)
	if err != nil {
		i.fail(fmt.Sprintf("running %q", command), err)
	}
	return out, status
}

// Send writes text to the console as typed input.
func (i *Instance) Send(text string) {
	i.t.Helper()
	if err := i.Console.Send(text); err != nil {
		i.t.Fatalf("umltest: write to %s console: %v", i.Umid, err)
	}
}

// Poweroff shuts the guest down from inside and waits for the kernel to
// exit; it fails the test unless the exit is clean (status 0).
func (i *Instance) Poweroff() {
	i.t.Helper()
	i.Send("poweroff -f\n")
	err := i.Wait(DefaultTimeout)
	if err != nil && i.abortedAfterHalt(err) {
		// Debian's 6.1 kernel sometimes aborts in its own exit path after
		// the halt, freeing a transport's connection (seen with vde):
		// the guest is down, and that is what a poweroff checks.
		i.t.Logf("umltest: %s: the kernel aborted after it halted (%v); the guest's shutdown was complete", i.Umid, err)
		return
	}
	if err != nil {
		i.t.Fatalf("umltest: %s poweroff: %v", i.Umid, err)
	}
}

// abortedAfterHalt tells whether the kernel died of SIGABRT after its
// console said the system halted or powered down.
func (i *Instance) abortedAfterHalt(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGABRT {
		return false
	}
	for _, l := range i.Console.Lines() {
		if strings.Contains(l, "reboot: System halted") || strings.Contains(l, "reboot: Power down") {
			return true
		}
	}
	return false
}

// Wait waits for the kernel process to exit and returns its exit error, or
// the panic when the kernel panicked.
func (i *Instance) Wait(timeout time.Duration) error {
	select {
	case <-i.exited:
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %v", i.Umid, timeout)
	}
	if p := i.Console.Panic(); p != "" {
		return &console.PanicError{Text: p}
	}
	return i.exit
}
