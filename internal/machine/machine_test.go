package machine

import (
	"bytes"
	"context"
	"errors"
	"github.com/umlkit/umlkit/internal/syncio"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

// setup gives the test its own runtime dir and returns a StartOptions
// template with the umlkit binary that supervises.
func setup(t *testing.T) StartOptions {
	t.Helper()
	umltest.Kernel(t)
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
	t.Cleanup(func() {
		ins, _ := List()
		for _, in := range ins {
			Kill(context.Background(), in.Spec.Name)
		}
	})
	return StartOptions{Exe: umltest.Umlkit(t), Timeout: 60 * time.Second}
}

func start(t *testing.T, opts StartOptions, name string, args ...string) *Instance {
	t.Helper()
	opts.Name, opts.Args = name, args
	in, err := Start(context.Background(), opts)
	if err != nil {
		logs, _ := os.ReadFile(PathsOf(name).Log())
		t.Fatalf("Start(%s): %v\nconsole:\n%s", name, err, logs)
	}
	return in
}

// consoleRun attaches to name's console, types line, and waits for want.
func consoleRun(t *testing.T, name, line, want string) string {
	t.Helper()
	pr, pw := io.Pipe()
	var out syncio.Buffer
	done := make(chan error, 1)
	go func() { done <- Attach(context.Background(), name, pr, &out) }()
	pw.Write([]byte(line + "\n"))
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("console of %s: no %q after typing %q; got:\n%s", name, want, line, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	pw.Close()
	<-done
	return out.String()
}

// The seed's two instances: one image, two COW files, started in the
// background, listed, attached to, hot-plugged, stopped and killed.
func TestTwoInstances(t *testing.T) {
	opts := setup(t)
	img := umltest.Image(t)
	dir := t.TempDir()
	opts.Dir = dir
	uml1 := start(t, opts, "uml1", "ubd0=root_fs1.cow,"+img, "mem=64M")
	uml2 := start(t, opts, "uml2", "ubd0=root_fs2.cow,"+img, "mem=64M", "hostname=uml2")
	if uml1.State.Status != Running || uml2.State.Status != Running || uml1.State.PID == uml2.State.PID {
		t.Fatalf("states after Start: %+v, %+v", uml1.State, uml2.State)
	}
	for _, f := range []string{"root_fs1.cow", "root_fs2.cow"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("COW file %s not made in the working directory: %v", f, err)
		}
	}
	if _, err := Start(context.Background(), StartOptions{Name: "uml1", Args: []string{"ubd0=x.cow," + img}, Exe: opts.Exe}); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Start(uml1) = %v, want ErrAlreadyStarted", err)
	}
	ins, err := List()
	if err != nil || len(ins) != 2 {
		t.Fatalf("List() = %d instances, %v; want 2", len(ins), err)
	}
	consoleRun(t, "uml2", "echo hello-$((6*7)) $(hostname)", "hello-42 uml2")

	// Hot-plug a disk and read it in the guest.
	data := filepath.Join(dir, "data.img")
	if err := os.WriteFile(data, append([]byte("HOTPLUG-DATA"), make([]byte, 1<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	mc, err := Mconsole("uml1")
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := mc.Config(ctx, "ubd1", data); err != nil {
		t.Fatalf("config ubd1: %v", err)
	}
	consoleRun(t, "uml1", "head -c 12 /dev/ubdb | tr A-Z a-z; echo", "hotplug-data")

	if err := Stop(context.Background(), "uml1", 10*time.Second); err != nil {
		t.Fatalf("Stop(uml1): %v", err)
	}
	if in, _ := Get("uml1"); in.State.Status != Exited || alive(uml1.State.PID) {
		t.Errorf("uml1 after Stop: %+v (pid alive %v)", in.State, alive(uml1.State.PID))
	}
	if err := Kill(context.Background(), "uml2"); err != nil {
		t.Fatalf("Kill(uml2): %v", err)
	}
	if in, _ := Get("uml2"); in.State.Status != Crashed || !strings.Contains(in.State.Error, "killed") {
		t.Errorf("uml2 after Kill: %+v, want crashed, killed", in.State)
	}
	logs, _ := os.ReadFile(PathsOf("uml2").Log())
	if !strings.Contains(string(logs), "umlkit-ready uml2") {
		t.Errorf("console.log of uml2 lacks the ready line:\n%s", logs)
	}
}

// A kernel panic during boot comes back from Start with its message.
func TestStartPanic(t *testing.T) {
	opts := setup(t)
	bad := filepath.Join(t.TempDir(), "zeros.img")
	if err := os.WriteFile(bad, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	opts.Name, opts.Args = "p1", []string{"ubd0=" + bad}
	in, err := Start(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "Unable to mount root fs") {
		t.Fatalf("Start(not a filesystem) = %v, want the kernel panic about the root fs", err)
	}
	if in == nil || in.State.Status != Crashed {
		t.Errorf("state after the panic = %+v, want crashed", in)
	}
}

// The seed's figure 5.2: a second instance on the image the first one has
// open is refused before it boots, naming the first.
func TestLockedImage(t *testing.T) {
	opts := setup(t)
	img := filepath.Join(t.TempDir(), "root_fs")
	b, err := os.ReadFile(umltest.Image(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	first := start(t, opts, "a1", "ubd0="+img)
	opts.Name, opts.Args = "a2", []string{"ubd0=" + img}
	_, err = Start(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "a1") || !strings.Contains(err.Error(), "COW") {
		t.Fatalf("Start(a2 on a1's image) = %v, want an error naming a1 and suggesting a COW file", err)
	}
	if _, err := Get("a2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused instance left state behind: %v", err)
	}
	if in, _ := Get("a1"); in.State.Status != Running || in.State.PID != first.State.PID {
		t.Errorf("a1 after the refused start: %+v", in.State)
	}
}

// An instance on an image umlkit built (its init runs the exec agent)
// runs commands through its supervisor, with exit codes.
func TestExec(t *testing.T) {
	opts := setup(t)
	opts.Dir = t.TempDir()
	start(t, opts, "e1", "ubd0=e1.cow,"+umltest.AgentImage(t), "hostname=e1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Agent(ctx, "e1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	st, err := c.Run(ctx, agent.Cmd{Argv: []string{"sh", "-c", "hostname; exit 3"}, Stdout: &out})
	if err != nil || st.Code != 3 || out.String() != "e1\n" {
		t.Errorf("exec in e1 = %q, %+v, %v; want e1, exit 3", out.String(), st, err)
	}
	// A second client at the same time goes through the same line.
	c2, err := Agent(ctx, "e1")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	out.Reset()
	if st, err := c2.Run(ctx, agent.Cmd{Argv: []string{"uname", "-r"}, Stdout: &out}); err != nil || st.Code != 0 || !strings.HasPrefix(out.String(), "6.") {
		t.Errorf("second client: %q, %+v, %v", out.String(), st, err)
	}
	if err := Stop(context.Background(), "e1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// An instance whose image runs no agent says so, with what to do.
func TestExecNoAgent(t *testing.T) {
	opts := setup(t)
	opts.Dir = t.TempDir()
	start(t, opts, "n1", "ubd0=n1.cow,"+umltest.Image(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Agent(ctx, "n1"); !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), "guest-agent") {
		t.Errorf("Agent(n1) = %v, want ErrNoAgent with the guest-agent command", err)
	}
}
