package lab

import (
	"bytes"
	"context"
	"fmt"
	"github.com/umlkit/umlkit/internal/syncio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

// copyLab copies testdata/name to a short temporary directory.
func copyLab(t *testing.T, name string) string {
	t.Helper()
	dst := filepath.Join(umltest.ShortDir(t), name)
	src := filepath.Join("testdata", name)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// upLab copies testdata/name and brings it up with the test's umlkit and
// agent image, in a runtime dir of the test's own; the lab is crashed when
// the test ends.
func upLab(t *testing.T, name string) (*Lab, Options) {
	t.Helper()
	umltest.Kernel(t)
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
	img := umltest.AgentImage(t)
	dir := copyLab(t, name)
	l, err := Load(dir)
	if err != nil {
		t.Fatalf("Load(%s): %v", name, err)
	}
	var progress syncio.Buffer
	o := Options{Exe: umltest.Umlkit(t), Image: func(context.Context, string) (string, error) { return img, nil }, Progress: &progress}
	t.Cleanup(func() {
		Crash(context.Background(), l, nil, false, Options{})
		if t.Failed() {
			t.Logf("progress:\n%s", progress.String())
			for _, n := range l.Nodes {
				b, _ := os.ReadFile(machine.PathsOf(l.Instance(n.Name)).Log())
				t.Logf("console of %s:\n%s", n.Name, lastLines(string(b), 15))
			}
		}
	})
	res, err := Up(context.Background(), l, nil, o)
	if err != nil {
		t.Fatalf("Up(%s): %v\n%s", name, err, progress.String())
	}
	for _, r := range res {
		if r.Err != nil || (r.Startup != nil && *r.Startup != 0) {
			t.Fatalf("Up(%s): node %s: err %v, startup %v, output %q", name, r.Node, r.Err, derefInt(r.Startup), r.Output)
		}
	}
	return l, o
}

func derefInt(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func mustExec(t *testing.T, l *Lab, node, cmd string) string {
	t.Helper()
	code, out, err := Exec(context.Background(), l, node, cmd, 30*time.Second)
	if err != nil || code != 0 {
		t.Fatalf("Exec(%s, %q) = %d, %q, %v", node, cmd, code, out, err)
	}
	return out
}

func TestKernelTwoHosts(t *testing.T) {
	l, o := upLab(t, "twohosts")
	mustExec(t, l, "pc1", "ping -c 2 -W 3 10.0.0.2")
	if out := mustExec(t, l, "pc2", "cat /sys/class/net/eth0/address; cat /tmp/role"); !strings.Contains(out, "02:00:00:00:02:01") || !strings.Contains(out, "role server") {
		t.Errorf("pc2: MAC and env = %q, want 02:00:00:00:02:01 and role server", out)
	}
	// A second up starts nothing.
	res, err := Up(context.Background(), l, nil, o)
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	for _, r := range res {
		if r.Started {
			t.Errorf("second Up started %s again", r.Node)
		}
	}
	sts := Status(context.Background(), l, true)
	if sts[0].State != "running" || sts[0].Addresses["eth0"] != "10.0.0.1/24" || sts[0].Startup != "ok" {
		t.Errorf("Status = %+v", sts)
	}
	if err := Down(context.Background(), l, nil, false, o); err != nil {
		t.Fatalf("Down: %v", err)
	}
	for _, s := range Status(context.Background(), l, false) {
		if s.State == "running" {
			t.Errorf("after Down, %s is %s", s.Node, s.State)
		}
	}
	if _, err := os.Stat(l.COW("pc1")); err != nil {
		t.Errorf("Down removed the COW file: %v", err)
	}
	if _, err := os.Stat(l.RunDir()); !os.IsNotExist(err) {
		t.Errorf("Down left %s: %v", l.RunDir(), err)
	}
}

func TestKernelLtest(t *testing.T) {
	l, o := upLab(t, "twohosts")
	ctx := context.Background()
	rep, err := Test(ctx, l, TestOptions{Options: o, Record: true})
	if err != nil {
		t.Fatalf("Test(record): %v", err)
	}
	var buf bytes.Buffer
	FormatReport(&buf, rep)
	if rep.Failed != 0 || !strings.Contains(buf.String(), "rec  pc1        user") {
		t.Fatalf("Test(record):\n%s", buf.String())
	}
	sig, _ := os.ReadFile(filepath.Join(l.Dir, "_test", "signature", "pc1.user"))
	if string(sig) != "pc2 answers\n" {
		t.Errorf("pc1.user signature = %q, want %q", sig, "pc2 answers\n")
	}
	rep, err = Test(ctx, l, TestOptions{Options: o})
	if err != nil || rep.Failed != 0 {
		buf.Reset()
		FormatReport(&buf, rep)
		t.Fatalf("Test(verify) = %v:\n%s", err, buf.String())
	}
	for _, r := range rep.Results {
		if r.Status != "pass" {
			t.Errorf("verify: %+v, want pass", r)
		}
	}
	// Break pc2: its address goes, so signatures and checks fail.
	mustExec(t, l, "pc2", "ip addr flush dev eth0")
	rep, err = Test(ctx, l, TestOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	FormatReport(&buf, rep)
	for _, want := range []string{"FAIL pc2        default", "-     inet 10.0.0.2/24", "FAIL pc1        user", "FAIL pc1        ping pc1 10.0.0.2 (" + filepath.Join(l.Dir, "_test", "checks") + ":2)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("broken lab report lacks %q:\n%s", want, buf.String())
		}
	}
}

// A lab whose startup gives pc2 the wrong address fails its checks; Test
// starts it and stops it again.
func TestKernelBrokenLab(t *testing.T) {
	umltest.Kernel(t)
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
	img := umltest.AgentImage(t)
	dir := copyLab(t, "twohosts")
	os.WriteFile(filepath.Join(dir, "pc2.startup"), []byte("ip addr add 10.0.0.3/24 dev eth0\nip link set eth0 up\nexit 3\n"), 0o644)
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Exe: umltest.Umlkit(t), Image: func(context.Context, string) (string, error) { return img, nil }}
	t.Cleanup(func() { Crash(context.Background(), l, nil, false, Options{}) })
	rep, err := Test(context.Background(), l, TestOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	FormatReport(&buf, rep)
	for _, want := range []string{"FAIL pc2        startup", "pc2.startup exited 3", "FAIL pc1        ping pc1 10.0.0.2", "FAIL pc2        exec pc2"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, buf.String())
		}
	}
	if rep.Failed < 3 {
		t.Errorf("Failed = %d, want at least 3", rep.Failed)
	}
	for _, s := range Status(context.Background(), l, false) {
		if s.State == "running" {
			t.Errorf("Test left %s running", s.Node)
		}
	}
}

func TestKernelStaticRouting(t *testing.T) {
	l, o := upLab(t, "routing")
	mustExec(t, l, "pc1", "ping -c 2 -W 3 10.0.3.2")
	rep, err := Test(context.Background(), l, TestOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 0 {
		var buf bytes.Buffer
		FormatReport(&buf, rep)
		t.Fatalf("checks of the routing lab:\n%s", buf.String())
	}
	// Without r2's route back, pc1 no longer reaches pc2.
	mustExec(t, l, "r2", "ip route del 10.0.1.0/24")
	if code, out, _ := Exec(context.Background(), l, "pc1", "ping -c 1 -W 2 10.0.3.2", 30*time.Second); code == 0 {
		t.Errorf("pc1 reaches pc2 without r2's route back: %q", out)
	}
}

// rxPackets reads a node's eth0 receive counter.
func rxPackets(t *testing.T, l *Lab, node string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(mustExec(t, l, node, "cat /sys/class/net/eth0/statistics/rx_packets"), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestKernelHubFilesDeps(t *testing.T) {
	l, o := upLab(t, "hubfiles")
	// lab.dep: pc1 (whose startup sleeps first), then pc2, then pc3.
	if b, _ := os.ReadFile(filepath.Join(l.Dir, "shared", "order")); string(b) != "pc1\npc2\npc3\n" {
		t.Errorf("startup order in shared/order = %q, want pc1, pc2, pc3", b)
	}
	if out := mustExec(t, l, "pc1", "cat /etc/lab-motd"); out != "tree file of pc1\n" {
		t.Errorf("pc1's tree file = %q", out)
	}
	if code, _, _ := Exec(context.Background(), l, "pc2", "test -e /etc/lab-motd", 10*time.Second); code == 0 {
		t.Errorf("pc2 has pc1's tree file")
	}
	if out := mustExec(t, l, "pc3", "cat /shared/hello.txt"); out != "shared by every node\n" {
		t.Errorf("shared/hello.txt in pc3 = %q", out)
	}
	if code, _, _ := Exec(context.Background(), l, "pc2", "touch /hostlab/lab.conf", 10*time.Second); code == 0 {
		t.Errorf("the lab directory is writable in the guest; want it read-only (shared/ aside)")
	}

	// A capture of the hub domain sees the traffic.
	var pcap syncio.Buffer
	stop := make(chan struct{})
	capDone := make(chan error, 1)
	go func() { capDone <- Capture(l, "H", &pcap, stop) }()
	// On the hub, pc3 receives pc1's unicast to pc2.
	mustExec(t, l, "pc1", "ping -c 1 -W 2 10.0.9.2")
	before := rxPackets(t, l, "pc3")
	mustExec(t, l, "pc1", "ping -c 20 -i 0.05 -W 2 10.0.9.2 >/dev/null")
	if got := rxPackets(t, l, "pc3") - before; got < 40 {
		t.Errorf("pc3 received %d frames while pc1 and pc2 exchanged 40 on the hub, want at least 40", got)
	}
	close(stop)
	if err := <-capDone; err != nil {
		t.Errorf("Capture: %v", err)
	}
	if n := len(pcap.String()); n < 24+40*(16+98) {
		t.Errorf("capture of H has %d bytes, want the 40 echo frames", n)
	}
	// The same domain as a switch: pc3 no longer sees them.
	c, err := l.SwitchClient("H")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetHub(false); err != nil {
		t.Fatal(err)
	}
	mustExec(t, l, "pc1", "ping -c 2 -W 2 10.0.9.2 >/dev/null")
	before = rxPackets(t, l, "pc3")
	mustExec(t, l, "pc1", "ping -c 20 -i 0.05 -W 2 10.0.9.2 >/dev/null")
	if got := rxPackets(t, l, "pc3") - before; got >= 20 {
		t.Errorf("pc3 received %d frames on a learning switch, want only the odd broadcast", got)
	}
	if err := Down(context.Background(), l, nil, true, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.Dir, "shared", "shutdown")); string(b) != "pc1 down\n" {
		t.Errorf("pc1.shutdown wrote %q to shared/shutdown, want %q", b, "pc1 down\n")
	}
	if _, err := os.Stat(l.COW("pc1")); !os.IsNotExist(err) {
		t.Errorf("Down with wipe kept the COW file: %v", err)
	}
}

// The examples pass their own tests, against the signatures they ship.
func TestKernelExamples(t *testing.T) {
	umltest.Kernel(t)
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
	img := umltest.AgentImage(t)
	o := Options{Exe: umltest.Umlkit(t), Image: func(context.Context, string) (string, error) { return img, nil }}
	for _, name := range []string{"seed", "two-hosts", "static-routing"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(umltest.ShortDir(t), name)
			if err := os.CopyFS(dir, os.DirFS(filepath.Join("..", "..", "examples", name))); err != nil {
				t.Fatal(err)
			}
			l, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { Crash(context.Background(), l, nil, false, Options{}) })
			rep, err := Test(context.Background(), l, TestOptions{Options: o})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			FormatReport(&buf, rep)
			if rep.Failed != 0 || strings.Contains(buf.String(), "rec ") {
				t.Errorf("lab test %s (want every item to pass against the shipped signatures):\n%s", name, buf.String())
			}
		})
	}
}
