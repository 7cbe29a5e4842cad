// Package loadgen drives Ethernet frames through a switch and measures
// what comes out: forwarded frames per second, bandwidth, loss, and
// round-trip time. It connects its ports the way UML instances do: the
// uml_switch daemon protocol (uml_switch, vde_switch, umlkit), the BESS
// SOCK_SEQPACKET transport, or a plain socket pair with no switch at all
// (the limit of the host).
package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Port is one connected packet socket into a switch.
type Port struct {
	fd    int
	ctl   *net.UnixConn // the daemon protocol's control connection
	mac   [6]byte
	batch int // frames per system call; 0 means MaxBatch
}

// MaxBatch is how many frames a port sends or receives per system call
// (sendmmsg, recvmmsg) unless SetBatch says otherwise, as UML's vector
// transports (BESS among them) do.
const MaxBatch = 32

// SetBatch sets how many frames, 1 to MaxBatch, the port sends or
// receives per system call in Throughput. One is what the kernel's daemon
// and vde transports do: a sendto or recvfrom per frame.
func (p *Port) SetBatch(n int) { p.batch = max(1, min(n, MaxBatch)) }

func (p *Port) perCall() int {
	if p.batch == 0 {
		return MaxBatch
	}
	return p.batch
}

// Close closes the port.
func (p *Port) Close() error {
	if p.ctl != nil {
		p.ctl.Close()
	}
	return unix.Close(p.fd)
}

var seq atomic.Uint32

// DialDaemon connects to a switch's daemon-protocol control socket like a
// UML kernel: an abstract data address used with its full 110-byte
// length, a 124-byte version 3 request, a 110-byte reply.
func DialDaemon(ctl string) (*Port, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var me unix.RawSockaddrUnix
	me.Family = unix.AF_UNIX
	name := fmt.Sprintf("umlkit-loadgen-%d-%d", os.Getpid(), seq.Add(1))
	for i := range len(name) {
		me.Path[1+i] = int8(name[i])
	}
	if err := rawAddr(unix.SYS_BIND, fd, &me); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind data socket: %w", err)
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ctl, Net: "unix"})
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	req := make([]byte, 124)
	binary.LittleEndian.PutUint32(req[0:], 0xfeedface)
	binary.LittleEndian.PutUint32(req[4:], 3)
	binary.LittleEndian.PutUint16(req[12:], unix.AF_UNIX)
	for i, b := range me.Path {
		req[14+i] = byte(b)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		c.Close()
		unix.Close(fd)
		return nil, err
	}
	reply := make([]byte, 110)
	if _, err := readFull(c, reply); err != nil {
		c.Close()
		unix.Close(fd)
		return nil, fmt.Errorf("switch reply: %w", err)
	}
	c.SetDeadline(time.Time{})
	var sw unix.RawSockaddrUnix
	sw.Family = unix.AF_UNIX
	for i := range sw.Path {
		sw.Path[i] = int8(reply[2+i])
	}
	// The switch's data socket address is a path (vde_switch) or an
	// abstract name (uml_switch, umlkit): connect with the full length
	// either way, as UML sends.
	if err := rawAddr(unix.SYS_CONNECT, fd, &sw); err != nil {
		c.Close()
		unix.Close(fd)
		return nil, fmt.Errorf("connect to the switch's data socket: %w", err)
	}
	return &Port{fd: fd, ctl: c}, nil
}

func readFull(c *net.UnixConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// DialBESS connects to a BESS (SOCK_SEQPACKET) socket like a vector NIC.
func DialBESS(path string) (*Port, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Port{fd: fd}, nil
}

// Pair returns two ports wired straight to each other, with no switch.
func Pair() (*Port, *Port, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return &Port{fd: fds[0]}, &Port{fd: fds[1]}, nil
}

func rawAddr(call uintptr, fd int, sa *unix.RawSockaddrUnix) error {
	if _, _, e := unix.Syscall(call, uintptr(fd), uintptr(unsafe.Pointer(sa)), 110); e != 0 {
		return e
	}
	return nil
}

// Result is one measurement.
type Result struct {
	Sent, Received uint64
	Duration       time.Duration
	FramesPerSec   float64
	Mbps           float64
	Loss           float64 // fraction of sent frames not received
	P50, P99       time.Duration
	RTTLost        int
}

// frame fills b with a frame from src to dst of len(b) bytes.
func frame(b []byte, dst, src [6]byte) {
	copy(b[0:], dst[:])
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[12:], 0x88b5) // local experimental ethertype
	for i := 14; i < len(b); i++ {
		b[i] = byte(i)
	}
}

var bcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// setup gives the ports addresses and lets the switch learn them.
func setup(ports []*Port) error {
	for i, p := range ports {
		p.mac = [6]byte{2, 0, 0, 0x1f, byte(i >> 8), byte(i)}
		tv := unix.Timeval{Usec: 100000}
		if err := unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		unix.SetsockoptInt(p.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		unix.SetsockoptInt(p.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	}
	b := make([]byte, 60)
	for round := 0; round < 2; round++ {
		for _, p := range ports {
			frame(b, bcast, p.mac)
			if _, err := unix.Write(p.fd, b); err != nil {
				return fmt.Errorf("learning frame: %w", err)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	drain(ports)
	return nil
}

func drain(ports []*Port) {
	buf := make([]byte, 65536)
	for _, p := range ports {
		for {
			if _, _, err := unix.Recvfrom(p.fd, buf, unix.MSG_DONTWAIT); err != nil {
				break
			}
		}
	}
}

// Window is how many frames each sender keeps in flight in Throughput.
const Window = 128

// Throughput has every port send frames of size bytes to its partner
// (port i to port i^1) for d, keeping at most Window frames in flight per
// direction, so that it measures the rate the switch sustains rather than
// how it sheds an overload. A window that makes no progress for 50ms is
// written off: those frames count as lost and sending resumes.
func Throughput(ports []*Port, size int, d time.Duration) (Result, error) {
	if len(ports) < 2 || len(ports)%2 != 0 {
		return Result{}, errors.New("loadgen: an even number of ports, at least 2")
	}
	if size < 60 {
		size = 60
	}
	if err := setup(ports); err != nil {
		return Result{}, err
	}
	n := len(ports)
	sent := make([]atomic.Uint64, n)
	recv := make([]atomic.Uint64, n) // by receiving port
	lost := make([]atomic.Uint64, n) // by sending port
	wake := make([]chan struct{}, n) // by sending port: its partner received
	for i := range wake {
		wake[i] = make(chan struct{}, 1)
	}
	var stopSend, stopRecv atomic.Bool
	var wg sync.WaitGroup
	for i, p := range ports {
		j := i ^ 1
		partner := ports[j]
		wg.Go(func() { // sender
			b := make([]byte, size)
			frame(b, partner.mac, p.mac)
			iov := unix.Iovec{Base: &b[0]}
			iov.SetLen(size)
			batch := p.perCall()
			msgs := make([]unix.Mmsghdr, batch)
			for k := range msgs {
				msgs[k].Hdr.Iov = &iov
				msgs[k].Hdr.SetIovlen(1)
			}
			timer := time.NewTimer(time.Hour)
			for !stopSend.Load() {
				inflight := int(sent[i].Load() - lost[i].Load() - recv[j].Load())
				room := min(batch, Window-inflight)
				if room <= 0 {
					timer.Reset(50 * time.Millisecond)
					select {
					case <-wake[i]:
					case <-timer.C:
						if int(sent[i].Load()-lost[i].Load()-recv[j].Load()) == inflight {
							lost[i].Add(uint64(inflight))
						}
					}
					continue
				}
				r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(p.fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(room), 0, 0, 0)
				if e == 0 {
					sent[i].Add(uint64(r))
				} else if e != unix.EINTR && e != unix.EAGAIN && e != unix.ENOBUFS {
					return
				}
			}
		})
		wg.Go(func() { // receiver
			batch := p.perCall()
			bufs := make([][]byte, batch)
			iovs := make([]unix.Iovec, batch)
			msgs := make([]unix.Mmsghdr, batch)
			for k := range msgs {
				bufs[k] = make([]byte, 2048)
				iovs[k] = unix.Iovec{Base: &bufs[k][0]}
				iovs[k].SetLen(2048)
				msgs[k].Hdr.Iov = &iovs[k]
				msgs[k].Hdr.SetIovlen(1)
			}
			for !stopRecv.Load() {
				r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(p.fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(batch), 0, 0, 0)
				if e != 0 {
					continue
				}
				c := uint64(0)
				for k := 0; k < int(r); k++ {
					if [6]byte(bufs[k][:6]) == p.mac {
						c++
					}
				}
				recv[i].Add(c)
				select {
				case wake[j] <- struct{}{}:
				default:
				}
			}
		})
	}
	total := func(a []atomic.Uint64) uint64 {
		t := uint64(0)
		for k := range a {
			t += a[k].Load()
		}
		return t
	}
	start := time.Now()
	time.Sleep(d)
	r0 := total(recv)
	el := time.Since(start)
	stopSend.Store(true)
	time.Sleep(200 * time.Millisecond) // let frames in flight arrive
	stopRecv.Store(true)
	wg.Wait()
	s, r := total(sent), total(recv)
	res := Result{Sent: s, Received: r, Duration: el}
	res.FramesPerSec = float64(r0) / el.Seconds()
	res.Mbps = res.FramesPerSec * float64(size) * 8 / 1e6
	if s > 0 && r < s {
		res.Loss = float64(s-r) / float64(s)
	}
	drain(ports)
	return res, nil
}

// RTT sends n frames of size bytes from a to b one at a time, b echoes
// each back, and it returns the median and 99th percentile round trip.
func RTT(a, b *Port, size, n int) (Result, error) {
	if size < 60 {
		size = 60
	}
	if err := setup([]*Port{a, b}); err != nil {
		return Result{}, err
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() { // echo
		buf := make([]byte, 2048)
		for !stop.Load() {
			k, _, err := unix.Recvfrom(b.fd, buf, 0)
			if err != nil || k < 14 || [6]byte(buf[:6]) != b.mac {
				continue
			}
			copy(buf[0:6], a.mac[:])
			copy(buf[6:12], b.mac[:])
			unix.Write(b.fd, buf[:k])
		}
	})
	out := make([]byte, size)
	frame(out, b.mac, a.mac)
	in := make([]byte, 2048)
	rtts := make([]time.Duration, 0, n)
	lost := 0
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint32(out[14:], uint32(i))
		t0 := time.Now()
		if _, err := unix.Write(a.fd, out); err != nil {
			stop.Store(true)
			wg.Wait()
			return Result{}, err
		}
		for {
			k, _, err := unix.Recvfrom(a.fd, in, 0)
			if err != nil {
				lost++
				break
			}
			if k >= 18 && [6]byte(in[:6]) == a.mac && binary.BigEndian.Uint32(in[14:]) == uint32(i) {
				rtts = append(rtts, time.Since(t0))
				break
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if len(rtts) == 0 {
		return Result{RTTLost: lost}, errors.New("loadgen: no round trip completed")
	}
	slices.Sort(rtts)
	return Result{P50: rtts[len(rtts)/2], P99: rtts[len(rtts)*99/100], RTTLost: lost}, nil
}
