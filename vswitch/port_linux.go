package vswitch

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// vlanSet is a set of VLAN ids.
type vlanSet [64]uint64

func (v *vlanSet) has(id uint16) bool { return v[id>>6]&(1<<(id&63)) != 0 }

func (v *vlanSet) list() []int {
	var out []int
	for i := range 4096 {
		if v.has(uint16(i)) {
			out = append(out, i)
		}
	}
	return out
}

// port is one connected packet socket.
type port struct {
	s         *Switch
	id        int
	kind      string
	peer      string
	conn      io.Closer
	rc        syscall.RawConn // reads, and direct sends from other ports' readers
	wfile     *os.File        // a dup of the socket for the writer, so that its
	wrc       syscall.RawConn // wait for room does not hold rc's write lock
	seqpacket bool
	tap       bool // a TAP device: read(2) and writev(2), one frame each
	vlan      atomic.Uint32
	trunk     atomic.Pointer[vlanSet]
	q         chan *frame
	pending   atomic.Int32 // frames queued or being written by the writer
	closed    atomic.Bool
	closeOnce sync.Once
	done      chan struct{}
	onClose   func()
	onVLAN    func(port, vlan int, trunk []int)
	whenGone  bool

	rxFrames, rxBytes, rxDrops atomic.Uint64
	txFrames, txBytes, txDrops atomic.Uint64

	// Owned by the reader goroutine.
	rx     []*frame
	rxmsgs []unix.Mmsghdr
	rxiov  []unix.Iovec
	rxN    int
	rxErr  unix.Errno
	stop   string // why the port ends, set by recv
	recvFn func(uintptr) bool
	outs   []out   // this batch's forwarding decisions
	qs     []*port // the distinct egress ports in outs
	ghead  []int32 // by egress port number: first entry in outs, or -1
	gtail  []int32 // by egress port number: last entry in outs
	dmsgs  []unix.Mmsghdr
	diovs  []unix.Iovec
	dfrs   []*frame
	dN     int
	dSent  int
	dErr   unix.Errno
	dTap   bool
	sendFn func(uintptr) bool

	// Owned by the writer goroutine.
	tx      []*frame
	txmsgs  []unix.Mmsghdr
	txiov   []unix.Iovec
	wFrom   int
	wN      int
	wErr    unix.Errno
	writeFn func(uintptr) bool
}

func (s *Switch) newPort(c PacketConn, opts PortOptions) (*port, error) {
	return s.newPortKind(c, opts, false)
}

func (s *Switch) newPortKind(c PacketConn, opts PortOptions, tap bool) (*port, error) {
	vlan := opts.VLAN
	if vlan == 0 {
		vlan = DefaultVLAN
	}
	if err := checkVLANs(vlan, opts.Trunk); err != nil {
		return nil, fmt.Errorf("attach %s port %s: %w", opts.Kind, opts.Peer, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("attach %s port %s: %w", opts.Kind, opts.Peer, err)
	}
	var typ, dup int
	var serr, derr error
	if err := rc.Control(func(fd uintptr) {
		if tap {
			typ = unix.SOCK_DGRAM
		} else {
			typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		}
		if serr == nil {
			dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}
	}); err != nil {
		return nil, fmt.Errorf("attach %s port %s: %w", opts.Kind, opts.Peer, err)
	}
	if serr != nil {
		return nil, fmt.Errorf("attach %s port %s: not a socket: %w", opts.Kind, opts.Peer, serr)
	}
	if typ != unix.SOCK_SEQPACKET && typ != unix.SOCK_DGRAM {
		return nil, fmt.Errorf("attach %s port %s: socket type %d is not SOCK_SEQPACKET or SOCK_DGRAM", opts.Kind, opts.Peer, typ)
	}
	if derr != nil {
		return nil, fmt.Errorf("attach %s port %s: dup: %w", opts.Kind, opts.Peer, derr)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("attach %s port %s: %w", opts.Kind, opts.Peer, err)
	}
	wfile := os.NewFile(uintptr(dup), "port-writer")
	wrc, err := wfile.SyscallConn()
	if err != nil {
		wfile.Close()
		return nil, fmt.Errorf("attach %s port %s: %w", opts.Kind, opts.Peer, err)
	}
	n := s.cfg.Batch
	p := &port{
		s: s, kind: opts.Kind, peer: opts.Peer, conn: c, rc: rc, wfile: wfile, wrc: wrc,
		seqpacket: typ == unix.SOCK_SEQPACKET && !tap,
		tap:       tap,
		q:         make(chan *frame, s.cfg.QueueLen),
		done:      make(chan struct{}),
		onClose:   opts.OnClose,
		onVLAN:    opts.OnVLAN,
		whenGone:  opts.closeWhenGone,
		rx:        make([]*frame, n),
		rxmsgs:    make([]unix.Mmsghdr, n),
		rxiov:     make([]unix.Iovec, n),
		tx:        make([]*frame, 0, n),
		txmsgs:    make([]unix.Mmsghdr, n),
		txiov:     make([]unix.Iovec, 3*n),
		ghead:     make([]int32, s.cfg.MaxPorts+1),
		gtail:     make([]int32, s.cfg.MaxPorts+1),
		dmsgs:     make([]unix.Mmsghdr, n),
		diovs:     make([]unix.Iovec, 3*n),
		dfrs:      make([]*frame, n),
	}
	for i := range p.ghead {
		p.ghead[i], p.gtail[i] = -1, -1
	}
	p.setVLAN(vlan, opts.Trunk)
	for i := range p.rx {
		p.rx[i] = s.pool.get()
		p.setRx(i)
	}
	p.recvFn = p.recv
	p.sendFn = p.sendOne
	p.writeFn = p.sendBatch
	return p, nil
}

// release frees what newPort set up, for a port never started.
func (p *port) release() {
	p.conn.Close()
	p.wfile.Close()
}

func (p *port) setRx(i int) {
	f := p.rx[i]
	p.rxiov[i] = unix.Iovec{Base: &f.buf[0]}
	p.rxiov[i].SetLen(len(f.buf))
	p.rxmsgs[i] = unix.Mmsghdr{}
	p.rxmsgs[i].Hdr.Iov = &p.rxiov[i]
	p.rxmsgs[i].Hdr.SetIovlen(1)
}

func (p *port) setVLAN(vlan int, trunk []int) {
	var t *vlanSet
	if len(trunk) > 0 {
		t = new(vlanSet)
		for _, v := range trunk {
			t[v>>6] |= 1 << (v & 63)
		}
	}
	p.trunk.Store(t)
	p.vlan.Store(uint32(vlan))
}

func (p *port) trunkHas(vid uint16) bool {
	t := p.trunk.Load()
	return t != nil && t.has(vid)
}

// member reports whether p carries VLAN vid.
func (p *port) member(vid uint16) bool { return uint16(p.vlan.Load()) == vid || p.trunkHas(vid) }

// egressTagged reports whether a frame of VLAN vid leaves p tagged.
func (p *port) egressTagged(vid uint16) bool { return uint16(p.vlan.Load()) != vid }

func (p *port) info() PortInfo {
	pi := PortInfo{
		ID: p.id, Kind: p.kind, Peer: p.peer, VLAN: int(p.vlan.Load()), Queued: len(p.q),
		RxFrames: p.rxFrames.Load(), RxBytes: p.rxBytes.Load(), RxDrops: p.rxDrops.Load(),
		TxFrames: p.txFrames.Load(), TxBytes: p.txBytes.Load(), TxDrops: p.txDrops.Load(),
	}
	if t := p.trunk.Load(); t != nil {
		pi.Trunk = t.list()
	}
	return pi
}

// close disconnects the port once: it leaves the switch, its sockets
// close (which ends its goroutines), and OnClose runs.
func (p *port) close(reason string) {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.s.removePort(p)
		p.conn.Close()
		p.wfile.Close()
		close(p.done)
		p.s.log.Info("port disconnected", "port", p.id, "kind", p.kind, "peer", p.peer, "reason", reason)
		if p.onClose != nil {
			p.onClose()
		}
	})
}

// gone closes a port whose peer has vanished, when nothing else (a
// control connection) will tell the switch.
func (p *port) gone(e unix.Errno) {
	if p.whenGone && (e == unix.ECONNREFUSED || e == unix.ENOTCONN || e == unix.ECONNRESET) {
		p.close("client gone")
	}
}

// setIov points iov at f as it leaves a port that wants it tagged or not,
// and returns how many entries it used (at most 3).
func setIov(iov []unix.Iovec, f *frame, tagged bool) int {
	b := f.buf
	switch {
	case tagged == f.tagged:
		iov[0] = unix.Iovec{Base: &b[0]}
		iov[0].SetLen(f.n)
		return 1
	case tagged:
		iov[0] = unix.Iovec{Base: &b[0]}
		iov[0].SetLen(12)
		iov[1] = unix.Iovec{Base: &f.tag[0]}
		iov[1].SetLen(vlanTagLen)
		iov[2] = unix.Iovec{Base: &b[12]}
		iov[2].SetLen(f.n - 12)
		return 3
	default:
		iov[0] = unix.Iovec{Base: &b[0]}
		iov[0].SetLen(12)
		iov[1] = unix.Iovec{Base: &b[16]}
		iov[1].SetLen(f.n - 16)
		return 2
	}
}

// recv is the reader's RawConn.Read callback: it receives and forwards
// batches until the queue is empty (false: wait for the poller) or the
// port must end (true, with p.stop saying why). Forwarding inside the
// callback lets a short batch, which means the queue was empty, go
// straight to the poller instead of making a receive call that would
// find nothing: within one RawConn.Read the poller keeps any arrival
// since, so no frame waits for the next one.
func (p *port) recv(fd uintptr) bool {
	for {
		if p.closed.Load() {
			p.stop = "closed"
			return true
		}
		if p.tap {
			f := p.rx[0]
			r, _, e := unix.Syscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&f.buf[0])), uintptr(len(f.buf)))
			if e == unix.EAGAIN {
				return false
			}
			p.rxmsgs[0].Len = uint32(r)
			p.rxmsgs[0].Hdr.Flags = 0
			p.rxN, p.rxErr = 1, e
			if e != 0 {
				p.rxN = 0
			}
		} else {
			r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&p.rxmsgs[0])), uintptr(len(p.rxmsgs)), unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EAGAIN {
				return false
			}
			p.rxN, p.rxErr = int(r), e
		}
		if p.stop = p.handle(); p.stop != "" {
			return true
		}
		if p.rxErr == 0 && !p.tap && p.rxN < len(p.rxmsgs) {
			return false
		}
	}
}

func (p *port) readLoop() {
	defer p.s.wg.Done()
	reason := "peer closed the connection"
	defer func() { p.close(reason) }()
	for {
		if err := p.rc.Read(p.recvFn); err != nil {
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed) {
				reason = err.Error()
			} else {
				reason = "closed"
			}
			return
		}
		if p.stop != "" {
			reason = p.stop
			return
		}
	}
}

// handle forwards what the last receive got, and returns why the port
// must end, or "".
func (p *port) handle() string {
	switch p.rxErr {
	case 0:
	case unix.ECONNREFUSED, unix.ECONNRESET, unix.ENOTCONN:
		if p.whenGone {
			return "client gone"
		}
		return ""
	case unix.EINTR, unix.ENOBUFS, unix.ENOMEM:
		// Transient: a datagram peer that went away and may come
		// back (the control stream decides when the port ends).
		return ""
	default:
		return "receive: " + p.rxErr.Error()
	}
	stop := ""
	n := 0
	for ; n < p.rxN && stop == ""; n++ {
		m := &p.rxmsgs[n]
		f := p.rx[n]
		f.n = int(m.Len)
		if f.n == 0 && p.seqpacket {
			stop = "peer closed the connection"
			break
		}
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			p.rxDrops.Add(1)
			p.s.warn.warn("oversize", "frame larger than the switch's maximum: dropped", "port", p.id, "peer", p.peer, "max", p.s.cfg.MaxFrame)
			m.Hdr.Flags = 0
			continue
		}
		if !p.s.input(p, f) {
			stop = "malformed frame"
		}
	}
	p.flush()
	for i := 0; i < n; i++ {
		if f := p.rx[i]; f.refs.Load() != 1 {
			f.release()
			p.rx[i] = p.s.pool.get()
			p.setRx(i)
		}
	}
	return stop
}

// out is one forwarding decision: frame f leaves through port q.
type out struct {
	q    *port
	f    *frame
	next int32 // the next entry for the same q, or -1
}

// flush sends this batch's frames, grouped by egress port: one sendmmsg
// per port when its queue is empty and its socket has room, its queue
// otherwise. Frames from one ingress to one egress keep their order.
func (p *port) flush() {
	if len(p.outs) == 0 {
		return
	}
	for i := range p.outs {
		e := &p.outs[i]
		id := e.q.id
		e.next = -1
		if t := p.gtail[id]; t >= 0 {
			if p.outs[t].q != e.q { // a port number reused within the batch
				e.q.txDrops.Add(1)
				continue
			}
			p.outs[t].next = int32(i)
		} else {
			p.ghead[id] = int32(i)
			p.qs = append(p.qs, e.q)
		}
		p.gtail[id] = int32(i)
	}
	for _, q := range p.qs {
		p.flushTo(q, p.ghead[q.id])
		p.ghead[q.id], p.gtail[q.id] = -1, -1
	}
	clear(p.qs)
	p.qs = p.qs[:0]
	clear(p.outs)
	p.outs = p.outs[:0]
}

func (p *port) flushTo(q *port, head int32) {
	s := p.s
	if q.pending.Load() != 0 {
		for i := head; i >= 0; i = p.outs[i].next {
			s.enqueue(q, p.outs[i].f)
		}
		return
	}
	k, iv := 0, 0
	for i := head; i >= 0; i = p.outs[i].next {
		f := p.outs[i].f
		n := setIov(p.diovs[iv:], f, q.egressTagged(f.vid))
		p.dmsgs[k] = unix.Mmsghdr{}
		p.dmsgs[k].Hdr.Iov = &p.diovs[iv]
		p.dmsgs[k].Hdr.SetIovlen(n)
		p.dfrs[k] = f
		k++
		iv += n
	}
	p.dN, p.dSent, p.dErr, p.dTap = k, 0, 0, q.tap
	err := q.rc.Write(p.sendFn)
	switch {
	case err != nil:
		q.txDrops.Add(uint64(k))
		p.dSent = k
	case p.dErr == 0 || p.dErr == unix.EAGAIN || p.dErr == unix.ENOBUFS:
	default:
		q.txDrops.Add(uint64(k))
		p.dSent = k
		q.gone(p.dErr)
	}
	for j, f := range p.dfrs[:k] {
		if j < p.dSent && err == nil && (p.dErr == 0 || p.dErr == unix.EAGAIN || p.dErr == unix.ENOBUFS) {
			q.txFrames.Add(1)
			q.txBytes.Add(uint64(f.length(q.egressTagged(f.vid))))
		} else if j >= p.dSent {
			s.enqueue(q, f)
		}
		p.dfrs[j] = nil
	}
}

// sendOne sends p.dmsgs[:p.dN] without blocking, and records in dSent
// how many went; p is the ingress port, fd the egress socket.
func (p *port) sendOne(fd uintptr) bool {
	if p.dTap {
		for p.dSent < p.dN {
			h := &p.dmsgs[p.dSent].Hdr
			if _, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(h.Iov)), uintptr(h.Iovlen)); e != 0 {
				p.dErr = e
				return true
			}
			p.dSent++
		}
		return true
	}
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&p.dmsgs[0])), uintptr(p.dN), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	if e == 0 {
		p.dSent = int(r)
	}
	p.dErr = e
	return true
}

func (p *port) sendBatch(fd uintptr) bool {
	if p.tap {
		i := p.wFrom
		p.wErr = 0
		for ; i < len(p.tx); i++ {
			h := &p.txmsgs[i].Hdr
			_, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(h.Iov)), uintptr(h.Iovlen))
			if e == unix.EAGAIN && i == p.wFrom {
				return false
			}
			if e != 0 {
				if i == p.wFrom {
					p.wErr = e
				}
				break
			}
		}
		p.wN = i - p.wFrom
		return true
	}
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&p.txmsgs[p.wFrom])), uintptr(len(p.tx)-p.wFrom), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	p.wN, p.wErr = int(r), e
	return true
}

func (p *port) writeLoop() {
	defer p.s.wg.Done()
	for {
		var f *frame
		select {
		case f = <-p.q:
		case <-p.done:
			p.drain()
			return
		}
		p.tx = append(p.tx[:0], f)
	fill:
		for len(p.tx) < cap(p.tx) {
			select {
			case f = <-p.q:
				p.tx = append(p.tx, f)
			default:
				break fill
			}
		}
		k := 0
		for i, f := range p.tx {
			n := setIov(p.txiov[k:], f, p.egressTagged(f.vid))
			p.txmsgs[i] = unix.Mmsghdr{}
			p.txmsgs[i].Hdr.Iov = &p.txiov[k]
			p.txmsgs[i].Hdr.SetIovlen(n)
			k += n
		}
		for p.wFrom = 0; p.wFrom < len(p.tx); {
			if err := p.wrc.Write(p.writeFn); err != nil {
				p.txDrops.Add(uint64(len(p.tx) - p.wFrom))
				break
			}
			if p.wErr != 0 {
				p.gone(p.wErr)
				p.txDrops.Add(1)
				p.wFrom++
				continue
			}
			for _, f := range p.tx[p.wFrom : p.wFrom+p.wN] {
				p.txFrames.Add(1)
				p.txBytes.Add(uint64(f.length(p.egressTagged(f.vid))))
			}
			p.wFrom += p.wN
		}
		for i, f := range p.tx {
			f.release()
			p.tx[i] = nil
		}
		p.pending.Add(-int32(len(p.tx)))
	}
}

// drain releases what is left in the queue of a closed port.
func (p *port) drain() {
	for {
		select {
		case f := <-p.q:
			f.release()
			p.pending.Add(-1)
		default:
			return
		}
	}
}
