package cmdline

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Eth is ethN=TRANSPORT,...: a network device of the classic transports.
type Eth struct {
	Index     int
	Transport EthTransport
}

// EthTransport is the part of ethN= after '=': one of *TunTap, *Daemon,
// *VDE, *Mcast, *Ucast, *Slirp, *Slip, *Ethertap.
type EthTransport interface {
	// Name is the transport's name on the command line, such as "daemon".
	Name() string
	// Fields are the comma-separated fields after the name; trailing
	// empty fields are dropped when rendering.
	Fields() []string
}

func (e *Eth) Key() string { return "eth" + strconv.Itoa(e.Index) }

func (e *Eth) String() string {
	f := e.Transport.Fields()
	if _, keep := e.Transport.(*Slirp); !keep {
		for len(f) > 0 && f[len(f)-1] == "" {
			f = f[:len(f)-1]
		}
	}
	return e.Key() + "=" + strings.Join(append([]string{e.Transport.Name()}, f...), ",")
}

// MAC returns the device's MAC address field, or "" for a random one.
func (e *Eth) MAC() string {
	switch t := e.Transport.(type) {
	case *TunTap:
		return t.MAC
	case *Daemon:
		return t.MAC
	case *VDE:
		return t.MAC
	case *Mcast:
		return t.MAC
	case *Ucast:
		return t.MAC
	case *Slirp:
		return t.MAC
	case *Ethertap:
		return t.MAC
	}
	return ""
}

// TunTap is tuntap,[DEV],[MAC],[HOSTIP]: a host TAP device, DEV when
// given, else one made by the uml_net helper with HOSTIP on the host side.
type TunTap struct{ Dev, MAC, HostIP string }

func (*TunTap) Name() string       { return "tuntap" }
func (t *TunTap) Fields() []string { return []string{t.Dev, t.MAC, t.HostIP} }

// Daemon is daemon,[MAC],[TYPE],[CTL]: a uml_switch-style switch whose
// control socket is CTL. TYPE can only be unix.
type Daemon struct{ MAC, Type, Ctl string }

func (*Daemon) Name() string       { return "daemon" }
func (d *Daemon) Fields() []string { return []string{d.MAC, d.Type, d.Ctl} }

// DefaultDaemonCtl is Debian's default daemon control socket.
const DefaultDaemonCtl = "/var/run/uml-utilities/uml_switch.ctl"

// CtlPath is the control socket the kernel connects to.
func (d *Daemon) CtlPath() string {
	if d.Ctl == "" {
		return DefaultDaemonCtl
	}
	return d.Ctl
}

// VDE is vde,[URL],[MAC],[PORT],[GROUP],[MODE],[DESCR]: a VDE switch
// reached through vde_plug.
type VDE struct{ URL, MAC, Port, Group, Mode, Descr string }

func (*VDE) Name() string { return "vde" }
func (v *VDE) Fields() []string {
	return []string{v.URL, v.MAC, v.Port, v.Group, v.Mode, v.Descr}
}

// Mcast is mcast,[MAC],[GROUP],[PORT],[TTL]: frames over UDP multicast.
type Mcast struct{ MAC, Group, Port, TTL string }

func (*Mcast) Name() string       { return "mcast" }
func (m *Mcast) Fields() []string { return []string{m.MAC, m.Group, m.Port, m.TTL} }

// Ucast is ucast,[MAC],[REMOTE],[LPORT],[RPORT]: frames over UDP unicast.
type Ucast struct{ MAC, Remote, LocalPort, RemotePort string }

func (*Ucast) Name() string { return "ucast" }
func (u *Ucast) Fields() []string {
	return []string{u.MAC, u.Remote, u.LocalPort, u.RemotePort}
}

// Slirp is slirp,[MAC],CMD[,ARG...]: a slirp process as the network;
// '_' in the arguments stands for a space.
type Slirp struct {
	MAC  string
	Argv []string
}

func (*Slirp) Name() string { return "slirp" }
func (s *Slirp) Fields() []string {
	if s.MAC == "" && len(s.Argv) == 0 {
		return nil
	}
	return append([]string{s.MAC}, s.Argv...)
}

// Slip is slip,[GATE]: a host SLIP link.
type Slip struct{ Gate string }

func (*Slip) Name() string       { return "slip" }
func (s *Slip) Fields() []string { return []string{s.Gate} }

// Ethertap is ethertap,DEV,[MAC],[GATE], the obsolete ethertap driver.
type Ethertap struct{ Dev, MAC, Gate string }

func (*Ethertap) Name() string       { return "ethertap" }
func (e *Ethertap) Fields() []string { return []string{e.Dev, e.MAC, e.Gate} }

// EthTransports lists the ethN= transports of the 6.1 kernel.
var EthTransports = []string{"tuntap", "daemon", "vde", "mcast", "ucast", "slirp", "slip", "ethertap"}

// VecTransports lists the vecN: transports of the 6.1 kernel.
var VecTransports = []string{"bess", "tap", "raw", "hybrid", "gre", "l2tpv3", "fd"}

// parseIndex reads the decimal device number at the start of s.
func parseIndex(s, dev string) (int, string, *bad) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, "", syntax("no device number after "+dev, fmt.Sprintf("write %s0, %s1, ...", dev, dev))
	}
	if i > 1 && s[0] == '0' {
		return 0, "", syntax(fmt.Sprintf("device number %s starts with 0, which the kernel reads as octal", s[:i]), "write it without the leading zeros")
	}
	n, err := strconv.Atoi(s[:i])
	if err != nil || n > 1<<16 {
		return 0, "", &bad{fmt.Sprintf("device number %s is out of range", s[:i]), "use a small number", ErrOutOfRange}
	}
	return n, s[i:], nil
}

func parseEth(s string) (Arg, *bad) {
	n, s, b := parseIndex(s, "eth")
	if b != nil {
		return nil, b
	}
	v, ok := strings.CutPrefix(s, "=")
	if !ok {
		return nil, syntax("expected '=' after the device number", fmt.Sprintf("write eth%d=TRANSPORT,..., such as eth%d=daemon,,unix,/path/ctl", n, n))
	}
	f := strings.Split(v, ",")
	name, f := f[0], f[1:]
	max := map[string]int{"tuntap": 3, "daemon": 3, "vde": 6, "mcast": 4, "ucast": 4, "slip": 1, "ethertap": 3}
	if m, ok := max[name]; ok && len(f) > m {
		if name == "daemon" && len(f) == 4 {
			return nil, syntax("the daemon transport ignores a data socket field", "drop the fifth field: the switch names its data socket itself")
		}
		return nil, syntax(fmt.Sprintf("the %s transport takes at most %d fields after its name, found %d", name, m, len(f)), "write "+ethUsage[name])
	}
	g := append(f, make([]string, 6)...)
	var t EthTransport
	switch name {
	case "tuntap":
		t = &TunTap{Dev: g[0], MAC: g[1], HostIP: g[2]}
	case "daemon":
		t = &Daemon{MAC: g[0], Type: g[1], Ctl: g[2]}
	case "vde":
		t = &VDE{URL: g[0], MAC: g[1], Port: g[2], Group: g[3], Mode: g[4], Descr: g[5]}
	case "mcast":
		t = &Mcast{MAC: g[0], Group: g[1], Port: g[2], TTL: g[3]}
	case "ucast":
		t = &Ucast{MAC: g[0], Remote: g[1], LocalPort: g[2], RemotePort: g[3]}
	case "slirp":
		sl := &Slirp{}
		if len(f) > 0 {
			sl.MAC, sl.Argv = f[0], f[1:]
		}
		if len(sl.Argv) == 0 {
			sl.Argv = nil
		}
		t = sl
	case "slip":
		t = &Slip{Gate: g[0]}
	case "ethertap":
		t = &Ethertap{Dev: g[0], MAC: g[1], Gate: g[2]}
	default:
		return nil, &bad{fmt.Sprintf("unknown transport %q", name),
			"this kernel's eth transports are " + strings.Join(EthTransports, ", ") + "; vector ones are written vecN:transport=T", ErrUnknownTransport}
	}
	e := &Eth{Index: n, Transport: t}
	if b := checkEth(e); b != nil {
		return nil, b
	}
	return e, nil
}

var ethUsage = map[string]string{
	"tuntap":   "tuntap,[DEV],[MAC],[HOSTIP]",
	"daemon":   "daemon,[MAC],[unix],[CTL-SOCKET]",
	"vde":      "vde,[URL],[MAC],[PORT],[GROUP],[MODE],[DESCRIPTION]",
	"mcast":    "mcast,[MAC],[GROUP],[PORT],[TTL]",
	"ucast":    "ucast,[MAC],[REMOTE-IP],[LOCAL-PORT],[REMOTE-PORT]",
	"slirp":    "slirp,[MAC],COMMAND[,ARG...]",
	"slip":     "slip,[GATEWAY-IP]",
	"ethertap": "ethertap,DEV,[MAC],[GATEWAY-IP]",
}

func checkEth(e *Eth) *bad {
	name := e.Transport.Name()
	usage := "write " + e.Key() + "=" + ethUsage[name]
	if m := e.MAC(); m != "" {
		if b := checkMAC(m); b != nil {
			return b
		}
	}
	ip := func(what, v string) *bad {
		if v == "" {
			return nil
		}
		if a, err := netip.ParseAddr(v); err != nil || !a.Is4() {
			return syntax(fmt.Sprintf("%s %q is not an IPv4 address", what, v), usage)
		}
		return nil
	}
	num := func(what, v string, max uint64) *bad {
		if v == "" {
			return nil
		}
		if n, err := strconv.ParseUint(v, 10, 64); err != nil || n > max {
			return syntax(fmt.Sprintf("%s %q is not a number from 0 to %d", what, v, max), usage)
		}
		return nil
	}
	var bs []*bad
	switch t := e.Transport.(type) {
	case *TunTap:
		bs = append(bs, ifname(t.Dev, usage), ip("host IP", t.HostIP))
	case *Daemon:
		if t.Type != "" && t.Type != "unix" {
			bs = append(bs, syntax(fmt.Sprintf("socket type %q is not supported; the only type is unix", t.Type), usage))
		}
	case *VDE:
		bs = append(bs, num("port", t.Port, 1<<16-1))
		if t.Mode != "" {
			if _, err := strconv.ParseUint(t.Mode, 8, 32); err != nil {
				bs = append(bs, syntax(fmt.Sprintf("mode %q is not an octal number", t.Mode), "write it like 0700"))
			}
		}
	case *Mcast:
		bs = append(bs, ip("group", t.Group), num("port", t.Port, 1<<16-1), num("ttl", t.TTL, 255))
		if a, err := netip.ParseAddr(t.Group); err == nil && !a.IsMulticast() {
			bs = append(bs, syntax(fmt.Sprintf("group %s is not a multicast address", t.Group), "use one in 224.0.0.0/4, such as 239.192.168.1"))
		}
	case *Ucast:
		bs = append(bs, ip("remote address", t.Remote), num("local port", t.LocalPort, 1<<16-1), num("remote port", t.RemotePort, 1<<16-1))
	case *Slip:
		bs = append(bs, ip("gateway", t.Gate))
	case *Ethertap:
		if t.Dev == "" {
			bs = append(bs, syntax("the ethertap transport needs a device name", usage))
		}
		bs = append(bs, ifname(t.Dev, usage), ip("gateway", t.Gate))
	}
	for _, b := range bs {
		if b != nil {
			return b
		}
	}
	return nil
}

func ifname(s, usage string) *bad {
	if len(s) > 15 || strings.ContainsAny(s, "/ \t") {
		return syntax(fmt.Sprintf("%q is not a host interface name (at most 15 bytes, no '/' or spaces)", s), usage)
	}
	return nil
}

// checkMAC accepts what the kernel's setup_etheraddr accepts: six hex
// bytes of one or two digits separated by ':' (fe:fd:0:0:0:1), not
// multicast.
func checkMAC(s string) *bad {
	fix := "write a unicast MAC address such as 02:00:00:00:00:01, or leave the field empty for a random one"
	parts := strings.Split(s, ":")
	var first uint64
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 16, 8)
		if err != nil || len(p) > 2 || len(parts) != 6 {
			return syntax(fmt.Sprintf("%q is not a MAC address", s), fix)
		}
		if i == 0 {
			first = n
		}
	}
	if first&1 != 0 {
		return syntax(fmt.Sprintf("%s is a multicast address and the kernel would pick a random one", s), fix)
	}
	return nil
}

// Vec is vecN:transport=T,KEY=VALUE,...: a vector network device.
type Vec struct {
	Index   int
	Options []Option // in order; the first is normally transport=
}

// Option is one KEY=VALUE of a vector device.
type Option struct{ Key, Value string }

func (v *Vec) Key() string { return "vec" + strconv.Itoa(v.Index) }

func (v *Vec) String() string {
	kv := make([]string, len(v.Options))
	for i, o := range v.Options {
		kv[i] = o.Key + "=" + o.Value
	}
	return v.Key() + ":" + strings.Join(kv, ",")
}

// Get returns the first value of key, as the kernel does.
func (v *Vec) Get(key string) (string, bool) {
	for _, o := range v.Options {
		if o.Key == key {
			return o.Value, true
		}
	}
	return "", false
}

// Transport returns the transport= value.
func (v *Vec) Transport() string {
	t, _ := v.Get("transport")
	return t
}

var vecRequired = map[string][]string{
	"bess":   {"dst"},
	"fd":     {"fd"},
	"gre":    {"src", "dst"},
	"l2tpv3": {"src", "dst"},
	"raw":    {"ifname"},
	"hybrid": {"ifname"},
	"tap":    nil,
}

func parseVec(s string) (Arg, *bad) {
	n, s, b := parseIndex(s, "vec")
	if b != nil {
		return nil, b
	}
	v, ok := strings.CutPrefix(s, ":")
	if !ok {
		return nil, syntax("expected ':' after the device number", fmt.Sprintf("write vec%d:transport=bess,dst=/path/to/switch", n))
	}
	vec := &Vec{Index: n}
	usage := fmt.Sprintf("write vec%d:transport=T,KEY=VALUE,...", n)
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, syntax(fmt.Sprintf("option %q is not KEY=VALUE", kv), usage)
		}
		vec.Options = append(vec.Options, Option{k, val})
	}
	t, ok := vec.Get("transport")
	if !ok {
		return nil, syntax("no transport= option", usage+", with T one of "+strings.Join(VecTransports, ", "))
	}
	req, known := vecRequired[t]
	if !known {
		return nil, &bad{fmt.Sprintf("unknown vector transport %q", t),
			"this kernel's vector transports are " + strings.Join(VecTransports, ", ") + " (no vde: use ethN=vde)", ErrUnknownTransport}
	}
	for _, k := range req {
		if x, _ := vec.Get(k); x == "" {
			return nil, syntax(fmt.Sprintf("the %s transport needs %s=", t, k), fmt.Sprintf("add %s=VALUE", k))
		}
	}
	for _, o := range vec.Options {
		switch o.Key {
		case "mac":
			if b := checkMAC(o.Value); b != nil {
				return nil, b
			}
		case "depth", "mtu", "headroom", "fd", "srcport", "dstport":
			if _, err := strconv.ParseUint(o.Value, 10, 32); err != nil {
				return nil, syntax(fmt.Sprintf("%s=%q is not a number", o.Key, o.Value), usage)
			}
		case "ifname":
			if b := ifname(o.Value, usage); b != nil {
				return nil, b
			}
		}
	}
	return vec, nil
}
