package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/internal/umltest"
)

// genLab writes a lab of n nodes on d domains (node i on domain i mod d),
// each with a startup script that sets its address.
func genLab(b *testing.B, n, d int) *Lab {
	b.Helper()
	dir := filepath.Join(umltest.ShortDir(b), "gen")
	os.MkdirAll(dir, 0o755)
	var conf strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&conf, "n%d[0]=D%d\n", i, i%d)
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("n%d.startup", i)),
			[]byte(fmt.Sprintf("ip addr add 10.%d.0.%d/24 dev eth0\nip link set eth0 up\n", i%d, i+1)), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "lab.conf"), []byte(conf.String()), 0o644)
	l, err := Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkLabUp20 brings up a lab of 20 nodes on 5 domains until every
// node is ready and its startup script has run, against the limit: twenty
// times one boot's CPU time divided by the cores; and times lab down.
func BenchmarkLabUp20(b *testing.B) {
	umltest.Kernel(b)
	b.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(b))
	img := umltest.AgentImage(b)
	o := Options{Exe: umltest.Umlkit(b), Image: func(context.Context, string) (string, error) { return img, nil }}
	ctx := context.Background()
	// One node alone: its kernel's CPU time until its startup has run.
	solo := genLab(b, 1, 1)
	if _, err := Up(ctx, solo, nil, o); err != nil {
		b.Fatal(err)
	}
	in, err := machine.Get(solo.Instance("n0"))
	if err != nil {
		b.Fatal(err)
	}
	one := umltest.CPUTime(in.State.PID)
	Crash(ctx, solo, nil, true, o)
	limit := time.Duration(int64(one) * 20 / int64(runtime.NumCPU()))
	var up, down time.Duration
	for i := 0; i < b.N; i++ {
		l := genLab(b, 20, 5)
		t0 := time.Now()
		res, err := Up(ctx, l, nil, o)
		if err != nil {
			b.Fatal(err)
		}
		up += time.Since(t0)
		for _, r := range res {
			if r.Err != nil || r.Startup == nil || *r.Startup != 0 {
				b.Fatalf("node %s: %v", r.Node, r.Err)
			}
		}
		t0 = time.Now()
		if err := Down(ctx, l, nil, true, o); err != nil {
			b.Fatal(err)
		}
		down += time.Since(t0)
	}
	b.ReportMetric(float64(up.Milliseconds())/float64(b.N), "up-ms")
	b.ReportMetric(float64(limit.Milliseconds()), "limit-ms")
	b.ReportMetric(float64(up)/float64(b.N)/float64(limit), "x-limit")
	b.ReportMetric(float64(down.Milliseconds())/float64(b.N), "down-ms")
}
