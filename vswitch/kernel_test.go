package vswitch

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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

func vdeNIC(dir string, n int) nic {
	return nic{fmt.Sprintf("eth0=vde,%s,02:00:00:00:01:%02x", dir, n), "eth0"}
}

// A BESS instance, a daemon instance and a vde instance (the kernel runs
// the real vde_plug, a libvdeplug client of our daemon socket) on one
// switch.
func TestKernelMixed(t *testing.T) {
	if _, err := exec.LookPath("vde_plug"); err != nil {
		t.Fatalf("vde_plug is needed: apt-get install vdeplug (make setup installs it): %v", err)
	}
	dir := umltest.ShortDir(t)
	sock, ctl := filepath.Join(dir, "bess"), filepath.Join(dir, "ctl")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := s.ListenDaemon(ctl, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	vms := bootAll(t, bessNIC(sock, 1), daemonNIC(ctl, 2), vdeNIC(dir, 3))
	ping(t, vms[0], "10.0.0.2")
	ping(t, vms[1], "10.0.0.1")
	ping(t, vms[2], "10.0.0.1")
	ping(t, vms[2], "10.0.0.2")
	kinds := map[string]int{}
	vde := false
	for _, p := range s.Ports() {
		kinds[p.Kind]++
		vde = vde || strings.Contains(p.Peer, "UML vde_transport")
	}
	if kinds["bess"] != 1 || kinds["daemon"] != 2 || !vde {
		t.Errorf("ports %+v, want a bess port and two daemon ports, one of them vde_plug's", s.Ports())
	}
	checkLearned(t, s, 3)
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

// rxPackets reads a guest interface's receive counter.
func rxPackets(t *testing.T, vm *umltest.Instance, dev string) int {
	t.Helper()
	out, st := vm.Run("cat /sys/class/net/" + dev + "/statistics/rx_packets")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if st != 0 || err != nil {
		t.Fatalf("%s: rx_packets: %q, %d", vm.Umid, out, st)
	}
	return n
}

// In hub mode a third instance receives the unicast between two others;
// in switch mode it does not.
func TestKernelHubAndSwitch(t *testing.T) {
	sock := filepath.Join(umltest.ShortDir(t), "bess")
	s := newSwitch(t, Config{Hub: true, Logger: testLogger(t)})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	vms := bootAll(t, bessNIC(sock, 1), bessNIC(sock, 2), bessNIC(sock, 3))
	ping(t, vms[0], "10.0.0.2") // ARP done
	before := rxPackets(t, vms[2], "vec0")
	if out, st := vms[0].Run("ping -c 6 -i 0.2 10.0.0.2"); st != 0 {
		t.Fatalf("ping: %s", out)
	}
	hub := rxPackets(t, vms[2], "vec0") - before
	if hub < 12 {
		t.Errorf("hub mode: the third instance received %d frames during 6 pings between the others, want at least 12", hub)
	}
	s.SetHub(false)
	ping(t, vms[0], "10.0.0.2") // learn both
	before = rxPackets(t, vms[2], "vec0")
	if out, st := vms[0].Run("ping -c 6 -i 0.2 10.0.0.2"); st != 0 {
		t.Fatalf("ping: %s", out)
	}
	sw := rxPackets(t, vms[2], "vec0") - before
	if sw > 2 {
		t.Errorf("switch mode: the third instance received %d frames during 6 pings between the others, want none", sw)
	}
	t.Logf("third instance received %d frames in hub mode, %d in switch mode", hub, sw)
	poweroffAll(vms)
}

// Instances on different access VLANs cannot reach each other; a trunk
// port carries both VLANs, tagged.
func TestKernelVLANs(t *testing.T) {
	dir := umltest.ShortDir(t)
	s10, s20 := filepath.Join(dir, "b10"), filepath.Join(dir, "b20")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenBESS(s10, ListenOptions{GID: -1, VLAN: 10}); err != nil {
		t.Fatal(err)
	}
	if err := s.ListenBESS(s20, ListenOptions{GID: -1, VLAN: 20}); err != nil {
		t.Fatal(err)
	}
	trunk := attach(t, s, PortOptions{Kind: "trunk", VLAN: 1, Trunk: []int{10, 20}})
	vms := bootAll(t, bessNIC(s10, 1), bessNIC(s20, 2), bessNIC(s10, 3))
	ping(t, vms[0], "10.0.0.3")
	if out, st := vms[0].Run("ping -c 2 -W 2 10.0.0.2"); st == 0 {
		t.Errorf("VLAN 10 reached VLAN 20:\n%s", out)
	}
	vms[1].Run("ping -c 1 -W 1 10.0.0.1")
	// The trunk saw tagged frames of both VLANs.
	seen := map[uint16]bool{}
	buf := make([]byte, 2000)
	for !seen[10] || !seen[20] {
		trunk.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := trunk.c.Read(buf)
		if err != nil {
			t.Fatalf("trunk: %v; saw VLANs %v, want 10 and 20", err, seen)
		}
		if vid, tagged, ok := parseVLAN(buf[:n]); ok && tagged {
			seen[vid] = true
		} else {
			t.Fatalf("trunk received an untagged frame %x", head(buf[:n]))
		}
	}
	poweroffAll(vms)
}

// The management socket's capture, read back by tcpdump, shows the ICMP
// exchange.
func TestKernelCapture(t *testing.T) {
	dir := umltest.ShortDir(t)
	sock, mgmt := filepath.Join(dir, "bess"), filepath.Join(dir, "mgmt")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := s.ListenManagement(mgmt, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	vms := bootAll(t, bessNIC(sock, 1), bessNIC(sock, 2))
	pcap := filepath.Join(dir, "cap.pcap")
	f, err := os.Create(pcap)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	capErr := make(chan error, 1)
	cl := &Client{Path: mgmt}
	go func() { capErr <- cl.Capture(f, 0, 0, stop) }()
	// A second capture at once, of port 2 only.
	var port2 bytes.Buffer
	capErr2 := make(chan error, 1)
	go func() { capErr2 <- cl.Capture(&port2, 2, 0, stop) }()
	for range 500 {
		if cs := s.captures.Load(); cs != nil && len(*cs) == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ping(t, vms[0], "10.0.0.2")
	close(stop)
	if err := <-capErr; err != nil {
		t.Fatal(err)
	}
	if err := <-capErr2; err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("tcpdump", "-n", "-r", pcap).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	t.Logf("tcpdump -r:\n%s", out)
	if !strings.Contains(string(out), "10.0.0.1 > 10.0.0.2: ICMP echo request") || !strings.Contains(string(out), "10.0.0.2 > 10.0.0.1: ICMP echo reply") {
		t.Errorf("capture lacks the ICMP exchange")
	}
	p2 := filepath.Join(dir, "p2.pcap")
	os.WriteFile(p2, port2.Bytes(), 0o600)
	out, err = exec.Command("tcpdump", "-n", "-r", p2).CombinedOutput()
	if err != nil || strings.Contains(string(out), "echo request") || !strings.Contains(string(out), "echo reply") {
		t.Errorf("port 2 capture (%v) should hold the replies only:\n%s", err, out)
	}
	poweroffAll(vms)
}

// The host side, in a network namespace the test creates, pings an
// instance through a TAP port.
func TestKernelTAP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("TAP ports and network namespaces need root: run the tests as root (make test does)")
	}
	ns := fmt.Sprintf("umlkit-sw-%d", os.Getpid())
	tap := fmt.Sprintf("umlsw%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sock := filepath.Join(umltest.ShortDir(t), "bess")
	s := newSwitch(t, Config{Logger: testLogger(t)})
	if err := s.ListenBESS(sock, ListenOptions{GID: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachTAP(tap, PortOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"ip", "link", "set", tap, "netns", ns},
		{"ip", "-n", ns, "addr", "add", "10.0.0.100/24", "dev", tap},
		{"ip", "-n", ns, "link", "set", tap, "up"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	vms := bootAll(t, bessNIC(sock, 1))
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "3", "-W", "5", "10.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("ping from the namespace through %s: %v\n%s", tap, err, out)
	}
	t.Logf("%s", out)
	ping(t, vms[0], "10.0.0.100")
	if p := findPort(s, 1); p.Kind != "tap" || p.RxFrames == 0 || p.TxFrames == 0 {
		t.Errorf("tap port = %+v, want frames both ways", p)
	}
	poweroffAll(vms)
}

// umlkitBinary builds the umlkit command for this test (go's build cache
// makes the second build quick).
func umlkitBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "umlkit")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/umlkit").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startSwitch runs `umlkit switch --dir dir` as its own process.
func startSwitch(t *testing.T, bin, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "switch", "--dir", dir, "--keeper-idle", "1s")
	cmd.Stdout, cmd.Stderr = tlogWriter{t}, tlogWriter{t}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	mgmt := &Client{Path: filepath.Join(dir, "mgmt")}
	for range 500 {
		if _, err := mgmt.Stats(); err == nil {
			return cmd
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("umlkit switch --dir %s did not come up", dir)
	return nil
}

// Kill -9 the switch during a ping and start it again: the ping resumes
// and no instance is rebooted, for BESS and daemon ports.
func TestKernelRestart(t *testing.T) {
	bin := umlkitBinary(t)
	dir := umltest.ShortDir(t)
	sw := startSwitch(t, bin, dir)
	vms := bootAll(t, bessNIC(filepath.Join(dir, "bess"), 1), daemonNIC(filepath.Join(dir, "ctl"), 2), bessNIC(filepath.Join(dir, "bess"), 3))
	ping(t, vms[0], "10.0.0.2")
	ping(t, vms[0], "10.0.0.3")
	pids := []int{vms[0].PID(), vms[1].PID(), vms[2].PID()}
	vms[0].Run("(ping -i 0.2 -c 50 10.0.0.2 > /tmp/ping.out 2>&1 &)")
	vms[0].Run("sleep 2")
	sw.Process.Signal(syscall.SIGKILL) // the switch's own pid, started above
	sw.Wait()
	sw = startSwitch(t, bin, dir)
	// Wait for the background ping to finish (50 x 0.2s).
	out, _ := vms[0].Run("while pidof ping >/dev/null; do sleep 1; done; cat /tmp/ping.out")
	t.Logf("ping during the restart:\n%s", out)
	if !strings.Contains(out, "seq=48") && !strings.Contains(out, "seq=49") {
		t.Errorf("the ping did not resume after the restart")
	}
	ping(t, vms[0], "10.0.0.2")
	ping(t, vms[0], "10.0.0.3")
	ping(t, vms[1], "10.0.0.3")
	for i, vm := range vms {
		if vm.PID() != pids[i] {
			t.Errorf("%s was restarted", vm.Umid)
		}
	}
	ports, err := (&Client{Path: filepath.Join(dir, "mgmt")}).Ports()
	if err != nil || len(ports) != 3 {
		t.Errorf("after the restart the switch has ports %+v (%v), want 3", ports, err)
	}
	// A planned stop and start keeps the links too.
	sw.Process.Signal(syscall.SIGTERM)
	sw.Wait()
	sw = startSwitch(t, bin, dir)
	ping(t, vms[2], "10.0.0.2")
	poweroffAll(vms)
	sw.Process.Signal(syscall.SIGTERM)
	sw.Wait()
	// With the instances gone and the switch stopped, the keeper exits.
	keep := filepath.Join(dir, "bess.keep")
	for i := 0; ; i++ {
		if _, err := os.Stat(keep); err != nil {
			break
		}
		if i == 300 {
			t.Fatalf("the keeper (%s) is still there after its instances and switch are gone", keep)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// umlkit invoked as uml_switch, with uml_switch's flags (-daemon too),
// serves kernels configured for uml_switch.
func TestKernelUMLSwitchDropIn(t *testing.T) {
	bin := umlkitBinary(t)
	dir := umltest.ShortDir(t)
	link := filepath.Join(dir, "uml_switch")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	ctl := filepath.Join(dir, "uml.ctl")
	// Like uml_switch, the background switch keeps stdout and stderr:
	// give it a file, not a pipe that would stay open.
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(link, "-unix", ctl, "-daemon")
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Run()
	out, _ := os.ReadFile(logf.Name())
	if err != nil || !strings.Contains(string(out), "uml_switch attached to unix socket '"+ctl+"'") {
		t.Fatalf("uml_switch -unix %s -daemon: %v\n%s", ctl, err, out)
	}
	st, err := (&Client{Path: ctl + ".mgmt"}).Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(st.PID, syscall.SIGTERM) }) // the background switch started above
	vms := bootAll(t, daemonNIC(ctl, 1), daemonNIC(ctl, 2))
	ping(t, vms[0], "10.0.0.2")
	poweroffAll(vms)
	syscall.Kill(st.PID, syscall.SIGTERM)
	for i := 0; ; i++ {
		if _, err := os.Stat(ctl); err != nil {
			break
		}
		if i == 200 {
			t.Fatalf("the background uml_switch (pid %d) did not stop on SIGTERM", st.PID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
