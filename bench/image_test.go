package bench

import (
	"context"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/umltest"
)

// BenchmarkImageBuildMinimalUmlkit is `umlkit image build minimal`: the
// minimal image with umlkit as init and agent (goal: under 2 s).
func BenchmarkImageBuildMinimalUmlkit(b *testing.B) {
	bin := umltest.Umlkit(b)
	dir := b.TempDir()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := image.BuildMinimal(context.Background(), filepath.Join(dir, "root_fs"), image.MinimalOptions{Umlkit: bin}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(b.N), "ms/build")
}

// BenchmarkExecRoundTrip runs `true` in a running instance through the
// exec agent, over and over, and reports the median and 99th percentile
// round trip (goal: p50 under 20 ms).
func BenchmarkExecRoundTrip(b *testing.B) {
	vm := umltest.Boot(b, umltest.Options{Umid: "bench-exec", Image: umltest.AgentImage(b), Agent: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := agent.NewClient(ctx, vm.AgentConn)
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	runs := b.N * 20
	if runs < 200 {
		runs = 200
	}
	times := make([]time.Duration, 0, runs)
	b.ResetTimer()
	for i := 0; i < runs; i++ {
		start := time.Now()
		st, err := c.Run(context.Background(), agent.Cmd{Argv: []string{"true"}})
		if err != nil || st.Code != 0 {
			b.Fatalf("true in the guest: %+v, %v", st, err)
		}
		times = append(times, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(times[len(times)/2]), "ms-p50")
	b.ReportMetric(ms(times[len(times)*99/100]), "ms-p99")
	b.ReportMetric(float64(runs), "runs")
	vm.Poweroff()
}
