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
	Op   string `json:"op"` // hold, drop, list; fd, end (replies to list)
	ID   uint64 `json:"id,omitempty"`
	Info string `json:"info,omitempty"`
}

// ServeKeeper runs a keeper on path until ctx ends, or until for idle it
// has held nothing with no switch connected. While no switch is
// connected it lets go of connections whose peer has gone.
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
	lonely := time.Now()
	for {
		select {
		case <-ctx.Done():
			k.closeAll()
			return nil
		case <-t.C:
		}
		k.mu.Lock()
		if k.switches == 0 {
			k.reap()
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

// reap lets go of connections whose peer hung up (k.mu held).
func (k *keeper) reap() {
	for id, h := range k.held {
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
			k.held[m.ID] = heldConn{fd: fds[0], info: m.Info}
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
				b, _ := json.Marshal(keeperMsg{Op: "fd", ID: id, Info: h.info})
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
		return nil, fmt.Errorf("keeper %s: %w", path, err)
	}
	return &keeperClient{c: c, path: path, next: 1, warn: warn}, nil
}

type keptConn struct {
	id   uint64
	info string
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
					out = append(out, keptConn{id: m.ID, info: m.Info, file: os.NewFile(uintptr(fd), "bess")})
				}
			}
		}
		if m.ID >= k.next {
			k.next = m.ID + 1
		}
	}
}

// hold gives the keeper a duplicate of c's descriptor and returns its id.
func (k *keeperClient) hold(c *net.UnixConn, info string) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	id := k.next
	k.next++
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	b, _ := json.Marshal(keeperMsg{Op: "hold", ID: id, Info: info})
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

func (k *keeperClient) drop(id uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, _ := json.Marshal(keeperMsg{Op: "drop", ID: id})
	if _, err := k.c.Write(b); err != nil && !errors.Is(err, net.ErrClosed) {
		k.warn.warn("keeper", "keeper connection lost: BESS ports will not survive a restart", "sock", k.path, "err", err)
	}
}

func (k *keeperClient) Close() error { return k.c.Close() }
