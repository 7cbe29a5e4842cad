package cmdline

import (
	"strings"
	"testing"

	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

// TestKernelAgrees boots the real kernel with arguments Parse refuses and
// checks that the kernel refuses them too (with the message quoted), or
// silently does something else than asked.
func TestKernelAgrees(t *testing.T) {
	cases := []struct {
		arg        string
		kernelSays string // "" when the kernel says nothing
	}{
		{"ubd16=/x", `Failed to initialize device with "16=/x" : Device number out of range`},
		{"ubd1x=/y", `Failed to initialize device with "1x=/y" : Expected '=' or flag letter`},
		{"ssl64=pts", `"64=pts" : Device number out of range`},
		{"con2=none,fd:1", "setup_one_line failed for device 2 : failed to parse channel pair"},
		{"con3=x-terminal-emulator", "setup_one_line failed for device 3 : failed to parse channel pair"},
		{"eth1=daemon,,unix,/nonexistent/ctl,/data", "daemon_setup : Ignoring data socket specification"},
		{"eth2=tuntap,tap9,01:00:5e:00:00:01", "Attempt to assign a multicast ethernet address to a device disallowed"},
		{"eth0=pcap,any", ""}, // no such transport: no device, no message
	}
	var args []string
	for _, tc := range cases {
		if _, err := Parse([]string{tc.arg}); len(ArgErrors(err)) != 1 {
			t.Errorf("Parse(%q) = %v, want one error", tc.arg, err)
		}
		args = append(args, tc.arg)
	}
	vm := umltest.Boot(t, umltest.Options{Umid: "agree", Args: args})
	lines := vm.Console.Lines()
	for _, tc := range cases {
		if tc.kernelSays == "" {
			continue
		}
		found := false
		for _, l := range lines {
			found = found || strings.Contains(l, tc.kernelSays)
		}
		if !found {
			t.Errorf("%s: the kernel did not say %q", tc.arg, tc.kernelSays)
		}
	}
	if out, status := vm.Run("ip link show eth0"); status == 0 {
		t.Errorf("eth0=pcap made a device: %q", out)
	}
	vm.Poweroff()
}
