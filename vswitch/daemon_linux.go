package vswitch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// daemonServer serves the uml_switch daemon protocol on one control
// socket.
type daemonServer struct {
	s    *Switch
	ctl  string
	o    ListenOptions
	base uint64 // names this control socket's data addresses
	seq  atomic.Uint64
}

// ListenDaemon serves the uml_switch daemon protocol on the control
// socket ctl (a SOCK_STREAM socket: ethN=daemon,,unix,CTL for kernels up
// to 6.15, and vde_plug with CTL named DIR/ctl). Each client gets its own
// datagram data socket, connected to the client's data address, and
// becomes a port; the port closes when the control connection does. The
// socket file is removed when the switch closes.
func (s *Switch) ListenDaemon(ctl string, o ListenOptions) error {
	abs, err := filepath.Abs(ctl)
	if err != nil {
		return fmt.Errorf("listen %s: %w", ctl, err)
	}
	ln, err := listenUnix("unix", ctl, o)
	if err != nil {
		return err
	}
	if err := s.addCloser(ln); err != nil {
		ln.Close()
		return err
	}
	h := fnv.New64a()
	io.WriteString(h, abs)
	d := &daemonServer{s: s, ctl: ctl, o: o, base: h.Sum64()}
	s.log.Info("listening", "transport", "daemon", "sock", ctl)
	ok := s.goroutine(func() {
		s.acceptLoop(ln, "daemon", func(c *net.UnixConn) {
			if !s.goroutine(func() { d.serve(c) }) {
				c.Close()
			}
		})
	})
	if !ok {
		ln.Close()
		return ErrClosed
	}
	return nil
}

// readRequest reads one request within the handshake timeout.
// errProbe is a connection closed without a byte: someone checking that
// the socket is alive, not a bad client.
var errProbe = errors.New("connection closed before a request")

func (d *daemonServer) readRequest(c *net.UnixConn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d.s.cfg.HandshakeTimeout))
	buf := make([]byte, 2*RequestMaxLen)
	n := 0
	for n < RequestMinLen {
		k, err := c.Read(buf[n:])
		n += k
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return nil, fmt.Errorf("no complete request within %v (%d bytes)", d.s.cfg.HandshakeTimeout, n)
			case errors.Is(err, io.EOF):
				if n >= 8 {
					// A whole short request: let the parser say what is wrong.
					return buf[:n], nil
				}
				if n == 0 {
					return nil, errProbe
				}
				return nil, fmt.Errorf("connection closed after %d bytes, before a request", n)
			default:
				return nil, err
			}
		}
		if n >= 8 {
			if _, err := ParseRequest(buf[:RequestMinLen]); err != nil {
				var re *RequestError
				if errors.As(err, &re) && re.Offset < 8 {
					return buf[:n], nil // bad magic or version: no need to wait
				}
			}
		}
	}
	return buf[:n], nil
}

func (d *daemonServer) serve(c *net.UnixConn) {
	s := d.s
	pid := peerPID(c)
	b, err := d.readRequest(c)
	if err == nil {
		var req *Request
		req, err = ParseRequest(b)
		if err == nil {
			err = d.connect(c, req, pid)
			if err == nil {
				return
			}
		}
	}
	if errors.Is(err, errProbe) {
		s.log.Debug("control connection closed without a request", "sock", d.ctl, "pid", pid)
	} else {
		s.warn.warn("bad-request", "daemon client rejected: closing its connection", "sock", d.ctl, "pid", pid, "err", err)
	}
	c.Close()
}

// dataAddr returns the abstract name of the switch's data socket number
// n for this control socket. It stays the same across restarts.
func (d *daemonServer) dataAddr(n uint64) *unix.RawSockaddrUnix {
	var sa unix.RawSockaddrUnix
	sa.Family = unix.AF_UNIX
	name := fmt.Sprintf("umlkit-switch-%016x-%d", d.base, n)
	for i := range len(name) {
		sa.Path[1+i] = int8(name[i])
	}
	return &sa
}

// connect makes the client's data socket, attaches it as a port, replies
// with its address, and watches the control connection.
func (d *daemonServer) connect(c *net.UnixConn, req *Request, pid int) error {
	s := d.s
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("data socket: %w", err)
	}
	var mine *unix.RawSockaddrUnix
	for {
		mine = d.dataAddr(d.seq.Add(1))
		err = rawSockaddr(unix.SYS_BIND, fd, mine)
		if !errors.Is(err, unix.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind data socket: %w", err)
	}
	peer := unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	for i, c := range req.Addr {
		peer.Path[i] = int8(c)
	}
	if err := rawSockaddr(unix.SYS_CONNECT, fd, &peer); err != nil {
		unix.Close(fd)
		return fmt.Errorf("connect to client data socket %q: %w", req.AddrPath(), err)
	}
	name := fmt.Sprintf("pid %d", pid)
	if req.Description != "" {
		name += " " + req.Description
	}
	p, err := s.attach(os.NewFile(uintptr(fd), "daemon-data"), PortOptions{
		Kind: "daemon", Peer: name, VLAN: d.o.VLAN, Trunk: d.o.Trunk, ID: req.Port,
		OnClose: func() { c.Close() },
	})
	if err != nil {
		return err
	}
	reply := make([]byte, SockaddrLen)
	binary.LittleEndian.PutUint16(reply, unix.AF_UNIX)
	for i, c := range mine.Path {
		reply[2+i] = byte(c)
	}
	c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if _, err := c.Write(reply); err != nil {
		p.close("reply failed")
		return fmt.Errorf("reply: %w", err)
	}
	c.SetDeadline(time.Time{})
	// The control stream stays idle; EOF or any byte ends the port.
	var one [1]byte
	c.Read(one[:])
	p.close("control connection closed")
	return nil
}

// rawSockaddr binds or connects fd to a full 110-byte sockaddr_un, the
// length UML uses for its abstract addresses (Go's own Sockaddr types cut
// abstract names short).
func rawSockaddr(call uintptr, fd int, sa *unix.RawSockaddrUnix) error {
	_, _, e := unix.Syscall(call, uintptr(fd), uintptr(unsafe.Pointer(sa)), SockaddrLen)
	if e != 0 {
		return e
	}
	return nil
}
