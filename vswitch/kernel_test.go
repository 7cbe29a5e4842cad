package vswitch

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

// testLogger sends the switch's log to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(b []byte) (int, error) {
	w.t.Log("switch: " + strings.TrimSpace(string(b)))
	return len(b), nil
}

// nic is how an instance joins a switch.
type nic struct {
	arg string // kernel argument
	dev string // guest interface
}

func bessNIC(sock string, n int) nic {
	return nic{fmt.Sprintf("vec0:transport=bess,dst=%s,mac=02:00:00:00:01:%02x", sock, n), "vec0"}
}

func daemonNIC(ctl string, n int) nic {
	return nic{fmt.Sprintf("eth0=daemon,02:00:00:00:01:%02x,unix,%s", n, ctl), "eth0"}
}

// bootAll boots instances in parallel, each with its NIC, and gives
// instance i the address 10.0.0.(i+1)/24.
func bootAll(t *testing.T, nics ...nic) []*umltest.Instance {
	t.Helper()
	umltest.Kernel(t)
	umltest.Image(t)
	vms := make([]*umltest.Instance, len(nics))
	for i, n := range nics {
		vms[i] = umltest.Boot(t, umltest.Options{
			Umid:   fmt.Sprintf("%s-%d", umidBase(t), i+1),
			Args:   []string{n.arg, fmt.Sprintf("hostname=vm%d", i+1)},
			NoWait: true,
		})
	}
	for i, vm := range vms {
		vm.WaitFor(umltest.ReadyMarker, umltest.DefaultTimeout)
		cmd := fmt.Sprintf("ip link set %s up && ip addr add 10.0.0.%d/24 dev %s", nics[i].dev, i+1, nics[i].dev)
		if out, st := vm.Run(cmd); st != 0 {
			t.Fatalf("vm%d: %s: status %d: %s", i+1, cmd, st, out)
		}
	}
	return vms
}

func umidBase(t *testing.T) string {
	s := strings.ToLower(strings.TrimPrefix(t.Name(), "TestKernel"))
	s = strings.NewReplacer("/", "-", "_", "-").Replace(s)
	return s[:min(len(s), 16)]
}

// ping runs ping in vm and fails the test unless all replies came back.
func ping(t *testing.T, vm *umltest.Instance, ip string) {
	t.Helper()
	out, st := vm.Run("ping -c 3 -W 5 " + ip)
	if st != 0 || !strings.Contains(out, "3 packets received") {
		t.Fatalf("%s: ping %s: status %d:\n%s", vm.Umid, ip, st, out)
	}
}

func poweroffAll(vms []*umltest.Instance) {
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Go(vm.Poweroff)
	}
	wg.Wait()
}

func TestKernelBESS(t *testing.T) {
	sock := filepath.Join(umltest.ShortDir(t), "bess")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	vms := bootAll(t, bessNIC(sock, 1), bessNIC(sock, 2))
	ping(t, vms[0], "10.0.0.2")
	ping(t, vms[1], "10.0.0.1")
	checkLearned(t, s, 2)
	poweroffAll(vms)
	waitPorts(t, s, 0)
}

func TestKernelDaemon(t *testing.T) {
	ctl := filepath.Join(umltest.ShortDir(t), "ctl")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	vms := bootAll(t, daemonNIC(ctl, 1), daemonNIC(ctl, 2))
	ping(t, vms[0], "10.0.0.2")
	checkLearned(t, s, 2)
	poweroffAll(vms)
	waitPorts(t, s, 0)
}

// A BESS instance and a daemon instance on one switch.
func TestKernelMixed(t *testing.T) {
	dir := umltest.ShortDir(t)
	sock, ctl := filepath.Join(dir, "bess"), filepath.Join(dir, "ctl")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := s.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	vms := bootAll(t, bessNIC(sock, 1), daemonNIC(ctl, 2))
	ping(t, vms[0], "10.0.0.2")
	ping(t, vms[1], "10.0.0.1")
	kinds := map[string]bool{}
	for _, p := range s.Ports() {
		kinds[p.Kind] = true
	}
	if !kinds["bess"] || !kinds["daemon"] {
		t.Errorf("ports %+v, want a bess and a daemon port", s.Ports())
	}
	poweroffAll(vms)
}

func checkLearned(t *testing.T, s *Switch, n int) {
	t.Helper()
	got := 0
	for _, m := range s.MACs() {
		if strings.HasPrefix(m.MAC, "02:00:00:00:01:") {
			got++
		}
	}
	if got != n {
		t.Errorf("MACs() = %+v, want the %d instances' addresses", s.MACs(), n)
	}
}
