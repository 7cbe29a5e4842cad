package vswitch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// testPort is the far end of a port: a real seqpacket socket pair.
type testPort struct {
	t  testing.TB
	c  *net.UnixConn
	id int
}

func socketPair(t testing.TB, typ int) (*os.File, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	far := os.NewFile(uintptr(fds[1]), "far")
	c, err := net.FileConn(far)
	far.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return os.NewFile(uintptr(fds[0]), "near"), c.(*net.UnixConn)
}

func attach(t testing.TB, s *Switch, opts PortOptions) *testPort {
	t.Helper()
	near, far := socketPair(t, unix.SOCK_SEQPACKET)
	if opts.Kind == "" {
		opts.Kind = "test"
	}
	id, err := s.Attach(near, opts)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	return &testPort{t: t, c: far, id: id}
}

func (p *testPort) send(b []byte) {
	p.t.Helper()
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatalf("port %d: write: %v", p.id, err)
	}
}

// recv returns the next frame, failing the test after 5 seconds.
func (p *testPort) recv() []byte {
	p.t.Helper()
	b := make([]byte, 10000)
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.c.Read(b)
	if err != nil {
		p.t.Fatalf("port %d: read: %v", p.id, err)
	}
	return b[:n]
}

// expect reads frames until one carries marker in its payload, and
// fails if an earlier frame carries any of the unwanted markers.
func (p *testPort) expectNext(want []byte) {
	p.t.Helper()
	got := p.recv()
	if !bytes.Equal(got, want) {
		p.t.Fatalf("port %d received %x, want %x", p.id, head(got), head(want))
	}
}

func head(b []byte) []byte { return b[:min(len(b), 32)] }

var (
	macA  = []byte{2, 0, 0, 0, 0, 0xa}
	macB  = []byte{2, 0, 0, 0, 0, 0xb}
	macC  = []byte{2, 0, 0, 0, 0, 0xc}
	bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

func eth(dst, src []byte, payload string) []byte {
	b := append(append(append([]byte{}, dst...), src...), 0x08, 0x00)
	b = append(b, payload...)
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}

func tagged(frame []byte, vid uint16) []byte {
	out := append([]byte{}, frame[:12]...)
	out = binary.BigEndian.AppendUint16(out, tpid8021Q)
	out = binary.BigEndian.AppendUint16(out, vid)
	return append(out, frame[12:]...)
}

func newSwitch(t testing.TB, cfg Config) *Switch {
	t.Helper()
	s := New(cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestLearningAndFlooding(t *testing.T) {
	s := newSwitch(t, Config{})
	a, b, c := attach(t, s, PortOptions{}), attach(t, s, PortOptions{}), attach(t, s, PortOptions{})

	// Unknown destination: flooded to every other port.
	f1 := eth(macB, macA, "a to b, unknown")
	a.send(f1)
	b.expectNext(f1)
	c.expectNext(f1)

	// A is learned: B's reply reaches only A. C's next frame is the
	// broadcast sent after it, so C never saw the reply.
	f2 := eth(macA, macB, "b to a")
	b.send(f2)
	a.expectNext(f2)
	f3 := eth(macB, macA, "a to b, known")
	a.send(f3)
	b.expectNext(f3)
	f4 := eth(bcast, macB, "broadcast")
	b.send(f4)
	a.expectNext(f4)
	c.expectNext(f4)

	macs := s.MACs()
	if len(macs) != 2 || macs[0].MAC != "02:00:00:00:00:0a" || macs[0].Port != a.id || macs[1].Port != b.id || macs[0].VLAN != 1 {
		t.Errorf("MACs() = %+v, want A on port %d and B on port %d in VLAN 1", macs, a.id, b.id)
	}
	// Multicast destinations are flooded too, and multicast sources are
	// not learned.
	mc := []byte{0x01, 0x00, 0x5e, 0, 0, 1}
	f5 := eth(mc, macC, "multicast")
	c.send(f5)
	a.expectNext(f5)
	b.expectNext(f5)
	f6 := eth(macA, mc, "from a multicast source")
	b.send(f6)
	a.expectNext(f6)
	if n := len(s.MACs()); n != 3 {
		t.Errorf("after C's frame and a multicast source, %d MACs, want 3", n)
	}

	// Counters are updated just after a send returns: let them settle.
	var pa PortInfo
	for range 100 {
		if pa = findPort(s, a.id); pa.TxFrames == 4 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(s.Ports()) != 3 {
		t.Fatalf("Ports() = %d ports, want 3", len(s.Ports()))
	}
	if pa.ID != a.id || pa.RxFrames != 2 || pa.RxBytes != 120 || pa.TxFrames != 4 || pa.TxBytes != 240 || pa.RxDrops != 0 || pa.TxDrops != 0 {
		t.Errorf("port A counters = %+v, want rx 2/120, tx 4/240, no drops", pa)
	}
}

func TestHubMode(t *testing.T) {
	s := newSwitch(t, Config{Hub: true})
	a, b, c := attach(t, s, PortOptions{}), attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	f1 := eth(macB, macA, "a to b")
	a.send(f1)
	b.expectNext(f1)
	c.expectNext(f1)
	f2 := eth(macA, macB, "b to a")
	b.send(f2)
	a.expectNext(f2)
	c.expectNext(f2) // a hub repeats unicast to everyone
	if n := len(s.MACs()); n != 0 {
		t.Errorf("hub learned %d addresses, want none", n)
	}
	s.SetHub(false)
	f3 := eth(macA, macB, "b to a, switched")
	b.send(f3)
	a.expectNext(f3)
	c.expectNext(f3) // A is still unknown: flooded once, then learned
	a.send(eth(macB, macA, "a to b"))
	b.recv()
	b.send(f3)
	a.expectNext(f3)
	f4 := eth(bcast, macA, "marker")
	a.send(f4)
	c.expectNext(f4)
}

func TestVLANs(t *testing.T) {
	s := newSwitch(t, Config{})
	a := attach(t, s, PortOptions{VLAN: 10})
	b := attach(t, s, PortOptions{VLAN: 20})
	a2 := attach(t, s, PortOptions{VLAN: 10})
	tr := attach(t, s, PortOptions{VLAN: 1, Trunk: []int{10, 20}})

	fa := eth(bcast, macA, "from vlan 10")
	a.send(fa)
	a2.expectNext(fa)
	tr.expectNext(tagged(fa, 10))

	fb := eth(bcast, macB, "from vlan 20")
	b.send(fb)
	tr.expectNext(tagged(fb, 20))

	// The trunk sends into VLAN 20: B gets it untagged, A (VLAN 10) not.
	ft := eth(bcast, macC, "trunk into vlan 20")
	tr.send(tagged(ft, 20))
	b.expectNext(ft)
	// The trunk into VLAN 10, unicast to A, learned above.
	fu := eth(macA, macC, "trunk to a")
	tr.send(tagged(fu, 10))
	a.expectNext(fu)
	// A's next frame is this one: nothing from VLAN 20 leaked to it.
	fm := eth(bcast, macC, "marker")
	tr.send(tagged(fm, 10))
	a.expectNext(fm)
	a2.expectNext(fm)
	// A VLAN the trunk does not carry is dropped and counted.
	tr.send(tagged(eth(bcast, macC, "vlan 30"), 30))
	b.send(eth(bcast, macB, "marker 20"))
	tr.expectNext(tagged(eth(bcast, macB, "marker 20"), 20))
	if p := findPort(s, tr.id); p.RxDrops != 1 || p.Trunk == nil {
		t.Errorf("trunk port = %+v, want 1 rx drop and trunk VLANs", p)
	}
	// B moved to VLAN 10 at runtime now hears A.
	if err := s.SetVLAN(b.id, 10, nil); err != nil {
		t.Fatal(err)
	}
	a.send(fa)
	b.expectNext(fa)
	if err := s.SetVLAN(b.id, 5000, nil); err == nil {
		t.Error("SetVLAN(5000) succeeded, want a range error")
	}
	if err := s.SetVLAN(999, 10, nil); !errors.Is(err, ErrNoPort) {
		t.Errorf("SetVLAN(port 999) = %v, want ErrNoPort", err)
	}
}

// settle waits a little for a port's counters to satisfy ok (they are
// updated just after a send returns) and returns them.
func settle(s *Switch, id int, ok func(PortInfo) bool) PortInfo {
	var p PortInfo
	for range 200 {
		if p = findPort(s, id); ok(p) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func findPort(s *Switch, id int) PortInfo {
	for _, p := range s.Ports() {
		if p.ID == id {
			return p
		}
	}
	return PortInfo{}
}

func TestJumboAndOversize(t *testing.T) {
	s := newSwitch(t, Config{})
	a, b := attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	j := eth(macB, macA, strings.Repeat("j", 9000))
	a.send(j)
	b.expectNext(j)
	a.send(eth(macB, macA, strings.Repeat("x", DefaultMaxFrame+100)))
	f := eth(macB, macA, "after the oversize frame")
	a.send(f)
	b.expectNext(f)
	if p := findPort(s, a.id); p.RxDrops != 1 || p.RxFrames != 2 {
		t.Errorf("port A = %+v, want 2 frames and 1 drop", p)
	}
}

// A frame shorter than an Ethernet header closes its port; the others
// keep forwarding.
func TestRuntClosesPort(t *testing.T) {
	s := newSwitch(t, Config{})
	a, b, c := attach(t, s, PortOptions{}), attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	for _, runt := range [][]byte{{1, 2, 3}, tagged(eth(bcast, macA, ""), 10)[:16]} {
		a.send(runt)
		a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := a.c.Read(make([]byte, 100)); n != 0 || err == nil {
			t.Fatalf("after a runt, read = %d, %v; want EOF", n, err)
		}
		a = attach(t, s, PortOptions{})
	}
	f := eth(bcast, macB, "still forwarding")
	b.send(f)
	c.expectNext(f)
	a.expectNext(f)
	if n := len(s.Ports()); n != 3 {
		t.Errorf("%d ports after two runts, want 3", n)
	}
}

func TestMACTableBoundedAndAging(t *testing.T) {
	s := newSwitch(t, Config{MACTableSize: 4, MACAge: time.Minute})
	a, b := attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	for i := range 10 {
		f := eth(bcast, []byte{2, 0, 0, 0, 1, byte(i)}, "")
		a.send(f)
		b.expectNext(f)
	}
	if st := s.Stats(); st.MACs != 4 || st.MACRefused != 6 {
		t.Errorf("Stats() = %+v, want 4 MACs and 6 refused", st)
	}
	if n := s.expireNow(time.Now()); n != 0 {
		t.Errorf("expire now removed %d, want 0", n)
	}
	if n := s.expireNow(time.Now().Add(2 * time.Minute)); n != 4 {
		t.Errorf("expire after 2 minutes removed %d, want 4", n)
	}
	if n := len(s.MACs()); n != 0 {
		t.Errorf("%d MACs after aging, want 0", n)
	}
}

// A port whose peer never reads fills its queue and drops; the other
// ports keep forwarding.
func TestStuckPortDrops(t *testing.T) {
	s := newSwitch(t, Config{QueueLen: 16})
	a, b := attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	stuck := attach(t, s, PortOptions{})
	_ = stuck
	f := eth(bcast, macA, strings.Repeat("f", 1400))
	for range 2000 {
		a.send(f)
		b.recv()
	}
	if p := findPort(s, stuck.id); p.TxDrops == 0 || p.Queued > 16 {
		t.Errorf("stuck port = %+v, want drops and at most 16 queued", p)
	}
	if p := settle(s, b.id, func(p PortInfo) bool { return p.TxFrames == 2000 }); p.TxFrames != 2000 || p.TxDrops != 0 {
		t.Errorf("reading port = %+v, want 2000 frames, no drops", p)
	}
}

// A port flooding broadcasts as fast as it can does not starve unicast
// between two other ports.
func TestFloodFairness(t *testing.T) {
	s := newSwitch(t, Config{QueueLen: 64})
	fl, b, c := attach(t, s, PortOptions{}), attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		f := eth(bcast, macA, strings.Repeat("b", 1000))
		for {
			select {
			case <-stop:
				return
			default:
			}
			fl.c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			fl.c.Write(f)
		}
	})
	wg.Go(func() { // B also hears the flood; keep reading
		buf := make([]byte, 2000)
		for {
			b.c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := b.c.Read(buf); err != nil {
				select {
				case <-stop:
					return
				default:
				}
			}
		}
	})
	for findPort(s, fl.id).RxFrames < 1000 {
		time.Sleep(10 * time.Millisecond)
	}
	// C is learned first, so B's frames to it are unicast.
	c.send(eth(bcast, macC, "hello"))
	for len(s.MACs()) < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	const n = 300
	got := 0
	buf := make([]byte, 2000)
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		// One at a time: B is a well-behaved sender; the flood is not.
		b.send(eth(macC, macB, fmt.Sprintf("unicast %d", i)))
		for {
			k, err := c.c.Read(buf)
			if err != nil {
				t.Fatalf("C: read: %v after %d unicast frames; ports %+v; macs %+v", err, got, s.Ports(), s.MACs())
			}
			if bytes.HasPrefix(buf[:k], macC) && bytes.Equal(buf[6:12], macB) {
				got++
				break
			}
		}
	}
	close(stop)
	wg.Wait()
	if got != n {
		t.Errorf("C received %d of %d unicast frames from B during a flood (port C: %+v)", got, n, findPort(s, c.id))
	}
	if p := findPort(s, c.id); p.TxDrops == 0 {
		t.Logf("port C dropped no flood frames (%+v): the flood did not outrun C this time", p)
	}
}

func TestManyPorts(t *testing.T) {
	s := newSwitch(t, Config{Batch: 2})
	const n = 300
	ports := make([]*testPort, n)
	for i := range ports {
		ports[i] = attach(t, s, PortOptions{})
	}
	f := eth(bcast, macA, "to all")
	ports[0].send(f)
	for _, p := range ports[1:] {
		p.expectNext(f)
	}
	last := ports[n-1]
	u := eth(macA, macB, "from the last port")
	last.send(u)
	ports[0].expectNext(u)
	if ps := s.Ports(); len(ps) != n || ps[n-1].ID != n {
		t.Errorf("Ports() has %d ports, the last numbered %d; want %d", len(ps), ps[len(ps)-1].ID, n)
	}
}

func TestMaxPorts(t *testing.T) {
	s := newSwitch(t, Config{MaxPorts: 2})
	attach(t, s, PortOptions{})
	b := attach(t, s, PortOptions{})
	near, _ := socketPair(t, unix.SOCK_SEQPACKET)
	if _, err := s.Attach(near, PortOptions{}); !errors.Is(err, ErrFull) {
		t.Errorf("third Attach = %v, want ErrFull", err)
	}
	if err := s.Disconnect(b.id); err != nil {
		t.Fatal(err)
	}
	c := attach(t, s, PortOptions{})
	if c.id != b.id {
		t.Errorf("new port got number %d, want the freed %d", c.id, b.id)
	}
	if err := s.Disconnect(77); !errors.Is(err, ErrNoPort) {
		t.Errorf("Disconnect(77) = %v, want ErrNoPort", err)
	}
}

// Close ends every goroutine and closes every descriptor of the switch.
func TestCloseLeaksNothing(t *testing.T) {
	fds0, g0 := countFDs(t), runtime.NumGoroutine()
	s := New(Config{})
	var conns []*net.UnixConn
	for range 20 {
		near, far := socketPair(t, unix.SOCK_SEQPACKET)
		if _, err := s.Attach(near, PortOptions{}); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, far)
	}
	conns[0].Write(eth(bcast, macA, "x"))
	conns[1].Read(make([]byte, 100))
	conns[5].Close() // one peer goes away by itself
	s.Close()
	s.Close()
	for _, c := range conns {
		c.Close()
	}
	checkLeaks(t, fds0, g0)
}

func countFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// checkLeaks waits a little for goroutines to finish exiting, then
// compares the counts.
func checkLeaks(t testing.TB, fds0, g0 int) {
	t.Helper()
	var fds, g int
	for range 100 {
		fds, g = countFDs(t), runtime.NumGoroutine()
		if fds <= fds0 && g <= g0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 1<<16)
	buf = buf[:runtime.Stack(buf, true)]
	t.Errorf("leak: %d descriptors (was %d), %d goroutines (was %d)\n%s", fds, fds0, g, g0, buf)
}

func TestCapture(t *testing.T) {
	s := newSwitch(t, Config{})
	a, b := attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	var all, onlyB bytes.Buffer
	c1, err := s.Capture(&all, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := s.Capture(&onlyB, b.id, 64)
	if err != nil {
		t.Fatal(err)
	}
	fa := eth(bcast, macA, strings.Repeat("a", 200))
	fb := eth(macA, macB, "b")
	a.send(fa)
	b.expectNext(fa)
	b.send(fb)
	a.expectNext(fb)
	c1.Close()
	c2.Close()
	recs := readPcap(t, all.Bytes())
	if len(recs) != 2 || !bytes.Equal(recs[0], fa) || !bytes.Equal(recs[1], fb) {
		t.Errorf("capture of all ports has %d records, want A's and B's frames", len(recs))
	}
	recs = readPcap(t, onlyB.Bytes())
	if len(recs) != 1 || !bytes.Equal(recs[0], fb) {
		t.Errorf("capture of port %d = %x, want B's frame only", b.id, recs)
	}
}

func readPcap(t *testing.T, b []byte) [][]byte {
	t.Helper()
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != pcapMagic || binary.LittleEndian.Uint32(b[20:]) != pcapLinkEther {
		t.Fatalf("pcap header %x", head(b))
	}
	var out [][]byte
	for b = b[24:]; len(b) >= 16; {
		n := int(binary.LittleEndian.Uint32(b[8:]))
		out = append(out, b[16:16+n])
		b = b[16+n:]
	}
	return out
}

// Forwarding a frame allocates nothing: buffers come from the pool and
// the per-port scratch space is reused.
func TestForwardDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector (sync.Pool drops items); go test without -race runs this")
	}
	s := newSwitch(t, Config{})
	b, c := attach(t, s, PortOptions{}), attach(t, s, PortOptions{VLAN: 1, Trunk: []int{1, 5}})
	near, _ := socketPair(t, unix.SOCK_SEQPACKET)
	p, err := s.newPort(near, PortOptions{Kind: "test", VLAN: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.release()
	p.id = 99
	uni := eth(macB, macA, "unicast")
	bc := eth(bcast, macA, "broadcast")
	b.send(eth(bcast, macB, "learn b")) // B is known: unicast to it
	c.expectNext(eth(bcast, macB, "learn b"))
	var fds []int
	for _, q := range []*testPort{b, c} {
		f, _ := q.c.File()
		defer f.Close()
		fds = append(fds, int(f.Fd()))
	}
	buf := make([]byte, 2048)
	run := func(frame []byte) {
		fr := s.pool.get()
		fr.n = copy(fr.buf, frame)
		s.input(p, fr)
		p.flush()
		fr.release()
		for _, fd := range fds {
			for {
				if _, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_DONTWAIT, 0, 0); e != 0 {
					break
				}
			}
		}
	}
	for range 100 { // warm the pool
		run(uni)
		run(bc)
	}
	if n := testing.AllocsPerRun(1000, func() { run(uni); run(bc) }); n != 0 {
		t.Errorf("forwarding a unicast and a broadcast frame allocates %v times, want 0", n)
	}
}

// A capture whose reader never reads drops captured frames, not
// switched ones.
func TestSlowCaptureDropsCaptureOnly(t *testing.T) {
	s := newSwitch(t, Config{})
	a, b := attach(t, s, PortOptions{}), attach(t, s, PortOptions{})
	r, w, err := os.Pipe() // nobody reads r
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := s.Capture(w, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := eth(macB, macA, strings.Repeat("x", 1400))
	for range 5000 {
		a.send(f)
		b.recv()
	}
	if c.Dropped() == 0 {
		t.Errorf("a capture nobody reads dropped nothing")
	}
	if p := settle(s, b.id, func(p PortInfo) bool { return p.TxFrames == 5000 }); p.TxFrames != 5000 || p.TxDrops != 0 {
		t.Errorf("port B = %+v, want all 5000 frames forwarded", p)
	}
	w.Close() // unblocks the capture's writer
	c.Close()
}
