package mconsole

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

func kctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*umltest.DefaultTimeout) // many steps share it
	t.Cleanup(cancel)
	return ctx
}

// TestKernel runs every command against one real instance, started with a
// notify socket, and ends it with halt.
func TestKernel(t *testing.T) {
	umltest.Kernel(t)
	ctx := kctx(t)
	l, err := Listen(filepath.Join(umltest.ShortDir(t), "notify"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	vm := umltest.Boot(t, umltest.Options{Args: []string{"mconsole=notify:" + l.Path()}})

	sock, err := l.WaitReady(ctx)
	if err != nil || sock != vm.MconsolePath() {
		t.Fatalf("notify: WaitReady = %q, %v; want Ready with %s", sock, err, vm.MconsolePath())
	}
	c, err := Dial(vm.Umid, vm.UMLDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if pid, err := c.PID(); err != nil || pid != vm.PID() {
		t.Errorf("PID() = %d, %v; want %d", pid, err, vm.PID())
	}

	t.Run("stack", func(t *testing.T) {
		// Under go test this kernel's stack dump often faults ("Received
		// SIGSEGV in SIGSEGV handler, aborting stack trace!"); the same
		// command on an instance started from a shell gives the trace.
		s, err := c.Stack(ctx, 1)
		if err != nil || !strings.Contains(s, "Call Trace") && !strings.Contains(s, "aborting stack trace") {
			t.Errorf("Stack(1) = %q, %v; want a call trace", s, err)
		}
		if _, err := c.Stack(ctx, 99999); err == nil || !strings.Contains(err.Error(), "Couldn't find that pid") {
			t.Errorf("Stack(99999) = %v, want Couldn't find that pid", err)
		}
		if _, err := c.Command(ctx, "stack"); err != nil {
			t.Error(err)
		}
		if _, err := c.Stack(ctx, 0); err == nil {
			t.Error("Stack(0) succeeded")
		}
	})
	t.Run("version", func(t *testing.T) {
		v, err := c.Version(ctx)
		uname, _ := vm.Run("uname -s -n -r -v -m")
		if err != nil || v != strings.TrimSpace(uname) {
			t.Errorf("Version() = %q, %v; want the guest's uname %q", v, err, uname)
		}
	})
	t.Run("help", func(t *testing.T) {
		r, err := c.Command(ctx, "help")
		if err != nil || !r.OK() || r.Packets != 2 || !strings.HasPrefix(r.Text, "Commands:") ||
			!strings.HasSuffix(r.Text, "stack <pid> - returns the stack of the specified pid\n") {
			t.Errorf("help = %+v, %v; want the 2-packet command list", r, err)
		}
	})
	t.Run("proc", func(t *testing.T) {
		got, err := c.Proc(ctx, "filesystems")
		want, _ := vm.Run("cat /proc/filesystems")
		if err != nil || strings.TrimSpace(got) != strings.TrimSpace(want) || !strings.Contains(got, "ext4") {
			t.Errorf("Proc(filesystems) = %q, %v; want the guest's %q", got, err, want)
		}
		if _, err := c.Proc(ctx, "nonexistent"); err == nil || !strings.Contains(err.Error(), "Failed to open file") {
			t.Errorf("Proc(nonexistent) = %v, want the kernel's refusal", err)
		}
	})
	// 200 mounts make /proc/1/mountinfo about 20 packets long, twice the
	// receive queue limit; the reply must be byte for byte what the guest
	// reads.
	t.Run("long reply complete", func(t *testing.T) {
		if out, st := vm.Run("for i in $(seq 1 200); do mkdir -p /tmp/m$i && mount -t tmpfs t$i /tmp/m$i || echo fail; done"); st != 0 || out != "" {
			t.Fatalf("mounting: %q, %d", out, st)
		}
		want, _ := vm.Run("cat /proc/1/mountinfo")
		r, err := c.Command(ctx, "proc 1/mountinfo")
		if err != nil || !r.OK() {
			t.Fatalf("proc 1/mountinfo = %+v, %v", r, err)
		}
		if r.Packets <= 12 || strings.TrimSpace(r.Text) != strings.TrimSpace(want) {
			t.Errorf("proc 1/mountinfo: %d packets, %d bytes; want more than 12 packets and the guest's %d bytes", r.Packets, len(r.Text), len(want))
		}
		vm.Run("for i in $(seq 1 200); do umount /tmp/m$i; done")
	})
	t.Run("config query", func(t *testing.T) {
		got, err := c.ConfigQuery(ctx, "ubd0")
		want := strings.TrimPrefix(vm.Args[0], "ubd0=")
		if err != nil || got != want {
			t.Errorf("ConfigQuery(ubd0) = %q, %v; want %q", got, err, want)
		}
		if got, err := c.ConfigQuery(ctx, "ubd1"); err != nil || got != "" {
			t.Errorf("ConfigQuery(ubd1) = %q, %v; want empty (unconfigured)", got, err)
		}
		if got, err := c.ConfigQuery(ctx, "con0"); err != nil || got != "fd:0,fd:1" {
			t.Errorf("ConfigQuery(con0) = %q, %v; want fd:0,fd:1", got, err)
		}
	})
	t.Run("hotplug", func(t *testing.T) {
		disk := filepath.Join(t.TempDir(), "hot.img")
		data := make([]byte, 1<<20)
		copy(data, "umlkit-hotplug-marker")
		if err := os.WriteFile(disk, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.Config(ctx, "ubd1", disk); err != nil {
			t.Fatalf("Config(ubd1=%s) = %v", disk, err)
		}
		out, st := vm.Run("for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/ubdb ] && break; sleep 0.2; done; head -c 21 /dev/ubdb")
		if st != 0 || out != "umlkit-hotplug-marker" {
			t.Errorf("guest read of hot-plugged /dev/ubdb = %q, %d; want the marker", out, st)
		}
		if got, _ := c.ConfigQuery(ctx, "ubd1"); got != disk {
			t.Errorf("ConfigQuery(ubd1) after config = %q, want %q", got, disk)
		}
		if err := c.Config(ctx, "ubd1", disk); err == nil || !strings.Contains(err.Error(), "already configured") {
			t.Errorf("second Config(ubd1) = %v, want already configured", err)
		}
		if err := c.Remove(ctx, "ubd1"); err != nil {
			t.Errorf("Remove(ubd1) = %v", err)
		}
		if got, _ := c.ConfigQuery(ctx, "ubd1"); got != "" {
			t.Errorf("ConfigQuery(ubd1) after remove = %q, want empty", got)
		}
	})
	t.Run("remove errors", func(t *testing.T) {
		err := c.Remove(ctx, "ubd0")
		var me *Error
		if !errors.Is(err, syscall.EBUSY) || !errors.As(err, &me) || me.Text != "Device is currently open" {
			t.Errorf("Remove(ubd0) = %v, want EBUSY: Device is currently open", err)
		}
		if r, _ := c.Command(ctx, "remove ubd0"); r.ExitCode() != 240 {
			t.Errorf("remove ubd0 exit code = %d, want 240", r.ExitCode())
		}
		if err := c.Remove(ctx, "ubd5"); !errors.Is(err, syscall.ENODEV) {
			t.Errorf("Remove(ubd5) = %v, want ENODEV", err)
		}
		if err := c.Config(ctx, "ubd2", "/nonexistent/disk"); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("Config(ubd2=/nonexistent/disk) = %v, want ENOENT", err)
		}
	})
	t.Run("log", func(t *testing.T) {
		n := vm.Console.Len()
		if err := c.Log(ctx, "umlkit-log-marker"); err != nil {
			t.Fatal(err)
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, _, err := vm.Console.WaitFrom(lctx, n, "umlkit-log-marker"); err != nil {
			t.Errorf("logged text not on the console: %v", err)
		}
	})
	t.Run("sysrq", func(t *testing.T) {
		// "t" aborts this kernel; "m" (memory) is harmless.
		s, err := c.Sysrq(ctx, "m")
		if err != nil || !strings.Contains(s, "Mem-Info") {
			t.Errorf("Sysrq(m) = %q, %v; want the memory report", s, err)
		}
	})
	t.Run("user notify", func(t *testing.T) {
		if _, st := vm.Run("printf hello-host > /proc/mconsole"); st != 0 {
			t.Fatal("write /proc/mconsole failed")
		}
		ev, err := l.Receive(ctx)
		// The image's init announces itself first ("umlkit-ready NAME").
		for u, ok := ev.(UserNotify); err == nil && ok && strings.HasPrefix(string(u.Data), "umlkit-ready"); u, ok = ev.(UserNotify) {
			ev, err = l.Receive(ctx)
		}
		if u, ok := ev.(UserNotify); err != nil || !ok || string(u.Data) != "hello-host" {
			t.Errorf("Receive = %#v, %v; want UserNotify hello-host", ev, err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		r, err := c.Command(ctx, "frobnicate")
		if err != nil || r.Err != 1 || r.Text != "Unknown command" {
			t.Errorf("frobnicate = %+v, %v", r, err)
		}
	})

	// After stop and go, stack dumps fail on this kernel ("Received SIGSEGV
	// in SIGSEGV handler"), so this comes late.
	t.Run("stop go", func(t *testing.T) {
		if r, err := c.Command(ctx, "stop"); err != nil || r.Text != "stopped" {
			t.Fatalf("stop = %+v, %v", r, err)
		}
		if r, _ := c.Command(ctx, "stop"); r.Err != 1 || r.Text != "Already stopped" {
			t.Errorf("second stop = %+v, want Already stopped", r)
		}
		if v, err := c.Version(ctx); err != nil || v == "" {
			t.Errorf("Version while stopped = %q, %v", v, err)
		}
		if err := c.Go(ctx); err != nil {
			t.Fatalf("Go() = %v", err)
		}
		if err := c.Go(ctx); err == nil || !strings.Contains(err.Error(), "Not stopped") {
			t.Errorf("second Go() = %v, want Not stopped", err)
		}
		if out, _ := vm.Run("echo alive"); out != "alive" {
			t.Errorf("guest after go: %q", out)
		}
	})

	if err := c.Halt(ctx); err != nil {
		t.Fatalf("Halt() = %v", err)
	}
	if err := vm.Wait(umltest.DefaultTimeout); err != nil {
		t.Fatalf("after halt the kernel exited with %v, want status 0", err)
	}
	if _, err := os.Stat(filepath.Dir(vm.MconsolePath())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("umid dir after halt: %v; the kernel removes it on a clean exit", err)
	}
	if _, err := c.Version(ctx); err == nil {
		t.Error("Version after halt succeeded")
	}
}

// TestNotifyPanic boots without a root disk: notify says the console is
// ready, then delivers the kernel's panic message.
func TestNotifyPanic(t *testing.T) {
	umltest.Kernel(t)
	ctx := kctx(t)
	l, err := Listen(filepath.Join(umltest.ShortDir(t), "notify"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	vm := umltest.Boot(t, umltest.Options{Root: filepath.Join(t.TempDir(), "missing"), NoWait: true,
		Args: []string{"mconsole=notify:" + l.Path()}})
	if sock, err := l.WaitReady(ctx); err != nil || sock != vm.MconsolePath() {
		t.Fatalf("WaitReady = %q, %v; want %s", sock, err, vm.MconsolePath())
	}
	ev, err := l.Receive(ctx)
	p, ok := ev.(Panic)
	if err != nil || !ok || !strings.HasPrefix(p.Message, "VFS: Unable to mount root fs") {
		t.Fatalf("Receive = %#v, %v; want Panic about the root fs", ev, err)
	}
	if err := vm.Wait(umltest.DefaultTimeout); err == nil || !strings.Contains(err.Error(), p.Message) {
		t.Errorf("console panic = %v, want the same message as notify (%q)", err, p.Message)
	}
}

// TestReboot: reboot re-executes the kernel in the same process, which
// boots again to a working shell and binds its socket anew; the same
// client follows it, three times over.
func TestReboot(t *testing.T) {
	umltest.Kernel(t)
	ctx := kctx(t)
	vm := umltest.Boot(t, umltest.Options{})
	pid := vm.PID()
	c, err := Dial(vm.MconsolePath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 {
		from := vm.Console.Len()
		if err := c.Reboot(ctx); err != nil {
			t.Fatalf("reboot %d: %v", i, err)
		}
		wctx, cancel := context.WithTimeout(ctx, umltest.DefaultTimeout)
		_, _, err := vm.Console.WaitFrom(wctx, from, umltest.ReadyMarker)
		cancel()
		if err != nil {
			t.Fatalf("reboot %d: the kernel did not boot again: %v", i, err)
		}
		if out, st := vm.Run("echo again"); st != 0 || !strings.Contains(out, "again") {
			t.Fatalf("reboot %d: shell after the reboot: %q, status %d", i, out, st)
		}
		if v, err := c.Version(ctx); err != nil || !strings.Contains(v, "6.") {
			t.Fatalf("reboot %d: version over the same client = %q, %v", i, v, err)
		}
	}
	if vm.PID() != pid {
		t.Errorf("the kernel's pid changed from %d to %d: a reboot stays in its process", pid, vm.PID())
	}
	vm.Poweroff()
}

// TestRebootNoreboot: with noreboot on the command line, reboot ends the
// instance cleanly.
func TestRebootNoreboot(t *testing.T) {
	umltest.Kernel(t)
	ctx := kctx(t)
	vm := umltest.Boot(t, umltest.Options{Args: []string{"noreboot"}})
	c, err := Dial(vm.MconsolePath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Reboot(ctx); err != nil {
		t.Fatalf("Reboot() = %v", err)
	}
	if err := vm.Wait(umltest.DefaultTimeout); err != nil {
		t.Errorf("reboot with noreboot: exit %v, want status 0", err)
	}
}
