package mconsole

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/umltest"
)

// peer is a stand-in kernel on a real socket, for what the kernel cannot
// be made to do on demand: answer with many packets at once, without
// blocking, as the kernel does.
type peer struct {
	conn    *net.UnixConn
	dropped atomic.Int64 // sends that failed with EAGAIN
	wg      sync.WaitGroup
}

func startPeer(t *testing.T, path string, answer func(req string) []Packet) *peer {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{conn: conn}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			req, err := ParseRequest(buf[:n])
			if err != nil {
				continue
			}
			rc, _ := conn.SyscallConn()
			for _, pk := range answer(req.Text) {
				b, _ := AppendPacket(nil, pk)
				rc.Write(func(fd uintptr) bool {
					sa := &syscall.SockaddrUnix{Name: from.Name}
					if err := syscall.Sendto(int(fd), b, syscall.MSG_DONTWAIT, sa); errors.Is(err, syscall.EAGAIN) {
						p.dropped.Add(1)
					}
					return true
				})
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); p.wg.Wait() })
	return p
}

func manyPackets(n int) []Packet {
	var ps []Packet
	for i := range n {
		ps = append(ps, Packet{More: i < n-1, Text: fmt.Sprintf("%04d %s\n", i, strings.Repeat("x", 400))})
	}
	return ps
}

// The peer sends 60 packets without waiting for the reader (as the kernel
// does). The client's connected socket takes them all, although the
// receive queue limit is 10; a plain bound socket, like uml_mconsole's,
// loses most of them while it is not reading.
func TestLongReplyNotDropped(t *testing.T) {
	dir := umltest.ShortDir(t)
	path := filepath.Join(dir, "mconsole")
	p := startPeer(t, path, func(string) []Packet { return manyPackets(60) })
	c, err := DialPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.Command(context.Background(), "proc big")
	if err != nil || r.Packets != 60 || !strings.HasPrefix(r.Text, "0000 ") || !strings.Contains(r.Text, "\n0059 ") {
		t.Fatalf("Command(proc big) = %d packets, %v; want all 60 (peer dropped %d)", r.Packets, err, p.dropped.Load())
	}

	// Control: an unconnected socket that reads late loses packets.
	if b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen"); err != nil || strings.TrimSpace(string(b)) != "10" {
		t.Logf("net.unix.max_dgram_qlen is %q (%v), not the default 10: skipping the control", b, err)
		return
	}
	plain, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "@umlkit-test-plain-" + dir, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	req, _ := AppendRequest(nil, "proc big")
	before := p.dropped.Load()
	if _, err := plain.WriteToUnix(req, &net.UnixAddr{Name: path, Net: "unixgram"}); err != nil {
		t.Fatal(err)
	}
	got := 0
	plain.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1024)
	time.Sleep(200 * time.Millisecond) // a reader that is not scheduled in time
	for {
		if _, err := plain.Read(buf); err != nil {
			break
		}
		got++
		plain.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	if got == 60 || p.dropped.Load() == before {
		t.Errorf("unconnected reader got %d of 60 packets (dropped %d); the queue limit should have dropped some", got, p.dropped.Load()-before)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := umltest.ShortDir(t)
	path := filepath.Join(dir, "mconsole")
	startPeer(t, path, func(req string) []Packet {
		switch req {
		case "remove ubd0":
			return []Packet{{Err: -int32(syscall.EBUSY), Text: "Device is currently open"}}
		case "remove ubd5":
			return []Packet{{Err: -int32(syscall.ENODEV), Text: "Device doesn't exist"}}
		case "silent":
			return nil
		case "half":
			return []Packet{{More: true, Text: "first"}}
		}
		return []Packet{{Err: 1, Text: "Unknown command"}}
	})
	c, err := DialPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	err = c.Remove(ctx, "ubd0")
	var me *Error
	if !errors.As(err, &me) || !errors.Is(err, syscall.EBUSY) || me.Text != "Device is currently open" {
		t.Errorf("Remove(ubd0) = %v, want *Error wrapping EBUSY", err)
	}
	r, _ := c.Command(ctx, "remove ubd0")
	if r.ExitCode() != 240 || r.OK() {
		t.Errorf("exit code for -EBUSY = %d, want 240 (uml_mconsole's)", r.ExitCode())
	}
	if err := c.Remove(ctx, "ubd5"); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("Remove(ubd5) = %v, want ENODEV", err)
	}
	r, _ = c.Command(ctx, "remove ubd5")
	if r.ExitCode() != 237 {
		t.Errorf("exit code for -ENODEV = %d, want 237", r.ExitCode())
	}
	_, err = c.Help(ctx)
	if !errors.As(err, &me) || me.Code != 1 || errors.Unwrap(err) != nil {
		t.Errorf("Help() from a peer that refuses = %v, want *Error code 1 without errno", err)
	}
	if err := c.Remove(ctx, "ubd0 extra"); err == nil {
		t.Error("Remove with a space in the device succeeded")
	}

	// No reply at all: the context bounds the wait.
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.Command(tctx, "silent")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Command(silent) = %v, want the context's deadline", err)
	}
	// A reply cut short, then a normal command: the leftovers are dropped
	// and the next reply is its own.
	tctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.Command(tctx, "half")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "incomplete after 1 packets") {
		t.Errorf("Command(half) = %v, want an incomplete-reply error", err)
	}
	if r, err := c.Command(ctx, "other"); err != nil || r.Text != "Unknown command" {
		t.Errorf("Command after a broken reply = %+v, %v", r, err)
	}

	// Close wakes a blocked command.
	done := make(chan error, 1)
	go func() { _, err := c.Command(ctx, "silent"); done <- err }()
	time.Sleep(100 * time.Millisecond)
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Command during Close = %v, want net.ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestDialNoInstance(t *testing.T) {
	dir := umltest.ShortDir(t)
	t.Setenv("HOME", dir)
	_, err := Dial("nosuch", dir)
	var nf *NotFoundError
	if !errors.As(err, &nf) || len(nf.Tried) != 4 || nf.Tried[0] != filepath.Join(dir, "nosuch", "mconsole") {
		t.Fatalf("Dial(nosuch) = %v, want *NotFoundError listing 4 paths", err)
	}
	// A socket file nobody serves: the command says the instance is not running.
	path := filepath.Join(dir, "dead")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // leaves the file
	c, err := DialPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Version(context.Background()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Version on a dead socket = %v, want ECONNREFUSED", err)
	}
}

func TestResolve(t *testing.T) {
	dir := umltest.ShortDir(t)
	home := filepath.Join(dir, "home")
	t.Setenv("HOME", home)
	mk := func(p string) string {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return p
	}
	inHome := mk(filepath.Join(home, ".uml", "a", "mconsole"))
	inDir := mk(filepath.Join(dir, "u", "b", "mconsole"))
	both := mk(filepath.Join(dir, "u", "a", "mconsole"))
	for _, tc := range []struct {
		name string
		dirs []string
		want string
	}{
		{"a", nil, inHome},
		{"a", []string{filepath.Join(dir, "u")}, both}, // uml_dirs first
		{"b", []string{filepath.Join(dir, "u")}, inDir},
		{inDir, nil, inDir},               // a socket path
		{filepath.Dir(inDir), nil, inDir}, // an instance directory
		{filepath.Join(home, ".uml", "a"), nil, inHome},
	} {
		got, err := Resolve(tc.name, tc.dirs...)
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q, %q) = %q, %v; want %q", tc.name, tc.dirs, got, err, tc.want)
		}
	}
	if _, err := Resolve(filepath.Join(dir, "u")); err == nil {
		t.Error("Resolve(a directory without a socket) succeeded")
	}
}

func TestListenSocketRules(t *testing.T) {
	dir := umltest.ShortDir(t)
	path := filepath.Join(dir, "notify")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("notify socket mode = %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Errorf("second Listen(%s) = %v, want ErrInUse", path, err)
	}
	// Events arrive typed; garbage is a FormatError and does not stop
	// the listener.
	send := func(b []byte) {
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(b)
	}
	send([]byte("junk"))
	send(golden(t, "notify-user.bin"))
	ctx := context.Background()
	var fe *FormatError
	if _, err := l.Receive(ctx); !errors.As(err, &fe) {
		t.Errorf("Receive(junk) = %v, want *FormatError", err)
	}
	if ev, err := l.Receive(ctx); err != nil || string(ev.(UserNotify).Data) != "user-notify-data" {
		t.Errorf("Receive = %v, %v; want the user notification", ev, err)
	}
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if _, err := l.Receive(tctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Receive with nothing sent = %v, want the deadline", err)
	}
	cancel()
	send(golden(t, "notify-panic.bin"))
	if _, err := l.WaitReady(ctx); !strings.Contains(fmt.Sprint(err), "kernel panic: VFS: Unable to mount root fs") {
		t.Errorf("WaitReady after a panic = %v, want a *PanicError", err)
	}
	l.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}

	// A stale socket file is replaced; a regular file is not.
	stale, _ := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	stale.Close()
	l, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket = %v", err)
	}
	l.Close()
	os.WriteFile(path, []byte("x"), 0o644)
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file = %v, want a refusal", err)
	}
	if _, err := Listen(dir + "/" + strings.Repeat("n", 120)); err == nil {
		t.Error("Listen on a 120+ byte path succeeded")
	}
}

// Commands from many goroutines share one client; each gets its own reply.
func TestConcurrentCommands(t *testing.T) {
	path := filepath.Join(umltest.ShortDir(t), "mconsole")
	startPeer(t, path, func(req string) []Packet {
		return []Packet{{More: true, Text: req}, {Text: "|" + req}}
	})
	c, err := DialPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				q := fmt.Sprintf("proc g%d-%d", g, i)
				r, err := c.Command(context.Background(), q)
				if err != nil || r.Text != q+"|"+q || r.Packets != 2 {
					t.Errorf("Command(%q) = %+v, %v", q, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// After a reboot the kernel binds its socket anew at the same path; the
// same client must reach the new socket.
func TestClientFollowsRebind(t *testing.T) {
	path := filepath.Join(umltest.ShortDir(t), "mconsole")
	first := startPeer(t, path, func(string) []Packet { return []Packet{{Text: "first"}} })
	c, err := DialPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Command(context.Background(), "version"); err != nil || r.Text != "first" {
		t.Fatalf("Command = %+v, %v", r, err)
	}
	first.conn.Close()
	os.Remove(path)
	startPeer(t, path, func(string) []Packet { return []Packet{{Text: "second"}} })
	if r, err := c.Command(context.Background(), "version"); err != nil || r.Text != "second" {
		t.Errorf("Command after the socket was bound again = %+v, %v; want the new socket's reply", r, err)
	}
}
