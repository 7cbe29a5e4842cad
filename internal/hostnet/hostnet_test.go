package hostnet

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/umlkit/umlkit/internal/umltest"
)

// The test binary doubles as the uml_net helper: the kernel runs it under
// that name (see helperPath).
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "uml_net" {
		os.Exit(RunHelper(os.Args[1:], os.Stdout, os.Stderr))
	}
	umltest.Main(m)
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"tap0", true}, {"a23456789012345", true}, {"a234567890123456", false}, {"", false}, {"a/b", false}, {"a b", false},
	} {
		if err := ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestTapLifecycle(t *testing.T) {
	ns := umltest.Netns(t)
	umltest.InNetns(t, ns, func() {
		tap, err := CreateTap("umlt0", TapOptions{Owner: 1000, Group: -1, Addr: mustCIDR(t, "10.77.0.254/24")})
		if err != nil {
			t.Errorf("CreateTap: %v", err)
			return
		}
		if tap.Owner != 1000 || !tap.Persistent || !tap.Up || len(tap.Addrs) != 1 || tap.Addrs[0] != "10.77.0.254/24" {
			t.Errorf("CreateTap = %+v, want owner 1000, persistent, up, 10.77.0.254/24", tap)
		}
		if _, err := CreateTap("umlt0", TapOptions{Owner: 0, Group: -1}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "umlkit tap delete umlt0") {
			t.Errorf("CreateTap(existing) = %v, want ErrExists with the delete command", err)
		}
		if _, err := CreateTap("lo", TapOptions{Owner: -1, Group: -1}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "not a TAP") {
			t.Errorf("CreateTap(lo) = %v, want an error saying lo is not a TAP", err)
		}
		// An address already on the host: refused, and nothing is left.
		if _, err := CreateTap("umlt1", TapOptions{Owner: -1, Group: -1, Addr: mustCIDR(t, "10.77.0.254/24")}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "umlt0") {
			t.Errorf("CreateTap(duplicate address) = %v, want ErrExists naming umlt0", err)
		}
		if _, err := netlink.LinkByName("umlt1"); err == nil {
			t.Error("umlt1 was left behind after a failed create")
		}
		if _, err := CreateTap("a234567890123456", TapOptions{Owner: -1, Group: -1}); err == nil || !strings.Contains(err.Error(), "at most 15") {
			t.Errorf("CreateTap(long name) = %v, want the length limit", err)
		}
		taps, err := ListTaps()
		if err != nil || len(taps) != 1 || taps[0].Name != "umlt0" {
			t.Errorf("ListTaps() = %+v, %v; want [umlt0]", taps, err)
		}
		if err := DeleteTap("umlt0"); err != nil {
			t.Errorf("DeleteTap: %v", err)
		}
		if err := DeleteTap("lo"); err == nil {
			t.Error("DeleteTap(lo) succeeded; it must refuse a device that is not a TAP")
		}
		if taps, _ := ListTaps(); len(taps) != 0 {
			t.Errorf("ListTaps() after delete = %+v, want none", taps)
		}
	})
}

// A pre-created TAP (ethN=tuntap,TAP): the host pings the instance and
// the instance pings the host.
func TestPrecreatedTap(t *testing.T) {
	ns := umltest.Netns(t)
	umltest.InNetns(t, ns, func() {
		if _, err := CreateTap("umlt0", TapOptions{Owner: -1, Group: -1, Addr: mustCIDR(t, "10.9.3.254/24")}); err != nil {
			t.Errorf("CreateTap: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	vm := umltest.Boot(t, umltest.Options{Netns: ns, Args: []string{"eth0=tuntap,umlt0"}})
	if out, st := vm.Run("ifconfig eth0 10.9.3.1 netmask 255.255.255.0 up && ping -c 2 -W 5 10.9.3.254"); st != 0 {
		t.Fatalf("guest ping of the host: status %d\n%s", st, out)
	}
	umltest.Sh(t, ns, "ping -c 2 -W 5 10.9.3.1")
	vm.Poweroff()
}

// helperPath returns a PATH whose first directory has uml_net pointing at
// this test binary, so the kernel runs RunHelper.
func helperPath(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(self, filepath.Join(dir, "uml_net")); err != nil {
		t.Fatal(err)
	}
	return "PATH=" + dir + ":" + os.Getenv("PATH")
}

// The helper way (ethN=tuntap,,MAC,HOST_IP): umlkit as uml_net makes the
// TAP, and when the guest configures its address, the host route and
// proxy ARP; the host pings the instance; the TAP goes away with it.
func TestHelperTap(t *testing.T) {
	ns := umltest.Netns(t)
	vm := umltest.Boot(t, umltest.Options{Netns: ns, Env: []string{helperPath(t)},
		Args: []string{"eth0=tuntap,,fe:fd:0a:09:04:01,10.9.4.254"}})
	if out, st := vm.Run("ifconfig eth0 10.9.4.1 netmask 255.255.255.0 up && route add default gw 10.9.4.254"); st != 0 {
		t.Fatalf("guest ifconfig: status %d\n%s", st, out)
	}
	vm.WaitFor("* created tap", 10*time.Second) // the TAP is made when eth0 goes up
	vm.WaitFor("* route 10.9.4.1/32 dev tap", 10*time.Second)
	routes := umltest.Sh(t, ns, "ip -4 route show; cat /proc/sys/net/ipv4/ip_forward")
	if !strings.Contains(routes, "10.9.4.1 dev tap") || !strings.HasSuffix(strings.TrimSpace(routes), "1") {
		t.Errorf("host routes after the guest's ifconfig:\n%s\nwant 10.9.4.1 dev tapN and ip_forward 1", routes)
	}
	umltest.Sh(t, ns, "ping -c 2 -W 5 10.9.4.1")
	if out, st := vm.Run("ping -c 2 -W 5 10.9.4.254"); st != 0 {
		t.Errorf("guest ping of the host: status %d\n%s", st, out)
	}
	vm.Poweroff()
	if out := umltest.Sh(t, ns, "ip -o link show type tun || true"); strings.Contains(out, "tap") {
		t.Errorf("TAP left after the instance stopped:\n%s", out)
	}
}

// A helper asked to route for a TAP it did not make for this user refuses.
func TestHelperRefusesForeignTap(t *testing.T) {
	var log helperLog
	err := changeAddr(true, "nosuchtap0", "10.1.1.1", "255.255.255.0", &log)
	if err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("changeAddr(missing TAP) = %v, want no such device", err)
	}
	if err := changeAddr(true, "eth0/../x", "10.1.1.1", "255.255.255.0", &log); err == nil {
		t.Error("changeAddr accepted a device name with '/'")
	}
	if err := changeAddr(true, "tap0", "224.0.0.1", "255.255.255.0", &log); err == nil {
		t.Error("changeAddr accepted a multicast address")
	}
}
