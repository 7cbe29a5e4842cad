package umltest

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// Netns creates a named network namespace with loopback up, for a test
// that needs its own network, and deletes it when the test ends. It needs
// root and iproute2; under make test their absence fails the test.
func Netns(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		need(t, "ip (iproute2) not found: apt-get install iproute2")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "umlkit-t-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		need(t, "ip netns add "+name+": "+strings.TrimSpace(string(out))+" (network namespace tests need root)")
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	Sh(t, name, "ip link set lo up")
	return name
}

// need fails the test under make test and skips it elsewhere.
func need(t testing.TB, why string) {
	t.Helper()
	if Required() {
		t.Fatal(why)
	}
	t.Skip(why)
}

// Sh runs a shell command line inside the namespace ns ("" for the
// test's own) and fails the test if it fails. It is for test set-up and
// observation (ping, ip route show), never for what is under test.
func Sh(t testing.TB, ns, cmdline string) string {
	t.Helper()
	out, err := ShErr(ns, cmdline)
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	return out
}

// ShErr is Sh returning the error instead of failing.
func ShErr(ns, cmdline string) (string, error) {
	args := []string{"sh", "-c", cmdline}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// InNetns runs f on an OS thread switched into the namespace ns, so that
// netlink calls and new TAP devices in f act there.
func InNetns(t testing.TB, ns string, f func()) {
	t.Helper()
	target, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("open netns %s: %v", ns, err)
	}
	defer target.Close()
	done := make(chan struct{})
	var failed bool
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked when f returns, so the runtime
		// discards it instead of reusing it in the wrong namespace.
		if err := netns.Set(target); err != nil {
			failed = true
			t.Errorf("enter netns %s: %v", ns, err)
			return
		}
		f()
	}()
	<-done
	if failed {
		t.FailNow()
	}
}
