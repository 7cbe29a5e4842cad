package vswitch

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// ListenOptions sets how a transport's socket file is shared, and the
// VLANs of the ports that connect through it.
type ListenOptions struct {
	// Mode is the socket file's permission; 0 means 0600.
	Mode os.FileMode
	// GID, when not negative, is given the socket file's group; zero is a
	// real group (root), so callers wanting none pass -1.
	GID int
	// VLAN and Trunk are the VLANs of the ports that connect here.
	VLAN  int
	Trunk []int
	// Keeper, for BESS, is the socket of a running keeper (ServeKeeper)
	// that holds the connections across restarts of the switch: ListenBESS
	// takes back what it holds and gives it every new connection.
	Keeper string
}

// listenUnix listens on a Unix socket path the safe way: when the path
// exists, dial it first; a live server there is ErrInUse, a dead one's
// socket file is removed. Anything else at the path is an error.
func listenUnix(network, path string, o ListenOptions) (*net.UnixListener, error) {
	if len(path) > 107 {
		return nil, fmt.Errorf("listen %s: path is %d bytes, longer than the 107 a Unix socket allows: use a shorter directory", path, len(path))
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: the path exists and is not a socket: remove it or choose another path", path)
		}
		c, err := net.DialTimeout(network, path, 2*time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("listen %s: %w: stop that switch first, or choose another path", path, ErrInUse)
		case errors.Is(err, syscall.EPROTOTYPE):
			return nil, fmt.Errorf("listen %s: %w (a server of another socket type answers)", path, ErrInUse)
		case errors.Is(err, syscall.ECONNREFUSED):
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("listen %s: remove stale socket: %w", path, err)
			}
		default:
			return nil, fmt.Errorf("listen %s: probe existing socket: %w", path, err)
		}
	}
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	mode := o.Mode
	if mode == 0 {
		mode = 0o600
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if o.GID >= 0 {
		if err := os.Chown(path, -1, o.GID); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen %s: %w", path, err)
		}
	}
	return ln, nil
}

// acceptLoop accepts on ln until it is closed, handing each connection to
// handle. Temporary errors (out of descriptors) pause it briefly.
func (s *Switch) acceptLoop(ln *net.UnixListener, what string, handle func(*net.UnixConn)) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.warn.warn("accept-"+what, "accept failed", "sock", ln.Addr().String(), "err", err)
			select {
			case <-s.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		handle(c)
	}
}

// peerPID returns the pid of the process at the other end of c, or 0.
func peerPID(c *net.UnixConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	rc.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// ListenBESS accepts the vector BESS transport on path (a SOCK_SEQPACKET
// socket: vecN:transport=bess,dst=PATH) and attaches each connection as a
// port. The socket file is removed when the switch closes.
func (s *Switch) ListenBESS(path string, o ListenOptions) error {
	ln, err := listenUnix("unixpacket", path, o)
	if err != nil {
		return err
	}
	if err := s.addCloser(ln); err != nil {
		ln.Close()
		return err
	}
	if o.Keeper != "" {
		if err := s.UseKeeper(o.Keeper); err != nil {
			s.removeCloser(ln)
			ln.Close()
			return err
		}
	}
	kc := s.keeperClient()
	for _, k := range s.takeKept(func(k keptConn) bool { return k.Kind == "" || k.Kind == "bess" }) {
		opts := PortOptions{Kind: "bess", Peer: k.info, VLAN: o.VLAN, Trunk: o.Trunk}
		s.takeBack(kc, k, &opts)
		id, err := s.Attach(k.file, opts)
		if err != nil {
			s.warn.warn("attach", "cannot attach a kept BESS connection", "sock", path, "peer", k.info, "err", err)
			kc.drop(k.id)
			continue
		}
		if id != k.Port {
			kc.set(k.id, keptMeta{Kind: "bess", Port: id, VLAN: opts.VLAN, Trunk: opts.Trunk})
		}
		s.log.Info("port restored", "port", id, "peer", k.info)
	}
	s.log.Info("listening", "transport", "bess", "sock", path)
	ok := s.goroutine(func() {
		s.acceptLoop(ln, "bess", func(c *net.UnixConn) {
			peer := fmt.Sprintf("pid %d", peerPID(c))
			opts := PortOptions{Kind: "bess", Peer: peer, VLAN: o.VLAN, Trunk: o.Trunk}
			kid := s.hold(kc, c, peer, "bess", &opts)
			id, err := s.Attach(c, opts)
			if err != nil {
				s.warn.warn("attach", "cannot attach BESS connection", "sock", path, "peer", peer, "err", err)
				return
			}
			if kid != 0 {
				kc.set(kid, keptMeta{Kind: "bess", Port: id, VLAN: opts.VLAN, Trunk: opts.Trunk})
			}
		})
	})
	if !ok {
		ln.Close()
		return ErrClosed
	}
	return nil
}
