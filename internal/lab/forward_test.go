package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umlkit/umlkit/internal/hostnet"
	"github.com/umlkit/umlkit/internal/umltest"
)

func TestPlanForwarding(t *testing.T) {
	for _, tc := range []struct {
		name         string
		own, handoff bool
		rules        int
		want         forwardPlan
	}{
		{"not ours", false, false, 0, forwardPlan{}},
		{"not ours, others use NAT", false, false, 3, forwardPlan{}},
		{"ours, table empty", true, false, 0, forwardPlan{TurnOff: true}},
		{"ours, another lab still bridged", true, false, 1, forwardPlan{HandOver: true}},
		{"handed over, table empty", false, true, 0, forwardPlan{TurnOff: true}},
		{"handed over, still used", false, true, 2, forwardPlan{HandOver: true}},
		{"both, table empty", true, true, 0, forwardPlan{TurnOff: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := planForwarding(tc.own, tc.handoff, tc.rules); got != tc.want {
				t.Errorf("planForwarding(%v, %v, %d) = %+v, want %+v", tc.own, tc.handoff, tc.rules, got, tc.want)
			}
		})
	}
}

// bridgedLab is a lab (not run) with one bridged node, in a directory of
// its own, for the bridge and forwarding code that needs no kernel.
func bridgedLab(t *testing.T, name string) *Lab {
	dir := filepath.Join(umltest.ShortDir(t), name)
	conf := "pc1[0]=A\npc1[bridged]=true\n"
	if err := os.MkdirAll(filepath.Join(dir, ".umlkit"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lab.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Two labs with bridged nodes in a namespace of the test's own, where
// forwarding starts off: the first lab turns it on and records that; when
// it goes first, the second lab's rule still needs forwarding, so it stays
// on and the duty passes to the second lab, which turns it off. Where
// forwarding was on before, it stays on.
func TestForwardingOwnership(t *testing.T) {
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
	ns := umltest.Netns(t)
	a, b := bridgedLab(t, "a"), bridgedLab(t, "b")
	forwarding := func() string { return strings.TrimSpace(umltest.Sh(t, ns, "cat "+forwardSysctl)) }
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	// A new namespace inherits the host's setting (devconf_inherit_init_net).
	umltest.Sh(t, ns, "echo 0 > "+forwardSysctl)
	var hp string
	umltest.InNetns(t, ns, func() {
		var err error
		if hp, err = handoffPath(); err != nil {
			t.Error(err)
			return
		}
		if _, on, err := a.setupBridge("pc1"); err != nil || !on {
			t.Errorf("lab a: setupBridge = %v, %v; want forwarding turned on", on, err)
		}
		if _, on, err := b.setupBridge("pc1"); err != nil || on {
			t.Errorf("lab b: setupBridge = %v, %v; want forwarding found on", on, err)
		}
	})
	if got := forwarding(); got != "1" || !exists(a.forwardClaimPath()) || exists(b.forwardClaimPath()) {
		t.Fatalf("after two labs up: ip_forward %s, claims a %v b %v; want 1, a's only", got, exists(a.forwardClaimPath()), exists(b.forwardClaimPath()))
	}
	umltest.InNetns(t, ns, func() {
		if err := teardownBridge(a.TapName("pc1")); err != nil {
			t.Error(err)
		}
		msg, err := a.releaseForwarding()
		if err != nil || !strings.Contains(msg, "stays on") {
			t.Errorf("lab a down: releaseForwarding = %q, %v; want it to stay on", msg, err)
		}
	})
	if got := forwarding(); got != "1" || exists(a.forwardClaimPath()) || !exists(hp) {
		t.Fatalf("after lab a down: ip_forward %s, a's claim %v, hand-off %v; want 1, none, a note", got, exists(a.forwardClaimPath()), exists(hp))
	}
	umltest.InNetns(t, ns, func() {
		if err := teardownBridge(b.TapName("pc1")); err != nil {
			t.Error(err)
		}
		if msg, err := b.releaseForwarding(); err != nil || !strings.Contains(msg, "off again") {
			t.Errorf("lab b down: releaseForwarding = %q, %v; want forwarding off", msg, err)
		}
	})
	if got := forwarding(); got != "0" || exists(hp) {
		t.Fatalf("after both labs down: ip_forward %s, hand-off %v; want 0 and no note", got, exists(hp))
	}

	// Forwarding the host had on before stays on, even with a stale
	// hand-off note (one whose NAT rules are all gone).
	umltest.Sh(t, ns, "echo 1 > "+forwardSysctl)
	if err := os.WriteFile(hp, []byte("stale\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	umltest.InNetns(t, ns, func() {
		if _, on, err := a.setupBridge("pc1"); err != nil || on {
			t.Errorf("setupBridge with forwarding on = %v, %v; want it found on", on, err)
		}
		teardownBridge(a.TapName("pc1"))
		if msg, err := a.releaseForwarding(); err != nil || msg != "" {
			t.Errorf("releaseForwarding of a lab that found forwarding on = %q, %v; want nothing done", msg, err)
		}
	})
	if got := forwarding(); got != "1" || exists(hp) {
		t.Errorf("forwarding that was on before the lab: %s after it, hand-off note %v; want 1 and no note", got, exists(hp))
	}
	umltest.InNetns(t, ns, func() {
		if rules, err := hostnet.ListNAT(); err != nil || len(rules) != 0 {
			t.Errorf("NAT rules left: %v, %v", rules, err)
		}
	})
}
