package preflight

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/umlkit/umlkit/internal/hostnet"
	"github.com/umlkit/umlkit/internal/machine/cmdline"
)

// dialTimeout bounds each socket probe.
const dialTimeout = 2 * time.Second

func checkNet(ctx context.Context, r *Report, c *cmdline.CommandLine, opts Options) {
	if n := c.Notify(); n != "" {
		path := opts.abs(n)
		if checkSocketPath(r, "mconsole=notify:"+n, path, "notify socket") {
			if err := probe(ctx, "unixgram", path); err != nil {
				r.add(&Problem{Check: "notify-socket", Arg: "mconsole=notify:" + n, Severity: Warning, Err: ErrNoListener,
					Message: fmt.Sprintf("nothing is bound to the notify socket %s (%s): the kernel would drop its readiness and panic messages", path, reason(err)),
					Fix:     "bind a datagram socket there before starting the kernel, or drop mconsole=notify:"})
			}
		}
	}
	for _, e := range c.Eths() {
		arg := e.String()
		switch t := e.Transport.(type) {
		case *cmdline.Daemon:
			ctl := opts.abs(t.CtlPath())
			if checkSocketPath(r, arg, ctl, "switch control socket") {
				checkListener(ctx, r, arg, "unix", ctl, "daemon", "start the switch first: umlkit switch (or uml_switch -unix "+ctl+")")
			}
		case *cmdline.VDE:
			ctl, ok := vdeCtl(opts, t.URL)
			if ok && checkSocketPath(r, arg, ctl, "VDE control socket") {
				checkListener(ctx, r, arg, "unix", ctl, "vde", "start the switch first: vde_switch -s "+filepath.Dir(ctl))
			}
			if _, err := exec.LookPath("vde_plug"); err != nil {
				r.add(&Problem{Check: "vde-plug", Arg: arg, Err: ErrHostNet,
					Message: "the vde transport runs vde_plug, which is not on PATH",
					Fix:     "apt-get install vdeplug (or vde2)"})
			}
		case *cmdline.TunTap:
			checkTap(r, arg, t.Dev, t.HostIP)
		}
	}
	for _, v := range c.Vecs() {
		arg := v.String()
		switch v.Transport() {
		case "bess":
			dst, _ := v.Get("dst")
			dst = opts.abs(dst)
			if checkSocketPath(r, arg, dst, "BESS socket") {
				checkListener(ctx, r, arg, "unixpacket", dst, "bess", "start the switch first: umlkit switch")
			}
		case "tap", "hybrid":
			ifname, _ := v.Get("ifname")
			checkTap(r, arg, ifname, "x")
		}
	}
}

// vdeCtl returns the control socket of a VDE switch URL: a plain path or
// vde:// with a path, naming the switch directory (with ctl inside) or the
// socket itself.
func vdeCtl(opts Options, url string) (string, bool) {
	p := url
	if rest, ok := strings.CutPrefix(url, "vde://"); ok {
		p = rest
	}
	if p == "" || strings.Contains(p, "://") {
		return "", false
	}
	p = opts.abs(p)
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return filepath.Join(p, "ctl"), true
	}
	return p, true
}

func checkSocketPath(r *Report, arg, path, what string) bool {
	if len(path) <= maxSocketPath {
		return true
	}
	r.add(&Problem{Check: "socket-path", Arg: arg, Err: ErrSocketPath,
		Message: fmt.Sprintf("%s %s is %d bytes, over the %d a Unix socket path can have", what, path, len(path), maxSocketPath),
		Fix:     "move the socket to a shorter path (such as under /run or /tmp)"})
	return false
}

func checkListener(ctx context.Context, r *Report, arg, network, path, transport, fix string) {
	err := probe(ctx, network, path)
	if err == nil {
		return
	}
	effect := map[string]string{
		// Observed: daemon connects when the device is configured, and
		// leaves no device; bess connects when the interface goes up,
		// and "ip link set vecN up" fails with EINVAL.
		"daemon": "the kernel would leave the device out (daemon_open : control connect failed) and never connect later",
		"vde":    "vde_plug cannot connect, so the device would carry no traffic",
		"bess":   "the interface could not be brought up (bess open: cannot connect; SIOCSIFFLAGS: Invalid argument)",
	}[transport]
	p := &Problem{Check: "switch-socket", Arg: arg, Err: ErrNoListener,
		Message: fmt.Sprintf("nothing is listening on %s (%s): %s", path, reason(err), effect),
		Fix:     fix}
	if errors.Is(err, syscall.EPROTOTYPE) {
		want := map[string]string{"unix": "SOCK_STREAM", "unixpacket": "SOCK_SEQPACKET"}[network]
		p.Message = fmt.Sprintf("%s is a socket of another type: the %s transport needs a %s listener", path, transport, want)
		if transport == "bess" {
			p.Fix = "point dst= at a BESS (seqpacket) switch socket; a uml_switch control socket takes ethN=daemon,,unix," + path
		} else {
			p.Fix = "point it at the switch's control socket"
		}
	}
	r.add(p)
}

// probe connects to a Unix socket and closes the connection at once.
func probe(ctx context.Context, network, path string) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, path)
	if err != nil {
		return err
	}
	return conn.Close()
}

func reason(err error) string {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: a stale socket file"
	case errors.Is(err, syscall.EACCES):
		return "permission denied"
	case errors.Is(err, syscall.ENOTSOCK):
		return "not a socket"
	}
	return err.Error()
}

func checkTap(r *Report, arg, dev, hostIP string) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		r.add(&Problem{Check: "tun", Arg: arg, Err: ErrHostNet,
			Message: "/dev/net/tun is missing, and TAP devices need it",
			Fix:     "modprobe tun (in a container: give it /dev/net/tun)"})
		return
	}
	if dev == "" {
		if hostIP == "" {
			r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet,
				Message: "without a TAP device name the kernel runs the uml_net helper, which needs the host-side IP address (it would fail: Too few arguments to tuntap_up)",
				Fix:     "give a TAP device made beforehand (umlkit tap create), or a host IP: ethN=tuntap,,,HOSTIP"})
			return
		}
		checkHelper(r, arg, hostIP)
		return
	}
	t, err := hostnet.GetTap(dev)
	if err != nil {
		if !strings.Contains(err.Error(), "no such device") {
			r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet, Message: err.Error(), Fix: "name a TAP device: umlkit tap list shows them"})
		} else if os.Geteuid() != 0 {
			r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet,
				Message: fmt.Sprintf("TAP device %s does not exist, and only root can have the kernel make one", dev),
				Fix:     fmt.Sprintf("create it first: umlkit tap create %s --owner $USER", dev)})
		}
		return
	}
	if uid := os.Getuid(); uid != 0 && !mayAttach(t, uid) {
		r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet,
			Message: fmt.Sprintf("TAP device %s belongs to uid %d (group %d); you (uid %d) may not attach to it", dev, t.Owner, t.Group, uid),
			Fix:     fmt.Sprintf("as root: umlkit tap delete %s && umlkit tap create %s --owner %d", dev, dev, uid)})
	}
}

// mayAttach reports whether uid may attach to the TAP without privileges.
// Netlink reports "no owner" as 0, so 0 counts as root only.
func mayAttach(t *hostnet.Tap, uid int) bool {
	if t.Owner == uid {
		return true
	}
	if t.Group <= 0 {
		return false
	}
	gids, _ := os.Getgroups()
	for _, g := range append(gids, os.Getgid()) {
		if g == t.Group {
			return true
		}
	}
	return false
}

// checkHelper checks what the uml_net helper needs for the host address.
func checkHelper(r *Report, arg, hostIP string) {
	ip := net.ParseIP(hostIP)
	if ip == nil || ip.To4() == nil {
		r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet,
			Message: fmt.Sprintf("host address %q is not an IPv4 address", hostIP), Fix: "ethN=tuntap,,,10.0.0.254 (an address for the host's end)"})
		return
	}
	if dev, err := hostnet.AddressOwner(ip); err == nil && dev != "" {
		r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet,
			Message: fmt.Sprintf("host address %s is already on %s: the TAP's host end needs an address of its own", hostIP, dev),
			Fix:     "pick another host address for this instance"})
	}
	path := os.Getenv("PATH") + ":/usr/lib/uml"
	for _, d := range filepath.SplitList(path) {
		if st, err := os.Stat(filepath.Join(d, "uml_net")); err == nil && !st.IsDir() {
			return
		}
	}
	r.add(&Problem{Check: "tap", Arg: arg, Err: ErrHostNet,
		Message: "no uml_net helper on PATH or in /usr/lib/uml: the kernel runs it to make the TAP",
		Fix:     "install -o root -g uml-net -m 4754 $(command -v umlkit) /usr/local/bin/uml_net (or apt-get install uml-utilities)"})
}
