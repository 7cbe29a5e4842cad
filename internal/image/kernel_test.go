package image_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

var (
	debOnce sync.Once
	debPath string
	debErr  error
)

// debianImage builds one Debian image (minbase + iputils-ping and
// iptables) per package run.
// It needs network access to the host's Debian mirror.
func debianImage(t *testing.T) string {
	t.Helper()
	bin := umltest.Umlkit(t)
	umltest.Kernel(t)
	debOnce.Do(func() {
		// Next to the test's umlkit binary: umltest.Main removes that
		// directory when the package's tests end.
		debPath = filepath.Join(filepath.Dir(bin), "debian.img")
		var log bytes.Buffer
		_, debErr = image.BuildDebian(context.Background(), debPath, image.DebianOptions{Packages: []string{"iputils-ping", "iptables"}, Umlkit: bin, Progress: &log})
		if debErr != nil {
			debErr = fmt.Errorf("%w\n%s", debErr, lastLines(log.String(), 20))
		}
	})
	if debErr != nil {
		t.Fatalf("build the Debian image (needs root, debootstrap and the host's Debian mirror): %v", debErr)
	}
	return debPath
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func agentRun(t *testing.T, c *agent.Client, argv ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.Run(ctx, agent.Cmd{Argv: argv, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("agent run %q: %v", argv, err)
	}
	return out.String(), errb.String(), st.Code
}

func boot(t *testing.T, img string) *agent.Client {
	t.Helper()
	vm := umltest.Boot(t, umltest.Options{Image: img, Agent: true, Mem: "128M"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, vm.AgentConn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A Debian image with an extra package boots with umlkit as init, and
// the package's program runs inside through the agent.
func TestDebianImage(t *testing.T) {
	img := debianImage(t)
	if entries, _ := filepath.Glob(filepath.Join(filepath.Dir(img), ".*")); len(entries) != 0 {
		t.Errorf("build left temporary files: %v", entries)
	}
	c := boot(t, img)
	out, errOut, code := agentRun(t, c, "ping", "-c", "1", "127.0.0.1")
	if code != 0 || !strings.Contains(out, "1 received") {
		t.Errorf("ping -c 1 127.0.0.1 in the guest = %q, %q, %d; want one reply", out, errOut, code)
	}
	out, _, code = agentRun(t, c, "dpkg-query", "-W", "-f", "${Status}", "iputils-ping")
	if code != 0 || out != "install ok installed" {
		t.Errorf("dpkg-query iputils-ping = %q, %d; want it installed", out, code)
	}
	// The kernel's modules are there and load (netfilter is modular).
	out, errOut, code = agentRun(t, c, "sh", "-c", "modprobe nf_tables && grep -c '^nf_tables ' /proc/modules")
	if code != 0 || out != "1\n" {
		t.Errorf("modprobe nf_tables in the guest = %q, %q, %d; want it loaded", out, errOut, code)
	}
	out, errOut, code = agentRun(t, c, "sh", "-c", "iptables -t nat -A POSTROUTING -o lo -j MASQUERADE && iptables -t nat -S POSTROUTING")
	if code != 0 || !strings.Contains(out, "-A POSTROUTING -o lo -j MASQUERADE") {
		t.Errorf("iptables NAT rule in the guest = %q, %q, %d", out, errOut, code)
	}
	out, _, _ = agentRun(t, c, "readlink", "/sbin/init")
	if strings.TrimSpace(out) != "umlkit" {
		t.Errorf("/sbin/init -> %q, want umlkit", out)
	}
}
