// Package bench measures umlkit against its peers; `make bench` prints
// each comparison as a table.
package bench

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

// BenchmarkImageBuildMinimal is the time to build the minimal image.
func BenchmarkImageBuildMinimal(b *testing.B) {
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		if err := image.BuildMinimal(context.Background(), filepath.Join(dir, "root_fs"), image.MinimalOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBootToShell is the time from starting the kernel to the
// minimal image's shell being ready, over a fresh COW file each time.
func BenchmarkBootToShell(b *testing.B) {
	umltest.Image(b)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		vm := umltest.Boot(b, umltest.Options{Umid: "bench-boot"})
		total += time.Since(start)
		vm.Poweroff()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/boot")
}
