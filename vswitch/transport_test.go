package vswitch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/umlkit/umlkit/internal/umltest"
)

// shortDir is a temp dir with a short path, for sockets.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vsw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func dialBESS(t testing.TB, path string) *testPort {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &testPort{t: t, c: c}
}

func waitPorts(t testing.TB, s *Switch, n int) {
	t.Helper()
	for range 500 {
		if len(s.Ports()) == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("switch has %d ports, want %d", len(s.Ports()), n)
}

func TestBESS(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "bess.sock")
	s := New(Config{})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stat %s = %v, %v; want mode 0600", sock, fi, err)
	}
	a, b := dialBESS(t, sock), dialBESS(t, sock)
	waitPorts(t, s, 2)
	f := eth(bcast, macA, "hello over bess")
	a.send(f)
	b.expectNext(f)
	g := eth(macA, macB, "reply")
	b.send(g)
	a.expectNext(g)
	if ps := s.Ports(); ps[0].Kind != "bess" || ps[0].Peer != fmt.Sprintf("pid %d", os.Getpid()) {
		t.Errorf("Ports()[0] = %+v, want kind bess and our pid", ps[0])
	}
	a.c.Close()
	waitPorts(t, s, 1)
	s.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, stat %s = %v; want it removed", sock, err)
	}
}

func TestListenSafety(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "s")
	// A stale socket file: bound, then closed without unlinking.
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	s1 := newSwitch(t, Config{})
	if err := s1.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatalf("ListenBESS over a stale socket: %v", err)
	}
	s2 := newSwitch(t, Config{})
	if err := s2.ListenBESS(sock, ListenOptions{GID: -1}); !errors.Is(err, ErrInUse) {
		t.Errorf("ListenBESS on a live socket = %v, want ErrInUse", err)
	}
	if err := s2.ListenDaemon(sock, ListenOptions{GID: -1}); !errors.Is(err, ErrInUse) {
		t.Errorf("ListenDaemon on a live BESS socket = %v, want ErrInUse", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o644)
	if err := s2.ListenBESS(file, ListenOptions{GID: -1}); err == nil {
		t.Error("ListenBESS on a regular file succeeded")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Error("ListenBESS clobbered a regular file")
	}
	if err := s2.ListenDaemon(filepath.Join(dir, "g"), ListenOptions{Mode: 0o660, GID: os.Getgid()}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "g")); fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %v, want 0660", fi.Mode().Perm())
	}
}

// daemonClient speaks the daemon protocol like UML (abstract 110-byte
// data address, sendto) or like libvdeplug (a path, connect after the
// reply).
type daemonClient struct {
	t      testing.TB
	ctl    *net.UnixConn
	fd     int
	swAddr unix.RawSockaddrUnix
	uml    bool
}

func dialDaemon(t testing.TB, ctl string, uml bool, descr string) *daemonClient {
	t.Helper()
	dc := &daemonClient{t: t, uml: uml}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ctl, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dc.ctl = c
	dc.fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); unix.Close(dc.fd) })
	req := &Request{Version: 3, Description: descr}
	my := unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	if uml {
		binary.LittleEndian.PutUint32(req.Addr[4:], uint32(os.Getpid()))
		binary.LittleEndian.PutUint32(req.Addr[8:], uint32(time.Now().UnixNano()))
		req.Addr[60] = 0xaa // garbage, as UML leaves
	} else {
		copy(req.Addr[:], filepath.Join(filepath.Dir(ctl), fmt.Sprintf(".%05d-%d", os.Getpid(), time.Now().UnixNano()%100000)))
	}
	for i, b := range req.Addr {
		my.Path[i] = int8(b)
	}
	if err := rawSockaddr(unix.SYS_BIND, dc.fd, &my); err != nil {
		t.Fatal(err)
	}
	b := AppendRequest(nil, req)
	if uml {
		b = append(b, 0, 0) // struct padding
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 200)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(reply)
	if err != nil || n != SockaddrLen {
		t.Fatalf("reply: %d bytes, %v; want %d", n, err, SockaddrLen)
	}
	c.SetReadDeadline(time.Time{})
	dc.swAddr.Family = unix.AF_UNIX
	for i := range dc.swAddr.Path {
		dc.swAddr.Path[i] = int8(reply[2+i])
	}
	if !uml {
		if err := rawSockaddr(unix.SYS_CONNECT, dc.fd, &dc.swAddr); err != nil {
			t.Fatal(err)
		}
		os.Remove(req.AddrPath())
	}
	return dc
}

func (dc *daemonClient) send(b []byte) {
	dc.t.Helper()
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(dc.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, uintptr(unsafe.Pointer(&dc.swAddr)), SockaddrLen)
	if e != 0 {
		dc.t.Fatalf("sendto switch: %v", e)
	}
}

func (dc *daemonClient) recv() []byte {
	dc.t.Helper()
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(dc.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	b := make([]byte, 10000)
	n, _, err := unix.Recvfrom(dc.fd, b, 0)
	if err != nil {
		dc.t.Fatalf("recv: %v", err)
	}
	return b[:n]
}

func TestDaemonProtocol(t *testing.T) {
	dir := shortDir(t)
	ctl := filepath.Join(dir, "ctl")
	s := newSwitch(t, Config{})
	if err := s.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	uml := dialDaemon(t, ctl, true, "")
	vde := dialDaemon(t, ctl, false, "my plug")
	waitPorts(t, s, 2)
	f := eth(bcast, macA, "from uml")
	uml.send(f)
	if got := vde.recv(); string(got) != string(f) {
		t.Fatalf("vde client got %x, want %x", head(got), head(f))
	}
	g := eth(macA, macB, "from vde")
	vde.send(g)
	if got := uml.recv(); string(got) != string(g) {
		t.Fatalf("uml client got %x, want %x", head(got), head(g))
	}
	ps := s.Ports()
	if ps[1].Kind != "daemon" || ps[1].Peer != fmt.Sprintf("pid %d my plug", os.Getpid()) {
		t.Errorf("Ports()[1] = %+v, want a daemon port named after pid and description", ps[1])
	}
	// Closing the control connection ends the port.
	uml.ctl.Close()
	waitPorts(t, s, 1)
}

// Bad requests are rejected and their connections closed, while a good
// client keeps forwarding, and nothing leaks.
func TestDaemonBadInput(t *testing.T) {
	fds0, g0 := countFDs(t), runtime.NumGoroutine()
	dir := shortDir(t)
	ctl := filepath.Join(dir, "ctl")
	s := New(Config{HandshakeTimeout: 300 * time.Millisecond})
	if err := s.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	a := dialDaemon(t, ctl, true, "")
	b := dialDaemon(t, ctl, false, "")
	good := AppendRequest(nil, &Request{Version: 3, Addr: [108]byte{0, 'x'}})
	wrongVersion := append([]byte{}, good...)
	wrongVersion[4] = 2
	wrongFamily := append([]byte{}, good...)
	wrongFamily[12] = 2
	noAddr := AppendRequest(nil, &Request{Version: 3})
	for _, tc := range []struct {
		name string
		req  []byte
		eof  bool // close our side after sending
	}{
		{"silent", nil, false},
		{"short", good[:50], true},
		{"short-no-eof", good[:50], false},
		{"garbage", []byte("GET / HTTP/1.0\r\n\r\n" + string(make([]byte, 120))), false},
		{"wrong-version", wrongVersion, false},
		{"wrong-family", wrongFamily, false},
		{"empty-address", noAddr, false},
		{"oversized", append(append([]byte{}, good...), make([]byte, 300)...), false},
		{"unreachable-address", good, false},
	} {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ctl, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		if tc.req != nil {
			c.Write(tc.req)
		}
		if tc.eof {
			c.CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 200))
		if err != io.EOF {
			t.Errorf("%s: read = %d, %v; want the switch to close the connection", tc.name, n, err)
		}
		c.Close()
		f := eth(bcast, macA, tc.name)
		a.send(f)
		if got := b.recv(); string(got) != string(f) {
			t.Errorf("%s: good client got %x", tc.name, head(got))
		}
	}
	if n := len(s.Ports()); n != 2 {
		t.Errorf("%d ports after bad clients, want 2", n)
	}
	s.Close()
	a.ctl.Close()
	b.ctl.Close()
	unix.Close(a.fd)
	unix.Close(b.fd)
	checkLeaks(t, fds0+2, g0) // +2: the test's cleanup closes the data fds again
}

func FuzzParseRequest(f *testing.F) {
	f.Add(AppendRequest(nil, &Request{Version: 3, Addr: [108]byte{0, 1, 2}}))
	f.Add(AppendRequest(nil, &Request{Version: 3, Addr: [108]byte{'/', 't'}, Description: "d"}))
	f.Add([]byte{0xce, 0xfa, 0xed, 0xfe, 2, 0, 0, 0})
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) || re.Offset < 0 || re.Offset > len(b) && re.Offset != RequestMaxLen {
				t.Fatalf("ParseRequest(%x) error %v is not a RequestError within the input", b, err)
			}
			return
		}
		if len(b) < RequestMinLen || len(b) > RequestMaxLen {
			t.Fatalf("ParseRequest accepted %d bytes", len(b))
		}
		again, err := ParseRequest(AppendRequest(nil, r))
		if err != nil || again.Addr != r.Addr || again.Port != r.Port || again.Type != r.Type || again.Description != r.Description {
			t.Fatalf("round trip of %+v = %+v, %v", r, again, err)
		}
		_ = r.AddrPath()
	})
}

// A switch started again on the same control socket restores the daemon
// ports of the one before it: the clients keep the data address they
// were given and traffic resumes, with no new handshake.
func TestDaemonRestart(t *testing.T) {
	dir := shortDir(t)
	ctl := filepath.Join(dir, "ctl")
	s1 := New(Config{})
	if err := s1.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	a := dialDaemon(t, ctl, true, "")
	b := dialDaemon(t, ctl, true, "")
	c := dialDaemon(t, ctl, true, "")
	waitPorts(t, s1, 3)
	f := eth(bcast, macA, "before")
	a.send(f)
	b.recv()
	c.recv()
	c.ctl.Close() // c leaves cleanly: not in the table any more
	waitPorts(t, s1, 2)
	ids := []int{s1.Ports()[0].ID, s1.Ports()[1].ID}
	for _, id := range ids { // runtime VLAN changes are in the table too
		if err := s1.SetVLAN(id, 9, []int{10, 11}); err != nil {
			t.Fatal(err)
		}
	}
	s1.Close() // like a crash for the clients: the data sockets vanish

	s2 := newSwitch(t, Config{})
	if err := s2.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	ps := s2.Ports()
	if len(ps) != 2 || ps[0].ID != ids[0] || ps[1].ID != ids[1] {
		t.Fatalf("restored ports %+v, want ports %v", ps, ids)
	}
	for _, p := range ps {
		if p.VLAN != 9 || fmt.Sprint(p.Trunk) != "[10 11]" {
			t.Errorf("restored port %+v, want VLAN 9 and trunk [10 11]", p)
		}
	}
	g := eth(bcast, macA, "after the restart")
	a.send(g)
	if got := b.recv(); string(got) != string(g) {
		t.Fatalf("after restart b got %x", head(got))
	}
	h := eth(macA, macB, "reply")
	b.send(h)
	if got := a.recv(); string(got) != string(h) {
		t.Fatalf("after restart a got %x", head(got))
	}
	// A restored client that goes away is noticed on the next send.
	unix.Close(a.fd)
	a.fd = -1
	b.send(eth(macA, macB, "to a dead client"))
	waitPorts(t, s2, 1)
	var tbl []byte
	var err error
	for range 200 { // the table is saved just after the port goes
		if tbl, err = os.ReadFile(ctl + ".ports"); err == nil && strings.Count(string(tbl), `"seq"`) == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || strings.Count(string(tbl), `"seq"`) != 1 {
		t.Errorf("port table %s (%v), want one port", tbl, err)
	}
}

// With a keeper, BESS connections outlive the switch: a new switch takes
// them back and forwards on them, and a connection that ends is dropped
// from the keeper.
func TestBESSKeeper(t *testing.T) {
	dir := shortDir(t)
	sock, keep := filepath.Join(dir, "bess"), filepath.Join(dir, "keep")
	ctx, cancel := context.WithCancel(context.Background())
	kdone := make(chan error, 1)
	go func() { kdone <- ServeKeeper(ctx, keep, time.Hour, nil) }()
	for range 250 {
		if _, err := os.Stat(keep); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s1 := New(Config{})
	if err := s1.ListenBESS(sock, ListenOptions{GID: -1, Keeper: keep}); err != nil {
		t.Fatal(err)
	}
	a, b, c := dialBESS(t, sock), dialBESS(t, sock), dialBESS(t, sock)
	waitPorts(t, s1, 3)
	c.c.Close() // ends before the restart: the keeper lets go of it
	waitPorts(t, s1, 2)
	f := eth(bcast, macA, "before")
	a.send(f)
	b.expectNext(f)
	// Runtime VLAN changes are kept too: a and b move to VLAN 5.
	for _, p := range s1.Ports() {
		if err := s1.SetVLAN(p.ID, 5, []int{7}); err != nil {
			t.Fatal(err)
		}
	}
	before := map[int]string{}
	for _, p := range s1.Ports() {
		before[p.ID] = p.Peer
	}
	s1.Close()

	s2 := newSwitch(t, Config{})
	if err := s2.ListenBESS(sock, ListenOptions{GID: -1, Keeper: keep}); err != nil {
		t.Fatal(err)
	}
	// The keeper may hand back c too if it had not yet seen s1 drop it;
	// its end of file then closes it at once.
	waitPorts(t, s2, 2)
	for _, p := range s2.Ports() {
		if before[p.ID] != p.Peer || p.VLAN != 5 || len(p.Trunk) != 1 || p.Trunk[0] != 7 {
			t.Errorf("restored port %+v, want port %d (%s) on VLAN 5 with trunk [7]", p, p.ID, before[p.ID])
		}
	}
	d := dialBESS(t, sock) // a new port, on VLAN 1
	waitPorts(t, s2, 3)
	d.send(eth(bcast, macC, "VLAN 1"))
	g := eth(bcast, macA, "after the restart")
	a.send(g)
	b.expectNext(g)
	d.c.Close()
	waitPorts(t, s2, 2)
	h := eth(macA, macB, "reply")
	b.send(h)
	a.expectNext(h)
	a.c.Close()
	waitPorts(t, s2, 1)
	s2.Close()
	cancel()
	if err := <-kdone; err != nil {
		t.Fatal(err)
	}
}

// With a keeper, a TAP device outlives the switch with the host's
// configuration of it: a new switch asking for the same device takes it
// back with its port number and VLANs; one that does not ask lets it go,
// and a device the switch created then disappears.
func TestTAPKeeper(t *testing.T) {
	ns := umltest.Netns(t)
	dir := shortDir(t)
	keep := filepath.Join(dir, "keep")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ServeKeeper(ctx, keep, time.Hour, nil)
	for range 250 {
		if _, err := os.Stat(keep); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	const tap = "ktap0"
	attach := func(s *Switch, want int) int {
		t.Helper()
		if err := s.UseKeeper(keep); err != nil {
			t.Fatal(err)
		}
		var id int
		var err error
		umltest.InNetns(t, ns, func() { id, err = s.AttachTAP(tap, PortOptions{ID: want}) })
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	s1 := New(Config{})
	id := attach(s1, 4)
	umltest.Sh(t, ns, "ip addr add 10.9.0.1/24 dev "+tap+" && ip link set "+tap+" up")
	if err := s1.SetVLAN(id, 6, nil); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	if out := umltest.Sh(t, ns, "ip -o addr show dev "+tap); !strings.Contains(out, "10.9.0.1/24") {
		t.Fatalf("after the switch stopped, %s has lost its address: %s", tap, out)
	}
	s2 := New(Config{})
	if got := attach(s2, 0); got != id {
		t.Errorf("restored TAP port %d, want %d", got, id)
	}
	if p := findPort(s2, id); p.Kind != "tap" || p.VLAN != 6 {
		t.Errorf("restored TAP port %+v, want a tap port on VLAN 6", p)
	}
	// The TAP device still carries frames: the host's ARP request
	// reaches the port.
	umltest.Sh(t, ns, "ping -c 1 -W 1 10.9.0.2 || true")
	if p := findPort(s2, id); p.RxFrames == 0 {
		t.Errorf("restored TAP port %+v received nothing from the host", p)
	}
	s2.Close()
	s3 := New(Config{})
	defer s3.Close()
	if err := s3.UseKeeper(keep); err != nil {
		t.Fatal(err)
	}
	s3.ForgetKept()
	for i := 0; ; i++ {
		if _, err := umltest.ShErr(ns, "ip link show "+tap); err != nil {
			break
		}
		if i == 200 {
			t.Fatalf("%s is still there after a switch let go of it", tap)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A keeper with no switch lets go of TAP devices only when told to (after
// its idle time), and of other connections when their peer hangs up.
func TestKeeperReapTAP(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tapFd, _ := unix.Dup(int(w.Fd()))
	w.Close()
	k := &keeper{log: slog.New(slog.DiscardHandler), held: map[uint64]heldConn{
		1: {fd: fds[0], info: "bess peer"},
		2: {fd: tapFd, info: "tap0", keptMeta: keptMeta{Kind: "tap"}},
	}}
	k.reap(false)
	if len(k.held) != 2 {
		t.Fatalf("held %v after reap(false) with live peers, want both", k.held)
	}
	unix.Close(fds[1])
	k.reap(false)
	if _, ok := k.held[1]; ok || len(k.held) != 1 {
		t.Fatalf("held %v after the BESS peer hung up, want the TAP only", k.held)
	}
	k.reap(true)
	if len(k.held) != 0 {
		t.Fatalf("held %v after reap(true), want nothing", k.held)
	}
}

// A hub mode changed through management comes back after a restart with
// the same configuration; a restart configured otherwise takes the new
// setting.
func TestHubModeRestart(t *testing.T) {
	mgmt := filepath.Join(shortDir(t), "mgmt")
	start := func(hub bool) *Switch {
		t.Helper()
		s := New(Config{Hub: hub})
		if err := s.ListenManagement(mgmt, ListenOptions{GID: -1}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	cl := &Client{Path: mgmt}
	s := start(false)
	if err := cl.SetHub(true); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = start(false)
	if !s.Hub() {
		t.Errorf("switch restarted with the same configuration is not a hub; it was switched to hub mode before")
	}
	if err := cl.SetHub(false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = start(true) // configured as a hub: the saved state was for a switch configured otherwise
	if !s.Hub() {
		t.Errorf("switch configured as a hub is not one: the state saved under another configuration won")
	}
	if err := cl.SetHub(false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = start(true)
	defer s.Close()
	if s.Hub() {
		t.Errorf("switch restarted with --hub came back as a hub; it was switched off before the restart")
	}
}
