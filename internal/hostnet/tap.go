// Package hostnet connects UML instances to the host's network: persistent
// TAP devices (like tunctl), the kernel's uml_net helper, host routes and
// proxy ARP for instance addresses, and forwarding with NAT. It speaks
// netlink and nftables directly; it never runs ip, ifconfig, route or arp.
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MaxNameLen is the longest interface name the kernel accepts.
const MaxNameLen = unix.IFNAMSIZ - 1

// ErrPermission is wrapped by errors caused by missing CAP_NET_ADMIN.
var ErrPermission = errors.New("permission denied: needs CAP_NET_ADMIN (run as root, or: setcap cap_net_admin+ep $(command -v umlkit))")

// ErrExists is wrapped when a device or address is already there.
var ErrExists = errors.New("already exists")

// Tap describes a TAP device on the host.
type Tap struct {
	Name       string   `json:"name"`
	Index      int      `json:"index"`
	Owner      int      `json:"owner"` // uid allowed to attach, -1 for any
	Group      int      `json:"group"` // gid allowed to attach, -1 for any
	Persistent bool     `json:"persistent"`
	Up         bool     `json:"up"`
	Addrs      []string `json:"addrs"`
	MAC        string   `json:"mac"`
}

// TapOptions configures CreateTap.
type TapOptions struct {
	Owner int        // uid that may attach without privileges; -1 for none
	Group int        // gid that may attach; -1 for none
	Addr  *net.IPNet // host address on the TAP, brought up; nil for none
}

// ValidName checks an interface name the way the kernel will.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("interface name %q is %d bytes; the kernel allows at most %d", name, len(name), MaxNameLen)
	case strings.ContainsAny(name, "/ \t\n:") || name == "." || name == "..":
		return fmt.Errorf("interface name %q has a character the kernel refuses ('/', ':' or a space)", name)
	}
	return nil
}

func permErr(op string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%s: %w", op, ErrPermission)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// ifreq is struct ifreq with the flags member.
type ifreq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// openTap is OpenTap as an *os.File in blocking mode.
func openTap(name string) (*os.File, string, error) {
	fd, got, err := OpenTap(name, 0)
	if err != nil {
		return nil, "", err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+got), got, nil
}

// OpenTap opens /dev/net/tun attached to the TAP device name, raw Ethernet
// frames without a packet-information header (as the kernel's tuntap
// transport does). A missing device is created, not persistent (it goes
// when the descriptor is closed); with name empty the kernel picks one.
// flags are added to O_RDWR|O_CLOEXEC (O_NONBLOCK for a poller). It returns
// the descriptor, which the caller owns, and the device's name.
func OpenTap(name string, flags int) (int, string, error) {
	if name != "" {
		if err := ValidName(name); err != nil {
			return -1, "", err
		}
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, "", errors.New("/dev/net/tun is missing: modprobe tun, or mkdir -p /dev/net && mknod /dev/net/tun c 10 200")
		}
		return -1, "", permErr("open /dev/net/tun", err)
	}
	var req ifreq
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		unix.Close(fd)
		if e == unix.EBUSY {
			return -1, "", fmt.Errorf("TAP %s is in use by another process", name)
		}
		return -1, "", permErr("TUNSETIFF "+name, e)
	}
	got := string(req.name[:])
	if i := strings.IndexByte(got, 0); i >= 0 {
		got = got[:i]
	}
	return fd, got, nil
}

func ioctlInt(f *os.File, req uint, v int) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(v)); e != 0 {
		return e
	}
	return nil
}

// asTap returns l as a TAP device, if it is one.
func asTap(l netlink.Link) (*netlink.Tuntap, bool) {
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, false
	}
	return tt, true
}

// CreateTap creates a persistent TAP device, like tunctl: owned by
// opts.Owner/Group, with opts.Addr on it and up when given. On any error
// nothing is left behind.
func CreateTap(name string, opts TapOptions) (*Tap, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if l, err := netlink.LinkByName(name); err == nil {
		if tt, ok := asTap(l); ok {
			return nil, fmt.Errorf("create tap %s: %w (TAP owned by uid %d): use it, or remove it with: umlkit tap delete %s", name, ErrExists, tt.Owner, name)
		}
		return nil, fmt.Errorf("create tap %s: %w as a %s device, not a TAP: pick another name", name, ErrExists, l.Type())
	}
	if opts.Addr != nil {
		if dev, err := AddressOwner(opts.Addr.IP); err != nil {
			return nil, err
		} else if dev != "" {
			return nil, fmt.Errorf("create tap %s: address %s is %w on %s: pick another address", name, opts.Addr.IP, ErrExists, dev)
		}
	}
	f, got, err := openTap(name)
	if err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	defer f.Close()
	undo := func() { ioctlInt(f, unix.TUNSETPERSIST, 0) }
	if opts.Owner >= 0 {
		if err := ioctlInt(f, unix.TUNSETOWNER, opts.Owner); err != nil {
			return nil, permErr("create tap "+got+": set owner", err)
		}
	}
	if opts.Group >= 0 {
		if err := ioctlInt(f, unix.TUNSETGROUP, opts.Group); err != nil {
			return nil, permErr("create tap "+got+": set group", err)
		}
	}
	if err := ioctlInt(f, unix.TUNSETPERSIST, 1); err != nil {
		return nil, permErr("create tap "+got+": make persistent", err)
	}
	if opts.Addr != nil {
		if err := addrUp(got, opts.Addr); err != nil {
			undo()
			return nil, fmt.Errorf("create tap %s: %w", got, err)
		}
	}
	return GetTap(got)
}

// addrUp puts addr on the device and brings it up.
func addrUp(name string, addr *net.IPNet) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: addr}); err != nil {
		return permErr("add address "+addr.String(), err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return permErr("set "+name+" up", err)
	}
	return nil
}

// AddressOwner returns the host interface that has ip, or "".
func AddressOwner(ip net.IP) (string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IP.Equal(ip) {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return fmt.Sprintf("interface %d", a.LinkIndex), nil
			}
			return l.Attrs().Name, nil
		}
	}
	return "", nil
}

// GetTap describes the TAP device name.
func GetTap(name string) (*Tap, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("tap %s: no such device", name)
	}
	tt, ok := asTap(l)
	if !ok {
		return nil, fmt.Errorf("%s is a %s device, not a TAP", name, l.Type())
	}
	return describe(tt), nil
}

// describe turns netlink's view of a TAP into a Tap. Netlink reports no
// owner as 0, so Owner and Group 0 mean root or nobody in particular.
func describe(tt *netlink.Tuntap) *Tap {
	a := tt.Attrs()
	t := &Tap{Name: a.Name, Index: a.Index, Owner: int(tt.Owner), Group: int(tt.Group),
		Persistent: !tt.NonPersist, Up: a.Flags&net.FlagUp != 0, MAC: a.HardwareAddr.String()}
	l := netlink.Link(tt)
	if addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL); err == nil {
		for _, ad := range addrs {
			if !ad.IP.IsLinkLocalUnicast() {
				t.Addrs = append(t.Addrs, ad.IPNet.String())
			}
		}
	}
	return t
}

// ListTaps lists the host's TAP devices.
func ListTaps() ([]Tap, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []Tap
	for _, l := range links {
		if tt, ok := asTap(l); ok {
			out = append(out, *describe(tt))
		}
	}
	return out, nil
}

// DeleteTap removes the TAP device name. A TAP that an instance holds open
// goes away when the instance lets go of it.
func DeleteTap(name string) error {
	if _, err := GetTap(name); err != nil {
		return fmt.Errorf("delete tap: %w", err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return permErr("delete tap "+name, err)
	}
	return nil
}
