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

// bootOnTap starts an instance on the pre-created TAP tap in ns, with the
// guest address addr/24 and its default route through gw.
func bootOnTap(t *testing.T, ns, umid, tap, addr, gw string) *umltest.Instance {
	t.Helper()
	vm := umltest.Boot(t, umltest.Options{Umid: umid, Netns: ns, Args: []string{"eth0=tuntap," + tap, "hostname=" + umid}})
	if out, st := vm.Run("ifconfig eth0 " + addr + " netmask 255.255.255.0 up && route add default gw " + gw); st != 0 {
		t.Fatalf("%s: configure eth0: status %d\n%s", umid, st, out)
	}
	return vm
}

// Two instances on their own TAPs reach each other through the host's
// routing once it forwards (the seed's router set-up).
func TestRoutingBetweenInstances(t *testing.T) {
	ns := umltest.Netns(t)
	umltest.InNetns(t, ns, func() {
		for _, tc := range []struct{ name, addr string }{{"umlt0", "10.9.6.254/24"}, {"umlt1", "10.9.7.254/24"}} {
			if _, err := CreateTap(tc.name, TapOptions{Owner: -1, Group: -1, Addr: mustCIDR(t, tc.addr)}); err != nil {
				t.Errorf("CreateTap(%s): %v", tc.name, err)
			}
		}
	})
	if t.Failed() {
		return
	}
	vm1 := bootOnTap(t, ns, "r1", "umlt0", "10.9.6.1", "10.9.6.254")
	vm2 := bootOnTap(t, ns, "r2", "umlt1", "10.9.7.1", "10.9.7.254")
	umltest.Sh(t, ns, "echo 0 > /proc/sys/net/ipv4/ip_forward")
	if _, st := vm1.Run("ping -c 1 -W 2 10.9.7.1"); st == 0 {
		t.Fatal("r1 reached r2 with forwarding off; the test cannot tell routing from something else")
	}
	umltest.Sh(t, ns, "echo 1 > /proc/sys/net/ipv4/ip_forward")
	if out, st := vm1.Run("ping -c 2 -W 5 10.9.7.1"); st != 0 {
		t.Errorf("r1 -> r2 through the host: status %d\n%s", st, out)
	}
	if out, st := vm2.Run("ping -c 2 -W 5 10.9.6.1"); st != 0 {
		t.Errorf("r2 -> r1 through the host: status %d\n%s", st, out)
	}
}

// NAT: an instance reaches an address in another namespace, which has no
// route back to the instance, only through the host's masquerade; after
// removal nothing of umlkit's is left in nftables.
func TestNAT(t *testing.T) {
	host, far := umltest.Netns(t), umltest.Netns(t)
	umltest.Sh(t, host, "ip link add umlv0 type veth peer name umlv1 && ip link set umlv1 netns "+far+
		" && ip addr add 10.200.0.1/24 dev umlv0 && ip link set umlv0 up")
	umltest.Sh(t, far, "ip addr add 10.200.0.2/24 dev umlv1 && ip link set umlv1 up")
	lan := mustCIDR(t, "10.9.5.0/24")
	umltest.InNetns(t, host, func() {
		if _, err := CreateTap("umlt0", TapOptions{Owner: -1, Group: -1, Addr: mustCIDR(t, "10.9.5.254/24")}); err != nil {
			t.Errorf("CreateTap: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	vm := bootOnTap(t, host, "nat1", "umlt0", "10.9.5.1", "10.9.5.254")
	umltest.Sh(t, host, "echo 1 > /proc/sys/net/ipv4/ip_forward")
	if _, st := vm.Run("ping -c 1 -W 2 10.200.0.2"); st == 0 {
		t.Fatal("the far namespace answered without NAT; it must have no route back")
	}
	umltest.InNetns(t, host, func() {
		if err := EnableNAT(lan, "umlv0"); err != nil {
			t.Errorf("EnableNAT: %v", err)
		}
		if err := EnableNAT(lan, "umlv0"); err != nil {
			t.Errorf("EnableNAT again: %v", err)
		}
		if rules, err := ListNAT(); err != nil || len(rules) != 1 || rules[0] != (NATRule{From: "10.9.5.0/24", Out: "umlv0"}) {
			t.Errorf("ListNAT() = %+v, %v; want one rule for 10.9.5.0/24 out umlv0", rules, err)
		}
	})
	if out, st := vm.Run("ping -c 2 -W 5 10.200.0.2"); st != 0 {
		t.Errorf("instance -> far namespace through NAT: status %d\n%s", st, out)
	}
	umltest.InNetns(t, host, func() {
		if err := DisableNAT(lan, "umlv0"); err != nil {
			t.Errorf("DisableNAT: %v", err)
		}
		c, err := nftConn()
		if err != nil {
			t.Error(err)
			return
		}
		tables, _ := c.ListTables()
		for _, tb := range tables {
			if tb.Name == NATTable {
				t.Errorf("nftables table %s left after DisableNAT", NATTable)
			}
		}
	})
	if _, st := vm.Run("ping -c 1 -W 2 10.200.0.2"); st == 0 {
		t.Error("the far namespace still answers after DisableNAT")
	}
}
