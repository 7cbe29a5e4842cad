package lab

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/umlkit/umlkit/internal/hostnet"
	"golang.org/x/sys/unix"
)

// BridgePool is the address space umlkit takes the links of bridged nodes
// from: a /30 per node, the host's end .1 on the node's TAP device, the
// node's end .2. It is in the carrier-grade NAT range (RFC 6598), which
// home and office networks do not use.
var BridgePool = &net.IPNet{IP: net.IPv4(100, 64, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}

// tapPrefix starts the names of the lab's TAP devices.
func (l *Lab) tapPrefix() string { return "ul" + l.ID() }

// TapName is the host TAP device of the bridged node: "ul", the lab's id
// and the node's index in the lab, at most 15 bytes as the kernel wants.
func (l *Lab) TapName(node string) string {
	for i, n := range l.Nodes {
		if n.Name == node {
			return l.tapPrefix() + strconv.Itoa(i)
		}
	}
	return ""
}

// ownTap reports whether name is a TAP device name of this lab.
func (l *Lab) ownTap(name string) bool {
	rest, ok := strings.CutPrefix(name, l.tapPrefix())
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.Atoi(rest)
	return err == nil && !strings.HasPrefix(rest, "+")
}

// bridgeLink is a bridged node's link to the host.
type bridgeLink struct {
	Tap   string
	Net   *net.IPNet // the /30
	Host  net.IP     // .1, on the TAP
	Guest net.IP     // .2, in the node
}

func linkOf(tap string, network *net.IPNet) bridgeLink {
	base := binary.BigEndian.Uint32(network.IP.To4())
	ip := func(v uint32) net.IP { b := make(net.IP, 4); binary.BigEndian.PutUint32(b, v); return b }
	return bridgeLink{Tap: tap, Net: network, Host: ip(base + 1), Guest: ip(base + 2)}
}

// pickSubnet chooses the node's /30 in BridgePool: one derived from the
// lab and the node, so it is the same on every start, or the next one
// whose addresses are all free on the host.
func (l *Lab) pickSubnet(node string) (*net.IPNet, error) {
	ones, bits := BridgePool.Mask.Size()
	blocks := uint32(1) << (bits - ones - 2)
	h := sha256.Sum256([]byte(l.Name() + "/" + node)) // by name: a copied lab gets the same addresses
	start := binary.BigEndian.Uint32(h[:4]) % blocks
	base := binary.BigEndian.Uint32(BridgePool.IP.To4())
	for i := uint32(0); i < blocks; i++ {
		first := base + ((start+i)%blocks)*4
		free := true
		for a := first; a < first+4 && free; a++ {
			ip := make(net.IP, 4)
			binary.BigEndian.PutUint32(ip, a)
			dev, err := hostnet.AddressOwner(ip)
			if err != nil {
				return nil, err
			}
			free = dev == ""
		}
		if free {
			ip := make(net.IP, 4)
			binary.BigEndian.PutUint32(ip, first)
			return &net.IPNet{IP: ip, Mask: net.CIDRMask(30, 32)}, nil
		}
	}
	return nil, fmt.Errorf("no free /30 left in %s for device %s: remove unused TAP devices (umlkit tap list)", BridgePool, node)
}

// hasNetAdmin reports whether this thread may create TAP devices and
// nftables rules.
func hasNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return os.Geteuid() == 0
	}
	return data[0].Effective&(1<<unix.CAP_NET_ADMIN) != 0
}

// checkBridged refuses, before anything starts, a lab whose selected
// bridged nodes this process cannot connect to the host.
func (l *Lab) checkBridged(sel map[string]bool) error {
	var bridged []string
	for _, n := range l.Nodes {
		if sel[n.Name] && n.Bridged {
			bridged = append(bridged, n.Name)
		}
	}
	if len(bridged) == 0 || hasNetAdmin() {
		return nil
	}
	return fmt.Errorf("lab %s: device %s is bridged (%s[bridged]=true), which needs CAP_NET_ADMIN for its TAP device and NAT rule: %w; run umlkit lab up as root (sudo umlkit lab up %s), or remove %s[bridged]",
		l.Dir, bridged[0], bridged[0], hostnet.ErrPermission, l.Dir, bridged[0])
}

// setupBridge creates the node's TAP device with the host's address and
// masquerades the node's /30 so that it reaches the host's networks,
// turning on IPv4 forwarding; forwardingOn reports that it was off (the
// lab records that it turned it on, see releaseForwarding). A TAP left by
// a crash is replaced. On error nothing is left behind.
func (l *Lab) setupBridge(node string) (bl bridgeLink, forwardingOn bool, err error) {
	tap := l.TapName(node)
	if _, err := hostnet.GetTap(tap); err == nil {
		if err := teardownBridge(tap); err != nil {
			return bridgeLink{}, false, err
		}
	}
	network, err := l.pickSubnet(node)
	if err != nil {
		return bridgeLink{}, false, err
	}
	bl = linkOf(tap, network)
	addr := &net.IPNet{IP: bl.Host, Mask: network.Mask}
	if _, err := hostnet.CreateTap(tap, hostnet.TapOptions{Owner: os.Geteuid(), Group: -1, Addr: addr}); err != nil {
		return bridgeLink{}, false, err
	}
	claimed, err := l.claimForwarding()
	if err == nil {
		err = hostnet.EnableNAT(network, "")
	}
	if err != nil {
		if on, ferr := hostnet.IPForwarding(); claimed && ferr == nil && !on {
			os.Remove(l.forwardClaimPath())
		}
		hostnet.DeleteTap(tap)
		return bridgeLink{}, false, err
	}
	return bl, claimed, nil
}

// bridgeOf reads the node's link from its TAP device.
func (l *Lab) bridgeOf(node string) (bridgeLink, error) {
	tap := l.TapName(node)
	t, err := hostnet.GetTap(tap)
	if err != nil {
		return bridgeLink{}, fmt.Errorf("bridged device %s: %w", node, err)
	}
	for _, a := range t.Addrs {
		ip, network, err := net.ParseCIDR(a)
		if err == nil && BridgePool.Contains(ip) {
			return linkOf(tap, network), nil
		}
	}
	return bridgeLink{}, fmt.Errorf("bridged device %s: TAP %s has no address in %s: run umlkit lab down, then up again", node, tap, BridgePool)
}

// teardownBridge removes the NAT rule of the TAP's /30, then the TAP.
func teardownBridge(tap string) error {
	t, err := hostnet.GetTap(tap)
	if err != nil {
		return nil
	}
	var errs []error
	for _, a := range t.Addrs {
		ip, network, err := net.ParseCIDR(a)
		if err == nil && BridgePool.Contains(ip) {
			errs = append(errs, hostnet.DisableNAT(network, ""))
		}
	}
	errs = append(errs, hostnet.DeleteTap(tap))
	return errors.Join(errs...)
}

// sweepBridges removes every TAP device of the lab (and its NAT rule)
// whose node is not running: after a crash, or after lab.conf changed.
func (l *Lab) sweepBridges(live func(string) bool) error {
	taps, err := hostnet.ListTaps()
	if err != nil {
		return err
	}
	byTap := map[string]string{}
	for _, n := range l.Nodes {
		byTap[l.TapName(n.Name)] = n.Name
	}
	var errs []error
	for _, t := range taps {
		if !l.ownTap(t.Name) {
			continue
		}
		if node, ok := byTap[t.Name]; ok && live(node) {
			continue
		}
		errs = append(errs, teardownBridge(t.Name))
	}
	return errors.Join(errs...)
}

// bridgeMetric is the metric of a bridged node's default route through
// the host: high, so that a startup script's own `ip route add default`
// (metric 0) neither fails as a duplicate nor loses to it.
const bridgeMetric = 1000

// bridgeScript configures the node's end of its link to the host, with a
// default route through the host that the startup script may override.
func bridgeScript(dev string, bl bridgeLink) string {
	ones, _ := bl.Net.Mask.Size()
	return fmt.Sprintf("ip addr add %s/%d dev %s 2>/dev/null; ip link set %s up && ip addr show dev %s | grep -q ' %s/' || exit 104\nip route add default via %s metric %d 2>/dev/null\n",
		bl.Guest, ones, dev, dev, dev, bl.Guest, bl.Host, bridgeMetric)
}
