package lab

import (
	"bytes"
	"context"
	"fmt"
	"github.com/umlkit/umlkit/internal/syncio"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/image/store"
	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/internal/umltest"
)

// routerImage is the router image this test binary built, so that the
// OSPF and RIP tests share one debootstrap.
var routerImage struct {
	sync.Mutex
	path string
}

// buildRouterImage builds the "router" preset (Debian with FRR) into the
// image store of the data directory the test has set, as
// umlkit image build debian --preset router --name router does, unless an
// earlier test of this run built it there already.
// It needs root, debootstrap and the host's Debian mirror.
func buildRouterImage(t *testing.T, bin string) {
	t.Helper()
	routerImage.Lock()
	defer routerImage.Unlock()
	s := store.DefaultStore()
	if routerImage.path == s.Path("router") {
		if _, err := os.Stat(routerImage.path); err == nil {
			t.Logf("router image: %s, built by an earlier test", routerImage.path)
			return
		}
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	t0 := time.Now()
	pkgs := image.Presets["router"]
	mirror, err := image.BuildDebian(context.Background(), s.Path("router"), image.DebianOptions{Packages: pkgs, Umlkit: bin, Progress: &log})
	if err != nil {
		t.Fatalf("build the router image (needs root, debootstrap and the host's Debian mirror): %v\n%s", err, lastLines(log.String(), 20))
	}
	st, err := os.Stat(s.Path("router"))
	if err != nil {
		t.Fatal(err)
	}
	m := &store.Manifest{Name: "router", Kind: store.KindDebian, Size: st.Size(), Created: time.Now().UTC(), Suite: image.DefaultSuite, Mirror: mirror,
		Packages: append([]string{"minbase", "umlkit"}, pkgs...)}
	if err := s.SaveManifest(m); err != nil {
		t.Fatal(err)
	}
	routerImage.path = s.Path("router")
	t.Logf("router image built in %.0fs (%d MiB)", time.Since(t0).Seconds(), st.Size()>>20)
}

// protoRoutes returns the prefixes in node's routing table that the
// routing protocol proto (ospf, rip) put there.
func protoRoutes(ctx context.Context, l *Lab, node, proto string) ([]string, error) {
	code, out, err := Exec(ctx, l, node, "ip route show proto "+proto, 30*time.Second)
	if err != nil || code != 0 {
		return nil, fmt.Errorf("ip route in %s: exit %d, %v: %s", node, code, err, out)
	}
	var p []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			p = append(p, f[0])
		}
	}
	return p, nil
}

// waitRoutes polls until every router of want has exactly those prefixes
// from proto, or fails the test after limit. It returns how long it took.
func waitRoutes(t *testing.T, l *Lab, proto string, want map[string]string, limit time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		got := map[string]string{}
		for node := range want {
			p, err := protoRoutes(context.Background(), l, node, proto)
			if err != nil {
				t.Fatal(err)
			}
			got[node] = strings.Join(p, " ")
		}
		same := true
		for node, w := range want {
			same = same && got[node] == w
		}
		if same {
			return time.Since(t0)
		}
		if time.Since(t0) > limit {
			t.Fatalf("%s routes after %v: %v, want %v", proto, limit, got, want)
		}
		time.Sleep(time.Second)
	}
}

// routerLab sets the test up like a user's host (the router image in the
// data dir's store, lab image names resolved as for users) and copies
// examples/name to a short directory of the same name, whose name the
// shipped signatures' MAC addresses derive from.
func routerLab(t *testing.T, name string) (*Lab, Options) {
	t.Helper()
	umltest.Kernel(t)
	bin := umltest.Umlkit(t)
	// Under the test's umlkit binary: umltest.Main removes it at the end.
	t.Setenv(hostdirs.EnvData, filepath.Join(filepath.Dir(bin), "data"))
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
	t.Setenv(EnvImage, "")
	t.Setenv(EnvImageMap, "")
	buildRouterImage(t, bin)

	dir := filepath.Join(umltest.ShortDir(t), name)
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("..", "..", "examples", name))); err != nil {
		t.Fatal(err)
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	progress := &syncio.Buffer{}
	// Image nil: lab image names resolve as for users (ResolveImage).
	o := Options{Exe: bin, Progress: progress}
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
	return l, o
}

// upRouterLab brings the lab up and fails the test unless every node
// started and its startup script (which waits for the routing protocol)
// succeeded. It returns how long that took.
func upRouterLab(t *testing.T, l *Lab, o Options) time.Duration {
	t.Helper()
	t0 := time.Now()
	res, err := Up(context.Background(), l, nil, o)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	for _, r := range res {
		if r.Err != nil || r.Startup == nil || *r.Startup != 0 {
			t.Fatalf("Up: node %s: err %v, startup %v, output %q", r.Node, r.Err, derefInt(r.Startup), r.Output)
		}
	}
	return time.Since(t0)
}

// testShipped runs lab test against the example's shipped signatures and
// checks: every item passes and none is recorded anew.
func testShipped(t *testing.T, l *Lab, o Options, mustPass string) {
	t.Helper()
	rep, err := Test(context.Background(), l, TestOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	FormatReport(&buf, rep)
	if rep.Failed != 0 || strings.Contains(buf.String(), "rec ") || !strings.Contains(buf.String(), mustPass) {
		t.Fatalf("lab test %s (want every item to pass against the shipped signatures):\n%s", l.Name(), buf.String())
	}
}

// The ospf example, on the router image with FRR as lab users build it
// (kathara/frr maps to it through the store): OSPF converges, the lab's
// checks pass (host to host across three routers), and the routes follow
// the protocol: when r3's FRR stops, its subnet goes from r1's table, and
// comes back when it starts again.
func TestKernelOSPF(t *testing.T) {
	l, o := routerLab(t, "ospf")
	// The routers' startup scripts start FRR and wait for OSPF.
	up := upRouterLab(t, l, o)
	converged := map[string]string{
		"r1": "10.0.3.0/24 10.0.4.0/24",
		"r2": "10.0.1.0/24 10.0.4.0/24",
		"r3": "10.0.1.0/24 10.0.2.0/24",
	}
	waitRoutes(t, l, "ospf", converged, 60*time.Second)
	t.Logf("lab up and OSPF converged in %.1fs", up.Seconds())
	testShipped(t, l, o, "ok   pc1        ping pc1 10.0.4.2")

	// Without r3's FRR, r1 and r2 lose the subnet only r3 announces.
	mustExec(t, l, "r3", "/etc/init.d/frr stop >/dev/null 2>&1; ip route flush proto ospf")
	lost := waitRoutes(t, l, "ospf", map[string]string{"r1": "10.0.3.0/24", "r2": "10.0.1.0/24"}, 60*time.Second)
	if code, out, _ := Exec(context.Background(), l, "pc1", "ping -c 1 -W 2 10.0.4.2", 30*time.Second); code == 0 {
		t.Errorf("pc1 reaches pc2 with r3's FRR stopped: %q", out)
	}
	mustExec(t, l, "r3", "/etc/init.d/frr start >/dev/null 2>&1")
	back := waitRoutes(t, l, "ospf", converged, 60*time.Second)
	mustExec(t, l, "pc1", "ping -c 1 -W 2 10.0.4.2")
	t.Logf("r3's FRR stopped: routes withdrawn in %.1fs; started again: back in %.1fs", lost.Seconds(), back.Seconds())

	if err := Down(context.Background(), l, nil, true, o); err != nil {
		t.Fatalf("Down: %v", err)
	}
}

// Every shipped example loads without warnings, its checks parse and name
// its nodes, and every node with an image names one that maps to a
// umlkit image preset.
func TestExamplesLoad(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("..", "..", "examples", "*", "lab.conf"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, conf := range dirs {
		dir := filepath.Dir(conf)
		l, err := Load(dir)
		if err != nil {
			t.Errorf("Load(%s): %v", dir, err)
			continue
		}
		if len(l.Warnings) != 0 {
			t.Errorf("%s: warnings %v", dir, l.Warnings)
		}
		for _, n := range l.Nodes {
			if want := ImageFor(n.Image); n.Image != "" && want != "minimal" && image.Presets[want] == nil {
				t.Errorf("%s: %s[image]=%s maps to %s, which no preset builds", dir, n.Name, n.Image, want)
			}
		}
		path := filepath.Join(dir, "_test", "checks")
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		checks, err := ParseChecks(path, b)
		if err != nil {
			t.Errorf("%v", err)
		}
		for _, c := range checks {
			if l.Node(c.Node) == nil {
				t.Errorf("%s:%d: no node %s", path, c.Line, c.Node)
			}
		}
	}
}
