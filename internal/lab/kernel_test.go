package lab

import (
	"bytes"
	"context"
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
	var progress syncBuffer
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

type syncBuffer struct {
	lockedWriter
	b bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

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
