package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/umlkit/umlkit/cow"
)

// The COW merge benchmark: a COW file over a 1 GiB backing file, merged
// into a new image by umlkit, by uml_moo, and copied by cp --sparse=always
// (the same-sized merged image), each run on the same files in the same
// iteration, in every order in turn (use -benchtime 6x or more). Each
// reported time is the median seconds per merge, wall clock and CPU (user
// plus system); the ratios are against cp. umlkit merges without the final
// fsync, like the other two, except in the Synced case, where each output
// is fsynced before the clock stops (`umlkit cow merge` syncs by default).

const (
	mergeSize = 1 << 30
	pageSize  = 4096
)

// pagePattern fills buf with non-zero data that differs from page to
// page (a random MiB, stamped with each page's number and a seed): cheap
// to make, and no block of it is zero.
var randomMiB = func() []byte {
	b := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(b)
	return b
}()

func pagePattern(buf []byte, off, seed int64) {
	copy(buf, randomMiB)
	for p := 0; p+16 <= len(buf); p += pageSize {
		binary.LittleEndian.PutUint64(buf[p:], uint64(off+int64(p))|1)
		binary.LittleEndian.PutUint64(buf[p+8:], uint64(seed))
	}
}

// pageRuns marks the 4 KiB pages the 50% COW file holds: alternating runs
// of 1 to 32 pages from a fixed generator, like a guest's writeback.
var pageRuns = func() []bool {
	n := mergeSize / pageSize
	r := rand.New(rand.NewSource(50))
	out := make([]bool, n)
	on := false
	for i := 0; i < n; {
		l := 1 + r.Intn(32)
		for j := 0; j < l && i < n; j++ {
			out[i] = on
			i++
		}
		on = !on
	}
	return out
}()

// cowCase is one shape of disk: which MiB of the backing file hold data
// (the others are holes) and which 4 KiB pages the COW file holds.
type cowCase struct {
	name        string
	backingData func(mib int64) bool
	changed     func(page int64) bool
	synced      bool // each contender's output is fsynced, timed
}

var (
	half       = cowCase{"50", func(int64) bool { return true }, func(p int64) bool { return pageRuns[p] }, false}
	full       = cowCase{"100", func(int64) bool { return true }, func(int64) bool { return true }, false}
	fullSynced = cowCase{"100s", full.backingData, full.changed, true}
	// sparse is a fresh file system image: a quarter of it data, the rest
	// holes, with the guest's changes (the 50% pattern) in its first
	// 256 MiB.
	sparse = cowCase{"sparse", func(mib int64) bool { return mib%4 == 0 },
		func(p int64) bool { return p < (256<<20)/pageSize && pageRuns[p] }, false}
)

type cowFixture struct {
	dir, backing, cow string
	image             string // the merged image, for cp
}

// newCowFixture builds the backing file, the COW file and the merged image
// in $UMLKIT_BENCH_DIR (default: the temporary directory; /dev/shm takes
// the disk out of the comparison), removed when the benchmark ends.
func newCowFixture(b *testing.B, c cowCase) *cowFixture {
	b.Helper()
	dir, err := os.MkdirTemp(os.Getenv("UMLKIT_BENCH_DIR"), "cowbench"+c.name+"-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	fx := &cowFixture{dir: dir, backing: filepath.Join(dir, "backing.img"), cow: filepath.Join(dir, "disk.cow"),
		image: filepath.Join(dir, "image.img")}
	if err := fx.build(c); err != nil {
		b.Fatal(err)
	}
	return fx
}

func (fx *cowFixture) build(c cowCase) error {
	f, err := os.Create(fx.backing)
	if err != nil {
		return err
	}
	if err := f.Truncate(mergeSize); err != nil {
		f.Close()
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < mergeSize; off += int64(len(buf)) {
		if !c.backingData(off >> 20) {
			continue
		}
		pagePattern(buf, off, 1)
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if _, err := cow.Create(fx.cow, fx.backing, cow.CreateOptions{}); err != nil {
		return err
	}
	d, err := cow.Open(fx.cow, cow.OpenOptions{Write: true})
	if err != nil {
		return err
	}
	defer d.Close()
	pages := int64(len(buf)) / pageSize
	for off := int64(0); off < mergeSize; off += int64(len(buf)) {
		pagePattern(buf, off, 2)
		for p := int64(0); p < pages; {
			if !c.changed(off/pageSize + p) {
				p++
				continue
			}
			e := p
			for e < pages && c.changed(off/pageSize+e) {
				e++
			}
			if _, err := d.WriteAt(buf[p*pageSize:e*pageSize], off+p*pageSize); err != nil {
				return err
			}
			p = e
		}
	}
	return cow.Merge(context.Background(), d, fx.image, cow.MergeOptions{NoSync: true})
}

func runMerge(b *testing.B, c cowCase) {
	for _, tool := range []string{"uml_moo", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s not found: run scripts/setup (make bench does)", tool)
		}
	}
	fx := newCowFixture(b, c)
	out := filepath.Join(fx.dir, "out.img")
	// Each contender returns the CPU time (user and system) it used: on a
	// shared machine that varies less than the wall-clock time.
	command := func(name string, args ...string) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			cmd := exec.Command(name, args...)
			if out, err := cmd.CombinedOutput(); err != nil {
				return 0, fmt.Errorf("%w: %s", err, out)
			}
			cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			if c.synced {
				before := selfCPU()
				if err := syncFile(out); err != nil {
					return 0, err
				}
				cpu += selfCPU() - before
			}
			return cpu, nil
		}
	}
	contenders := []struct {
		name string
		run  func() (time.Duration, error)
	}{
		{"cp", command("cp", "--sparse=always", fx.image, out)},
		{"uml_moo", command("uml_moo", fx.cow, out)},
		{"umlkit", func() (time.Duration, error) {
			before := selfCPU()
			err := umlkitMerge(fx.cow, out, c.synced)
			return selfCPU() - before, err
		}},
	}
	times, cpus := map[string][]float64{}, map[string][]float64{}
	orders := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Cycle through every order: a run is slower after some others
		// (uml_moo's output leaves the host busy), so each contender must
		// follow each other one equally often.
		for _, j := range orders[i%len(orders)] {
			c := contenders[j]
			b.StopTimer()
			os.Remove(out)
			syscall.Sync() // start each run without another's dirty pages
			b.StartTimer()
			start := time.Now()
			cpu, err := c.run()
			if err != nil {
				b.Fatalf("%s: %v", c.name, err)
			}
			times[c.name] = append(times[c.name], time.Since(start).Seconds())
			cpus[c.name] = append(cpus[c.name], cpu.Seconds())
		}
	}
	b.StopTimer()
	os.Remove(out)
	// Medians: the machine may be busy with other work.
	median := func(v []float64) float64 {
		t := slices.Clone(v)
		slices.Sort(t)
		return t[len(t)/2]
	}
	secs := func(n string) float64 { return median(times[n]) }
	cpu := func(n string) float64 { return median(cpus[n]) }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(secs("umlkit"), "umlkit-s")
	b.ReportMetric(secs("uml_moo"), "uml_moo-s")
	b.ReportMetric(secs("cp"), "cp-s")
	b.ReportMetric(secs("umlkit")/secs("cp"), "umlkit/cp")
	b.ReportMetric(secs("uml_moo")/secs("cp"), "uml_moo/cp")
	b.ReportMetric(cpu("umlkit"), "umlkit-cpu-s")
	b.ReportMetric(cpu("uml_moo"), "uml_moo-cpu-s")
	b.ReportMetric(cpu("cp"), "cp-cpu-s")
	b.ReportMetric(cpu("umlkit")/cpu("cp"), "umlkit/cp-cpu")
}

func umlkitMerge(cowPath, out string, sync bool) error {
	d, err := cow.Open(cowPath, cow.OpenOptions{})
	if err != nil {
		return err
	}
	defer d.Close()
	return cow.Merge(context.Background(), d, out, cow.MergeOptions{NoSync: !sync})
}

func syncFile(name string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCOWMerge50 merges a COW file holding half of a 1 GiB disk
// (runs of 1-32 pages).
func BenchmarkCOWMerge50(b *testing.B) { runMerge(b, half) }

// BenchmarkCOWMerge100 merges a COW file holding all of a 1 GiB disk.
func BenchmarkCOWMerge100(b *testing.B) { runMerge(b, full) }

// BenchmarkCOWMergeSparse merges a COW file over a backing file that is
// three quarters holes, as a fresh file system image is; cp, given the
// merged image, skips its holes too.
func BenchmarkCOWMergeSparse(b *testing.B) { runMerge(b, sparse) }

// BenchmarkCOWMergeSynced is BenchmarkCOWMerge100 with every output
// fsynced, as `umlkit cow merge` does by default.
func BenchmarkCOWMergeSynced(b *testing.B) { runMerge(b, fullSynced) }
