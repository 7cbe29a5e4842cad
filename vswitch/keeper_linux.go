package vswitch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A keeper is a small long-lived process that holds a duplicate of every
// connected BESS socket of a switch, so that the connections outlive the
// switch process: the kernel's vector transport never reconnects, but a
// connection stays open while any process holds it. A switch started
// again asks the keeper for the descriptors and carries on. The switch
// and the keeper talk over a SOCK_SEQPACKET socket, one JSON message per
// packet, descriptors passed with SCM_RIGHTS.
type keeperMsg struct {
	Op   string `json:"op"` // hold, set, drop, list; fd, end (replies to list)
	ID   uint64 `json:"id,omitempty"`
	Info string `json:"info,omitempty"` // the peer (bess) or device name (tap)
	keptMeta
}

// keptMeta is what a switch needs to give a kept connection back the
// port it had: its kind, number and VLANs (runtime changes included).
type keptMeta struct {
	Kind  string `json:"kind,omitempty"` // bess (the default) or tap
	Port  int    `json:"port,omitempty"`
	VLAN  int    `json:"vlan,omitempty"`
	Trunk []int  `json:"trunk,omitempty"`
}

// ServeKeeper runs a keeper on path until ctx ends, or until for idle it
// has held nothing with no switch connected. While no switch is
// connected it lets go of connections whose peer has gone, and, once no
// switch has come back for idle, of TAP devices (a TAP device has no
// peer to go away; a created one then disappears).
func ServeKeeper(ctx context.Context, path string, idle time.Duration, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := listenUnix("unixpacket", path, ListenOptions{GID: -1})
	if err != nil {
		return err
	}
	k := &keeper{held: map[uint64]heldConn{}, log: log}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			wg.Go(func() { k.serve(c) })
		}
	})
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lonely, alone := time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			k.closeAll()
			return nil
		case <-t.C:
		}
		k.mu.Lock()
		if k.switches > 0 {
			alone = time.Now()
		} else {
			k.reap(time.Since(alone) >= idle)
		}
		if k.switches > 0 || len(k.held) > 0 {
			lonely = time.Now()
		}
		k.mu.Unlock()
		if time.Since(lonely) >= idle {
			log.Info("keeper idle: exiting", "sock", path)
			return nil
		}
	}
}

type heldConn struct {
	fd   int
	info string
	keptMeta
}

type keeper struct {
	log      *slog.Logger
	mu       sync.Mutex
	held     map[uint64]heldConn
	switches int
	conns    []*net.UnixConn
}

func (k *keeper) closeAll() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, h := range k.held {
		unix.Close(h.fd)
		delete(k.held, id)
	}
	for _, c := range k.conns {
		c.Close()
	}
}

// reap lets go of connections whose peer hung up, and with taps of TAP
// devices (k.mu held).
func (k *keeper) reap(taps bool) {
	for id, h := range k.held {
		if h.Kind == "tap" {
			if taps {
				unix.Close(h.fd)
				delete(k.held, id)
				k.log.Info("let go of a TAP device: no switch came back", "id", id, "tap", h.info)
			}
			continue
		}
		pfd := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLRDHUP}}
		if n, _ := unix.Poll(pfd, 0); n > 0 && pfd[0].Revents&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			unix.Close(h.fd)
			delete(k.held, id)
			k.log.Info("let go of a closed connection", "id", id, "peer", h.info)
		}
	}
}

func (k *keeper) serve(c *net.UnixConn) {
	k.mu.Lock()
	k.switches++
	k.conns = append(k.conns, c)
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.switches--
		k.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		var fds []int
		if oobn > 0 {
			if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cms {
					if r, err := unix.ParseUnixRights(&cm); err == nil {
						fds = append(fds, r...)
					}
				}
			}
		}
		var m keeperMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return
		}
		switch m.Op {
		case "hold":
			if len(fds) != 1 {
				for _, fd := range fds {
					unix.Close(fd)
				}
				continue
			}
			k.mu.Lock()
			if old, ok := k.held[m.ID]; ok {
				unix.Close(old.fd)
			}
			k.held[m.ID] = heldConn{fd: fds[0], info: m.Info, keptMeta: m.keptMeta}
			k.mu.Unlock()
		case "set":
			k.mu.Lock()
			if h, ok := k.held[m.ID]; ok {
				h.Port, h.VLAN, h.Trunk = m.Port, m.VLAN, m.Trunk
				k.held[m.ID] = h
			}
			k.mu.Unlock()
		case "drop":
			k.mu.Lock()
			if h, ok := k.held[m.ID]; ok {
				unix.Close(h.fd)
				delete(k.held, m.ID)
			}
			k.mu.Unlock()
		case "list":
			k.mu.Lock()
			for id, h := range k.held {
				b, _ := json.Marshal(keeperMsg{Op: "fd", ID: id, Info: h.info, keptMeta: h.keptMeta})
				c.WriteMsgUnix(b, unix.UnixRights(h.fd), nil)
			}
			k.mu.Unlock()
			b, _ := json.Marshal(keeperMsg{Op: "end"})
			c.Write(b)
		default:
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}

// keeperClient is a switch's connection to its keeper.
type keeperClient struct {
	mu   sync.Mutex
	c    *net.UnixConn
	next uint64
	path string
	warn *rateLog
}

func dialKeeper(path string, warn *rateLog) (*keeperClient, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("keeper %s: %w (umlkit switch starts its keeper unless --no-keeper; `umlkit switch keeper --sock %s` runs one by hand)", path, err, path)
	}
	return &keeperClient{c: c, path: path, next: 1, warn: warn}, nil
}

type keptConn struct {
	id   uint64
	info string
	keptMeta
	file *os.File
}

// list returns the connections the keeper holds, as new descriptors.
func (k *keeperClient) list() ([]keptConn, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, _ := json.Marshal(keeperMsg{Op: "list"})
	if _, err := k.c.Write(b); err != nil {
		return nil, fmt.Errorf("keeper %s: %w", k.path, err)
	}
	var out []keptConn
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	k.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer k.c.SetReadDeadline(time.Time{})
	for {
		n, oobn, _, _, err := k.c.ReadMsgUnix(buf, oob)
		if err != nil {
			for _, c := range out {
				c.file.Close()
			}
			return nil, fmt.Errorf("keeper %s: %w", k.path, err)
		}
		var m keeperMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			return out, fmt.Errorf("keeper %s: %w", k.path, err)
		}
		if m.Op == "end" {
			return out, nil
		}
		cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, cm := range cms {
			if fds, err := unix.ParseUnixRights(&cm); err == nil {
				for _, fd := range fds {
					unix.SetNonblock(fd, true)
					out = append(out, keptConn{id: m.ID, info: m.Info, keptMeta: m.keptMeta, file: os.NewFile(uintptr(fd), "kept "+m.Info)})
				}
			}
		}
		if m.ID >= k.next {
			k.next = m.ID + 1
		}
	}
}

// hold gives the keeper a duplicate of c's descriptor and returns its id.
func (k *keeperClient) hold(c syscall.Conn, info string, meta keptMeta) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	id := k.next
	k.next++
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	b, _ := json.Marshal(keeperMsg{Op: "hold", ID: id, Info: info, keptMeta: meta})
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = k.c.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return 0, err
	}
	if werr != nil {
		return 0, fmt.Errorf("keeper %s: %w", k.path, werr)
	}
	return id, nil
}

// set updates what the keeper knows of a held connection's port.
func (k *keeperClient) set(id uint64, meta keptMeta) {
	k.send(keeperMsg{Op: "set", ID: id, keptMeta: meta})
}

func (k *keeperClient) drop(id uint64) { k.send(keeperMsg{Op: "drop", ID: id}) }

func (k *keeperClient) send(m keeperMsg) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, _ := json.Marshal(m)
	if _, err := k.c.Write(b); err != nil && !errors.Is(err, net.ErrClosed) {
		k.warn.warn("keeper", "keeper connection lost: BESS and TAP ports will not survive a restart", "sock", k.path, "err", err)
	}
}

func (k *keeperClient) Close() error { return k.c.Close() }

// UseKeeper connects the switch to the keeper (ServeKeeper) on path,
// which from then on holds the switch's BESS connections and TAP devices
// so that they outlive it, and takes back what the keeper held for an
// earlier switch: ListenBESS reattaches the BESS connections, AttachTAP
// the TAP device of the same name, each with its port number and VLANs.
// ForgetKept lets go of what neither took back. Call it first.
func (s *Switch) UseKeeper(path string) error {
	if s.keeperClient() != nil {
		return nil
	}
	kc, err := dialKeeper(path, s.warn)
	if err != nil {
		return err
	}
	if err := s.addCloser(kc); err != nil {
		kc.Close()
		return err
	}
	kept, err := kc.list()
	if err != nil {
		s.warn.warn("keeper", "cannot take back connections from the keeper", "sock", path, "err", err)
	}
	s.mu.Lock()
	s.keeper, s.kept = kc, kept
	s.mu.Unlock()
	return nil
}

// ForgetKept lets go of the connections and TAP devices the keeper held
// for an earlier switch that this one did not take back (a TAP device
// no longer asked for, say).
func (s *Switch) ForgetKept() {
	for _, k := range s.takeKept(func(keptConn) bool { return true }) {
		s.log.Info("let go of a kept port nobody asked for", "kind", k.Kind, "peer", k.info)
		k.file.Close()
		s.keeperClient().drop(k.id)
	}
}

func (s *Switch) keeperClient() *keeperClient {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keeper
}

// takeKept removes and returns the kept connections that match.
func (s *Switch) takeKept(match func(keptConn) bool) []keptConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var taken []keptConn
	rest := s.kept[:0]
	for _, k := range s.kept {
		if match(k) {
			taken = append(taken, k)
		} else {
			rest = append(rest, k)
		}
	}
	s.kept = rest
	return taken
}

// hold gives the keeper, if any, a duplicate of c for a port about to be
// attached with opts, and makes opts tell the keeper when the port's
// VLANs change and when it ends. It returns the keeper's id, or 0.
func (s *Switch) hold(kc *keeperClient, c syscall.Conn, info, kind string, opts *PortOptions) uint64 {
	if kc == nil {
		return 0
	}
	id, err := kc.hold(c, info, keptMeta{Kind: kind, VLAN: opts.VLAN, Trunk: opts.Trunk})
	if err != nil {
		s.warn.warn("keeper", "keeper unreachable: this port will not survive a restart", "sock", kc.path, "kind", kind, "peer", info, "err", err)
		return 0
	}
	s.keep(kc, id, opts)
	return id
}

// takeBack gives a port about to be attached with opts for the kept
// connection k what it had: its port number (unless opts asks for one)
// and its VLANs; and keeps the keeper's record of it up to date.
func (s *Switch) takeBack(kc *keeperClient, k keptConn, opts *PortOptions) {
	if opts.ID == 0 {
		opts.ID = k.Port
	}
	if k.VLAN != 0 {
		opts.VLAN, opts.Trunk = k.VLAN, k.Trunk
	}
	s.keep(kc, k.id, opts)
}

// keep makes a port attached with opts keep the keeper's record of it
// (id) up to date: its VLANs when they change, and its end.
func (s *Switch) keep(kc *keeperClient, id uint64, opts *PortOptions) {
	kind, onClose, onVLAN := opts.Kind, opts.OnClose, opts.OnVLAN
	opts.OnClose = func() {
		select {
		case <-s.done: // the switch is closing: keep it for the next one
		default:
			kc.drop(id)
		}
		if onClose != nil {
			onClose()
		}
	}
	opts.OnVLAN = func(port, vlan int, trunk []int) {
		kc.set(id, keptMeta{Kind: kind, Port: port, VLAN: vlan, Trunk: trunk})
		if onVLAN != nil {
			onVLAN(port, vlan, trunk)
		}
	}
}
