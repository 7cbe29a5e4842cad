package vswitch

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// AttachTAP adds the host TAP device name as a port, creating it when it
// does not exist (a created device goes away when the port closes; one
// made persistent beforehand, for example with `ip tuntap add`, stays).
// The host side configures the device (addresses, link up) as usual. It
// needs CAP_NET_ADMIN, or a persistent device owned by the caller.
func (s *Switch) AttachTAP(name string, opts PortOptions) (int, error) {
	if len(name) == 0 || len(name) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("tap %q: an interface name has 1 to %d characters", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("tap %s: open /dev/net/tun: %w (load the tun module: modprobe tun)", name, err)
	}
	var ifr [unix.IFNAMSIZ + 24]byte
	copy(ifr[:], name)
	*(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		unix.Close(fd)
		return 0, fmt.Errorf("tap %s: TUNSETIFF: %w (it needs CAP_NET_ADMIN, or a tap device made for this user)", name, e)
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
