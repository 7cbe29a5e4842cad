package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HelperVersion is the uml_net protocol version this helper speaks (the
// kernel passes it as the first argument).
const HelperVersion = "4"

// helperLog collects the "* what was done" lines the kernel prints on the
// instance's console.
type helperLog struct{ strings.Builder }

func (l *helperLog) did(format string, a ...any) { fmt.Fprintf(l, "* "+format+"\n", a...) }
func (l *helperLog) fail(err error)              { fmt.Fprintf(l, "uml_net: %v\n", err) }

// RunHelper is umlkit as the kernel's uml_net helper. args are the
// arguments after the program name; out is the helper's stdout, the socket
// the kernel gave it. It returns the exit status.
//
//	uml_net 4 tuntap up HOST_IP      create a TAP, address it, pass it back
//	uml_net 4 add|del TAP ADDR MASK  host route and proxy ARP for ADDR
//
// It acts only on the TAP it created for the calling user and on the
// addresses the instance configured.
func RunHelper(args []string, out *os.File, errOut io.Writer) int {
	if len(args) < 2 || args[0] != HelperVersion {
		fmt.Fprintf(errOut, "uml_net: unsupported invocation %q: this helper speaks version %s (uml_net %s tuntap up HOST_IP | add|del TAP ADDR MASK)\n", args, HelperVersion, HelperVersion)
		return 1
	}
	switch args[1] {
	case "tuntap":
		if len(args) < 3 || args[2] != "up" {
			fmt.Fprintf(errOut, "uml_net: bad tuntap op %q\n", args[2:])
			return 1
		}
		return tuntapUp(args[3:], out)
	case "add", "del":
		var log helperLog
		if len(args) < 5 {
			log.fail(errors.New("too few arguments to tuntap change_addr"))
		} else if err := changeAddr(args[1] == "add", args[2], args[3], args[4], &log); err != nil {
			log.fail(err)
		}
		if err := writeOutput(out, log.String()); err != nil {
			fmt.Fprintf(errOut, "uml_net: %v\n", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(errOut, "uml_net: unknown transport or op %q (only tuntap is supported)\n", args[1])
		return 1
	}
}

// writeOutput sends text the way the kernel's read_output expects: its
// length (host order int, counting a final NUL), then the bytes.
func writeOutput(w io.Writer, text string) error {
	b := append([]byte(text), 0)
	var n [4]byte
	binary.NativeEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := w.Write(append(n[:], b...)); err != nil {
		return fmt.Errorf("write output to the kernel: %w", err)
	}
	return nil
}

func tuntapUp(args []string, out *os.File) int {
	var log helperLog
	var tap *os.File
	name := ""
	err := func() error {
		if len(args) < 1 {
			return errors.New("too few arguments to tuntap_up: the kernel must give the host address (ethN=tuntap,,MAC,HOST_IP)")
		}
		gate := net.ParseIP(args[0]).To4()
		if gate == nil {
			return fmt.Errorf("host address %q is not an IPv4 address", args[0])
		}
		if dev, err := AddressOwner(gate); err != nil {
			return err
		} else if dev != "" {
			return fmt.Errorf("host address %s is already on %s: give the instance another HOST_IP", gate, dev)
		}
		f, got, err := openTap("")
		if err != nil {
			return err
		}
		tap, name = f, got
		// The TAP belongs to the user who started the instance, so that
		// later add/del requests can be checked against it.
		if err := ioctlInt(f, unix.TUNSETOWNER, os.Getuid()); err != nil {
			return permErr("set owner of "+got, err)
		}
		log.did("created %s for uid %d", got, os.Getuid())
		if err := addrUp(got, &net.IPNet{IP: gate, Mask: net.CIDRMask(32, 32)}); err != nil {
			return err
		}
		log.did("%s: address %s/32, up", got, gate)
		if err := setSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		log.did("net.ipv4.ip_forward = 1")
		return nil
	}()
	if err != nil {
		log.fail(err)
	}
	var ifname [unix.IFNAMSIZ]byte
	copy(ifname[:], name)
	msg := append([]byte(nil), ifname[:]...)
	msg = append(msg, append([]byte(log.String()), 0)...)
	var oob []byte
	if err == nil {
		oob = unix.UnixRights(int(tap.Fd()))
	} else {
		msg = msg[unix.IFNAMSIZ:] // no name: the kernel prints the log
	}
	if serr := unix.Sendmsg(int(out.Fd()), msg, oob, nil, 0); serr != nil {
		fmt.Fprintf(os.Stderr, "uml_net: send to the kernel: %v\n%s", serr, log.String())
		return 1
	}
	if err != nil {
		return 1
	}
	return 0
}

func setSysctl(path, value string) error {
	if err := os.WriteFile("/proc/sys/"+path, []byte(value), 0); err != nil {
		return permErr("set "+strings.ReplaceAll(path, "/", "."), err)
	}
	return nil
}

// changeAddr adds or removes what makes addr on the instance reachable
// from the host and its networks: a host route through the TAP, proxy ARP
// on the TAP, and proxy neighbour entries on the other interfaces whose
// routes cover addr/mask.
func changeAddr(add bool, dev, addrS, maskS string, log *helperLog) error {
	if err := ValidName(dev); err != nil {
		return err
	}
	addr := net.ParseIP(addrS).To4()
	mask := net.ParseIP(maskS).To4()
	if addr == nil || mask == nil || !addr.IsGlobalUnicast() {
		return fmt.Errorf("bad address %q or mask %q", addrS, maskS)
	}
	t, err := GetTap(dev)
	if err != nil {
		return err
	}
	if uid := os.Getuid(); uid != 0 && t.Owner != uid {
		return fmt.Errorf("%s does not belong to uid %d: refusing to route for it", dev, uid)
	}
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	host := &net.IPNet{IP: addr, Mask: net.CIDRMask(32, 32)}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: host, Scope: netlink.SCOPE_LINK}
	others, err := coveringLinks(addr, net.IPMask(mask), link.Attrs().Index)
	if err != nil {
		return err
	}
	if add {
		if err := netlink.RouteReplace(route); err != nil {
			return permErr("route "+host.String()+" dev "+dev, err)
		}
		log.did("route %s dev %s", host, dev)
		if err := setSysctl("net/ipv4/conf/"+dev+"/proxy_arp", "1"); err != nil {
			return err
		}
		log.did("net.ipv4.conf.%s.proxy_arp = 1", dev)
		for _, o := range others {
			n := &netlink.Neigh{LinkIndex: o.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: addr}
			if err := netlink.NeighSet(n); err != nil {
				return permErr("proxy neighbour "+addr.String()+" on "+o.Attrs().Name, err)
			}
			log.did("proxy ARP for %s on %s", addr, o.Attrs().Name)
		}
		return nil
	}
	if err := netlink.RouteDel(route); err != nil && !errors.Is(err, unix.ESRCH) {
		log.did("route %s dev %s: %v", host, dev, err)
	} else {
		log.did("removed route %s dev %s", host, dev)
	}
	for _, o := range others {
		n := &netlink.Neigh{LinkIndex: o.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: addr}
		if err := netlink.NeighDel(n); err == nil {
			log.did("removed proxy ARP for %s on %s", addr, o.Attrs().Name)
		}
	}
	return nil
}

// coveringLinks returns the interfaces other than skip with an IPv4 route
// whose destination, masked with mask, equals addr masked with mask.
func coveringLinks(addr net.IP, mask net.IPMask, skip int) ([]netlink.Link, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	seen := map[int]bool{skip: true}
	var out []netlink.Link
	for _, r := range routes {
		if seen[r.LinkIndex] || r.LinkIndex == 0 {
			continue
		}
		dst := net.IPv4zero.To4()
		if r.Dst != nil {
			dst = r.Dst.IP.To4()
		}
		if dst == nil || !dst.Mask(mask).Equal(addr.Mask(mask)) {
			continue
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil || l.Attrs().Name == "lo" {
			continue
		}
		seen[r.LinkIndex] = true
		out = append(out, l)
	}
	return out, nil
}
