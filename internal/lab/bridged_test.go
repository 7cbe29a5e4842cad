package lab

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/umlkit/umlkit/internal/hostnet"
	"github.com/umlkit/umlkit/internal/umltest"
	"golang.org/x/sys/unix"
)

func TestTapName(t *testing.T) {
	l := &Lab{Dir: "/labs/x"}
	for i := 0; i < 200; i++ {
		l.Nodes = append(l.Nodes, &Node{Name: "n" + strings.Repeat("x", i%20)})
	}
	l.Nodes[5].Name = "pc1"
	got := l.TapName("pc1")
	if want := "ul" + l.ID() + "5"; got != want {
		t.Errorf("TapName(pc1) = %q, want %q", got, want)
	}
	if err := hostnet.ValidName(l.TapName(l.Nodes[199].Name)); err != nil {
		t.Errorf("TapName of node 199: %v", err)
	}
	for _, tc := range []struct {
		name string
		own  bool
	}{
		{l.TapName("pc1"), true},
		{"ul" + l.ID() + "199", true},
		{"ul" + l.ID(), false},
		{"ul" + l.ID() + "+1", false},
		{"ul" + l.ID() + "a", false},
		{"ul000000" + "1", l.ID() == "000000"},
		{"tap0", false},
	} {
		if got := l.ownTap(tc.name); got != tc.own {
			t.Errorf("ownTap(%q) = %v, want %v", tc.name, got, tc.own)
		}
	}
}

func TestBridgeLink(t *testing.T) {
	_, n, _ := net.ParseCIDR("100.64.3.8/30")
	bl := linkOf("ulabc0", n)
	if bl.Host.String() != "100.64.3.9" || bl.Guest.String() != "100.64.3.10" {
		t.Errorf("linkOf(%s) = host %s, guest %s; want 100.64.3.9, 100.64.3.10", n, bl.Host, bl.Guest)
	}
	s := bridgeScript("eth2", bl)
	for _, want := range []string{"ip addr add 100.64.3.10/30 dev eth2", "ip link set eth2 up", "ip route add default via 100.64.3.9 metric 1000", "exit 104"} {
		if !strings.Contains(s, want) {
			t.Errorf("bridgeScript lacks %q:\n%s", want, s)
		}
	}
}

// Without CAP_NET_ADMIN, Up refuses a lab with a bridged node before
// starting anything, and names the node and the fix.
func TestBridgedNeedsNetAdmin(t *testing.T) {
	dir := copyLab(t, "bridged")
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		// The thread keeps its reduced capabilities, so it stays locked
		// and the runtime discards it when the goroutine ends.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- err
			return
		}
		_, err := Up(context.Background(), l, nil, Options{Exe: "/nonexistent"})
		done <- err
	}()
	err = <-done
	if err == nil || !errors.Is(err, hostnet.ErrPermission) || !strings.Contains(err.Error(), "device pc1 is bridged") || !strings.Contains(err.Error(), "remove pc1[bridged]") {
		t.Fatalf("Up without CAP_NET_ADMIN = %v, want ErrPermission naming pc1 and the fix", err)
	}
	if _, err := os.Stat(l.StateDir()); !os.IsNotExist(err) {
		t.Errorf("Up without CAP_NET_ADMIN created %s: %v", l.StateDir(), err)
	}
	// Selecting only the other node needs no privilege check.
	if err := l.checkBridged(map[string]bool{"pc2": true}); err != nil {
		t.Errorf("checkBridged(pc2) = %v", err)
	}
}

// TestKernelBridged runs a lab with a bridged node inside a network
// namespace of its own, whose "host" has an uplink to a second namespace
// that has no route back to the node's /30: pc1 reaches the host end of its
// TAP and, through the masquerade only, the far namespace; lab down, crash
// and clean leave no TAP device or nftables table behind, and turn off the
// forwarding that lab up turned on.
func TestKernelBridged(t *testing.T) {
	umltest.Kernel(t)
	bin := umltest.Umlkit(t)
	img := umltest.AgentImage(t)
	ns := umltest.Netns(t)
	far := umltest.Netns(t)
	umltest.Sh(t, ns, "ip link add up0 type veth peer name wan0 netns "+far+
		" && ip addr add 10.99.0.1/24 dev up0 && ip link set up0 up")
	umltest.Sh(t, far, "ip addr add 10.99.0.2/24 dev wan0 && ip link set wan0 up")
	// Forwarding off, as on a host that does not route: lab up turns it
	// on, lab down and crash turn it off again. (A new namespace inherits
	// the host's setting.)
	umltest.Sh(t, ns, "echo 0 > "+forwardSysctl)
	forwarding := func() string { return strings.TrimSpace(umltest.Sh(t, ns, "cat "+forwardSysctl)) }
	dir := copyLab(t, "bridged")
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tap := l.TapName("pc1")
	env := append(os.Environ(), "UMLKIT_RUNTIME_DIR="+umltest.ShortDir(t), "UMLKIT_DATA_DIR="+umltest.ShortDir(t), EnvImage+"="+img)
	run := cliRunner(t, env, "ip", "netns", "exec", ns, bin)
	t.Cleanup(func() { run("lab", "crash", dir) })
	// leftovers reports the lab's TAP devices and umlkit's nftables table
	// in the namespace.
	leftovers := func() []string {
		var left []string
		for _, line := range strings.Split(umltest.Sh(t, ns, "ip -o link show"), "\n") {
			if f := strings.Fields(line); len(f) > 1 && l.ownTap(strings.TrimSuffix(f[1], ":")) {
				left = append(left, "TAP "+strings.TrimSuffix(f[1], ":"))
			}
		}
		umltest.InNetns(t, ns, func() {
			c, err := nftables.New()
			if err != nil {
				t.Errorf("nftables: %v", err)
				return
			}
			tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
			if err != nil {
				t.Errorf("list nftables tables: %v", err)
			}
			for _, tb := range tables {
				if tb.Name == hostnet.NATTable {
					left = append(left, "nftables table "+tb.Name)
				}
			}
		})
		return left
	}

	out, code := run("lab", "up", dir)
	if code != 0 || !strings.Contains(out, "pc1: eth1 bridged to the host through "+tap) || !strings.Contains(out, "ip_forward turned on") {
		t.Fatalf("lab up = %d:\n%s", code, out)
	}
	if got := forwarding(); got != "1" {
		t.Errorf("after lab up: net.ipv4.ip_forward = %s, want 1", got)
	}
	out, code = run("lab", "status", dir, "--json")
	var st struct {
		Nodes []NodeStatus `json:"nodes"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Nodes) != 2 {
		t.Fatalf("lab status --json = %d:\n%s", code, out)
	}
	pc1 := st.Nodes[0]
	guest, network, err := net.ParseCIDR(pc1.Addresses["eth1"])
	if err != nil || pc1.Bridged != tap || !BridgePool.Contains(guest) || pc1.Addresses["eth0"] != "10.0.0.1/24" {
		t.Fatalf("pc1 status = %+v, want eth0 10.0.0.1/24, eth1 in %s, bridged through %s", pc1, BridgePool, tap)
	}
	host := linkOf(tap, network).Host
	if out := umltest.Sh(t, ns, "ip -o addr show dev "+tap); !strings.Contains(out, host.String()+"/30") {
		t.Errorf("TAP %s: %s, want the host end %s/30", tap, out, host)
	}
	var rules []hostnet.NATRule
	umltest.InNetns(t, ns, func() {
		if rules, err = hostnet.ListNAT(); err != nil {
			t.Errorf("ListNAT: %v", err)
		}
	})
	if len(rules) != 1 || rules[0].From != network.String() {
		t.Errorf("NAT rules = %+v, want one from %s", rules, network)
	}
	// The far namespace cannot answer pc1's own address: only the
	// masquerade lets pc1's ping come back.
	if out, err := umltest.ShErr(far, "ip route get "+guest.String()); err == nil {
		t.Fatalf("far namespace has a route to %s, so the test proves nothing about NAT: %s", guest, out)
	}
	for _, dst := range []string{host.String(), "10.99.0.2", "10.0.0.2"} {
		if out, code := run("lab", "exec", dir, "pc1", "--", "ping", "-c", "2", "-W", "3", dst); code != 0 {
			t.Errorf("pc1: ping %s = %d:\n%s", dst, code, out)
		}
	}
	// A startup script may still add a default route of its own, which wins.
	if out, code := run("lab", "exec", dir, "pc1", "--", "sh", "-c", "ip route add default via 10.0.0.2 && ip route get 10.99.0.2"); code != 0 || !strings.Contains(out, "via 10.0.0.2") {
		t.Errorf("pc1: own default route = %d, want it added and used:\n%s", code, out)
	}
	if out, code := run("lab", "down", dir); code != 0 || !strings.Contains(out, "ip_forward off again") {
		t.Errorf("lab down = %d:\n%s", code, out)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("after lab down: %s remain", strings.Join(left, ", "))
	}
	if got := forwarding(); got != "0" {
		t.Errorf("after lab down: net.ipv4.ip_forward = %s, want 0 again", got)
	}

	// A crash takes the TAP and the rule too.
	if out, code := run("lab", "up", dir, "pc1"); code != 0 {
		t.Fatalf("second lab up = %d:\n%s", code, out)
	}
	if left := leftovers(); len(left) != 2 {
		t.Errorf("after lab up: %v, want the TAP and the table", left)
	}
	if out, code := run("lab", "crash", dir); code != 0 {
		t.Errorf("lab crash = %d:\n%s", code, out)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("after lab crash: %s remain", strings.Join(left, ", "))
	}
	if got := forwarding(); got != "0" {
		t.Errorf("after lab crash: net.ipv4.ip_forward = %s, want 0 again", got)
	}

	// Clean removes a TAP of the lab's that nothing else removed (a node
	// since dropped from lab.conf), with its NAT rule.
	umltest.InNetns(t, ns, func() {
		_, n, _ := net.ParseCIDR("100.64.255.252/30")
		if _, err := hostnet.CreateTap(l.tapPrefix()+"7", hostnet.TapOptions{Owner: -1, Group: -1, Addr: &net.IPNet{IP: net.IPv4(100, 64, 255, 253), Mask: n.Mask}}); err != nil {
			t.Errorf("CreateTap: %v", err)
		}
		if err := hostnet.EnableNAT(n, ""); err != nil {
			t.Errorf("EnableNAT: %v", err)
		}
	})
	if out, code := run("lab", "clean", dir); code != 0 {
		t.Errorf("lab clean = %d:\n%s", code, out)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("after lab clean: %s remain", strings.Join(left, ", "))
	}
}
