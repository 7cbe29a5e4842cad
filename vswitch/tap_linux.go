package vswitch

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/umlkit/umlkit/internal/hostnet"
)

// AttachTAP adds the host TAP device name as a port, creating it when it
// does not exist (a created device goes away when the port closes; one
// made persistent beforehand, for example with `ip tuntap add`, stays).
// The host side configures the device (addresses, link up) as usual. It
// needs CAP_NET_ADMIN, or a persistent device owned by the caller. With a
// keeper (UseKeeper) the device outlives the switch: a switch started
// again takes it back, with its port number, VLANs and the host's
// configuration of it intact.
func (s *Switch) AttachTAP(name string, opts PortOptions) (int, error) {
	if name == "" {
		return 0, fmt.Errorf("tap: an interface name is needed")
	}
	if opts.Kind == "" {
		opts.Kind = "tap"
	}
	if opts.Peer == "" {
		opts.Peer = name
	}
	kc := s.keeperClient()
	var f *os.File
	var kid uint64
	if kept := s.takeKept(func(k keptConn) bool { return k.Kind == "tap" && k.info == name }); len(kept) > 0 {
		k := kept[0]
		for _, extra := range kept[1:] {
			extra.file.Close()
			kc.drop(extra.id)
		}
		f, kid = k.file, k.id
		s.takeBack(kc, k, &opts)
		s.log.Info("tap device taken back from the keeper", "tap", name)
	} else {
		fd, _, err := hostnet.OpenTap(name, unix.O_NONBLOCK)
		if err != nil {
			return 0, fmt.Errorf("tap %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), "tap "+name)
		kid = s.hold(kc, f, name, "tap", &opts)
	}
	p, err := s.newPortKind(f, opts, true)
	if err != nil {
		f.Close()
		if kid != 0 {
			kc.drop(kid)
		}
		return 0, err
	}
	if err := s.start(p, opts); err != nil {
		if kid != 0 && !errors.Is(err, ErrClosed) {
			kc.drop(kid)
		}
		return 0, err
	}
	if kid != 0 {
		kc.set(kid, keptMeta{Kind: "tap", Port: p.id, VLAN: opts.VLAN, Trunk: opts.Trunk})
	}
	return p.id, nil
}
