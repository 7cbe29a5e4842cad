package vswitch

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// daemonServer serves the uml_switch daemon protocol on one control
// socket.
type daemonServer struct {
	s     *Switch
	ctl   string
	o     ListenOptions
	base  uint64 // names this control socket's data addresses
	seq   atomic.Uint64
	state string // the port table, kept for a restarted switch

	mu    sync.Mutex
	table map[uint64]portRecord
}

// portRecord is a daemon port as the port table keeps it: enough to bind
// the same data address again and reconnect to the client.
type portRecord struct {
	Seq    uint64 `json:"seq"`
	Client string `json:"client"` // the client's 108-byte address, hex
	Peer   string `json:"peer"`
	ID     int    `json:"id"`
	VLAN   int    `json:"vlan"`
	Trunk  []int  `json:"trunk,omitempty"`
}

// ListenDaemon serves the uml_switch daemon protocol on the control
// socket ctl (a SOCK_STREAM socket: ethN=daemon,,unix,CTL for kernels up
// to 6.15, and vde_plug with CTL named DIR/ctl). Each client gets its own
// datagram data socket, connected to the client's data address, and
// becomes a port; the port closes when the control connection does. The
// socket file is removed when the switch closes.
//
// The ports are kept in a table, CTL.ports, so that a switch started
// again on the same ctl (after a crash, kill -9 or an upgrade) binds the
// same data addresses and reconnects to the clients still alive: UML
// kernels keep sending to the address they were given and never notice.
// A restored port closes when sends find its client gone.
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
	d := &daemonServer{s: s, ctl: ctl, o: o, base: h.Sum64(), state: ctl + ".ports", table: map[uint64]portRecord{}}
	d.restore()
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
	seq := d.seqOf(mine)
	p, err := s.attach(os.NewFile(uintptr(fd), "daemon-data"), PortOptions{
		Kind: "daemon", Peer: name, VLAN: d.o.VLAN, Trunk: d.o.Trunk, ID: req.Port,
		OnClose: func() { c.Close(); d.forget(seq) },
		OnVLAN:  func(_, vlan int, trunk []int) { d.setVLAN(seq, vlan, trunk) },
	})
	if err != nil {
		return err
	}
	d.remember(portRecord{Seq: seq, Client: hex.EncodeToString(req.Addr[:]), Peer: name, ID: p.id, VLAN: int(p.vlan.Load()), Trunk: d.o.Trunk})
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

// seqOf recovers the sequence number of one of our data addresses.
func (d *daemonServer) seqOf(sa *unix.RawSockaddrUnix) uint64 {
	var b []byte
	for _, c := range sa.Path[1:] {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	i := bytes.LastIndexByte(b, '-')
	n, _ := strconv.ParseUint(string(b[i+1:]), 10, 64)
	return n
}

func (d *daemonServer) remember(r portRecord) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.table[r.Seq] = r
	d.save()
}

// setVLAN records a port's new VLANs in the table.
func (d *daemonServer) setVLAN(seq uint64, vlan int, trunk []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r, ok := d.table[seq]; ok {
		r.VLAN, r.Trunk = vlan, slices.Clone(trunk)
		d.table[seq] = r
		d.save()
	}
}

// forget drops a closed port from the table, unless the whole switch is
// closing: a switch stopped for an upgrade keeps its table.
func (d *daemonServer) forget(seq uint64) {
	select {
	case <-d.s.done:
		return
	default:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.table[seq]; ok {
		delete(d.table, seq)
		d.save()
	}
}

// save writes the table (d.mu held) to a temporary file and renames it
// over the old one, so that a crash leaves one or the other.
func (d *daemonServer) save() {
	recs := make([]portRecord, 0, len(d.table))
	for _, r := range d.table {
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Seq < recs[j].Seq })
	b, _ := json.MarshalIndent(recs, "", "  ")
	tmp := d.state + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		d.s.warn.warn("ports-table", "cannot save the port table: a restarted switch will not find these ports", "file", d.state, "err", err)
		return
	}
	if err := os.Rename(tmp, d.state); err != nil {
		d.s.warn.warn("ports-table", "cannot save the port table: a restarted switch will not find these ports", "file", d.state, "err", err)
	}
}

// restore reattaches the ports of the table a previous switch left, for
// the clients still alive.
func (d *daemonServer) restore() {
	b, err := os.ReadFile(d.state)
	if err != nil {
		return
	}
	var recs []portRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		d.s.warn.warn("ports-table", "port table unreadable: starting without it", "file", d.state, "err", err)
		return
	}
	for _, r := range recs {
		if r.Seq > d.seq.Load() {
			d.seq.Store(r.Seq)
		}
		if err := d.restorePort(r); err != nil {
			d.s.log.Info("port not restored", "peer", r.Peer, "err", err)
		}
	}
	d.mu.Lock()
	d.save()
	d.mu.Unlock()
}

func (d *daemonServer) restorePort(r portRecord) error {
	client, err := hex.DecodeString(r.Client)
	if err != nil || len(client) != 108 {
		return fmt.Errorf("bad client address %q", r.Client)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := rawSockaddr(unix.SYS_BIND, fd, d.dataAddr(r.Seq)); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind data address: %w", err)
	}
	peer := unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	for i, c := range client {
		peer.Path[i] = int8(c)
	}
	if err := rawSockaddr(unix.SYS_CONNECT, fd, &peer); err != nil {
		unix.Close(fd)
		return fmt.Errorf("client gone: %w", err)
	}
	seq := r.Seq
	p, err := d.s.attach(os.NewFile(uintptr(fd), "daemon-data"), PortOptions{
		Kind: "daemon", Peer: r.Peer, VLAN: r.VLAN, Trunk: r.Trunk, ID: r.ID,
		OnClose: func() { d.forget(seq) }, closeWhenGone: true,
		OnVLAN: func(_, vlan int, trunk []int) { d.setVLAN(seq, vlan, trunk) },
	})
	if err != nil {
		return err
	}
	r.ID = p.id
	d.mu.Lock()
	d.table[seq] = r
	d.mu.Unlock()
	d.s.log.Info("port restored", "port", p.id, "peer", r.Peer)
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
