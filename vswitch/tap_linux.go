package vswitch

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/umlkit/umlkit/internal/hostnet"
)

// AttachTAP adds the host TAP device name as a port, creating it when it
// does not exist (a created device goes away when the port closes; one
// made persistent beforehand, for example with `ip tuntap add`, stays).
// The host side configures the device (addresses, link up) as usual. It
// needs CAP_NET_ADMIN, or a persistent device owned by the caller.
func (s *Switch) AttachTAP(name string, opts PortOptions) (int, error) {
	if name == "" {
		return 0, fmt.Errorf("tap: an interface name is needed")
	}
	fd, _, err := hostnet.OpenTap(name, unix.O_NONBLOCK)
	if err != nil {
		return 0, fmt.Errorf("tap %s: %w", name, err)
	}
	if opts.Kind == "" {
		opts.Kind = "tap"
	}
	if opts.Peer == "" {
		opts.Peer = name
	}
	f := os.NewFile(uintptr(fd), "tap "+name)
	p, err := s.newPortKind(f, opts, true)
	if err != nil {
		f.Close()
		return 0, err
	}
	if err := s.start(p, opts); err != nil {
		return 0, err
	}
	return p.id, nil
}
