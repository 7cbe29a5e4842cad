package preflight

import (
	"strings"
	"testing"
)

func TestCheckTap(t *testing.T) {
	for _, tc := range []struct {
		name, dev, hostIP, want string
	}{
		{"not a TAP", "lo", "", "not a TAP"},
		{"host address taken", "", "127.0.0.1", "already on lo"},
		{"host address not IPv4", "", "fe80::1", "not an IPv4 address"},
		{"no host address", "", "", "needs the host-side IP address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Report{}
			checkTap(r, "eth0=tuntap,"+tc.dev+",,"+tc.hostIP, tc.dev, tc.hostIP)
			var msgs []string
			for _, p := range r.Problems {
				msgs = append(msgs, p.Message)
			}
			if !strings.Contains(strings.Join(msgs, "\n"), tc.want) {
				t.Errorf("checkTap(%q, %q) = %q, want a problem with %q", tc.dev, tc.hostIP, msgs, tc.want)
			}
		})
	}
}
