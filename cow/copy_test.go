package cow

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mergeModes are the ways copyDisk can get at the sources: mapped (with
// windows of the normal size, or of two pieces so that they move often,
// and writeback started every piece), read with pread, or mapped until
// mmap fails and then read.
var mergeModes = []struct {
	name  string
	setup func(t *testing.T)
}{
	{"mapped", func(t *testing.T) {}},
	{"small steps", func(t *testing.T) {
		oldWin, oldStep := windowSize, writebackStep
		windowSize, writebackStep = 2*pieceSize, pieceSize
		t.Cleanup(func() { windowSize, writebackStep = oldWin, oldStep })
	}},
	{"read", func(t *testing.T) {
		forceRead = true
		t.Cleanup(func() { forceRead = false })
	}},
	{"mmap fails", func(t *testing.T) {
		old := mmap
		mmap = func(fd int, offset int64, length int, prot int, flags int) ([]byte, error) {
			return nil, unix.ENODEV
		}
		t.Cleanup(func() { mmap = old })
	}},
}

// dataBlocks reports, for each 4 KiB block of the file at p, whether the
// file system holds data there (SEEK_DATA) rather than a hole.
func dataBlocks(t *testing.T, p string) []bool {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	blocks := make([]bool, (st.Size()+blockSize-1)/blockSize)
	for off := int64(0); off < st.Size(); {
		ds, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA %s: %v", p, err)
		}
		he, err := unix.Seek(int(f.Fd()), ds, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE %s: %v", p, err)
		}
		for b := ds / blockSize; b*blockSize < he; b++ {
			blocks[b] = true
		}
		off = he
	}
	return blocks
}

// checkImage compares the image at p with model byte for byte, and checks
// that exactly its non-zero 4 KiB blocks are allocated.
func checkImage(t *testing.T, p string, model []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		at := 0
		for at < min(len(got), len(model)) && got[at] == model[at] {
			at++
		}
		t.Fatalf("merged image (%d bytes) differs from the model (%d bytes) at byte %d", len(got), len(model), at)
	}
	for b, data := range dataBlocks(t, p) {
		blk := model[b*blockSize : min((b+1)*blockSize, len(model))]
		if zero := isZero(blk); data == zero {
			t.Errorf("block %d (offset %d): allocated %v, but all zeros is %v; want holes exactly where the disk is zero", b, b*blockSize, data, zero)
		}
	}
}

// sparseBacking writes a backing file of size bytes that is mostly holes:
// data at the start, in the middle and up to its (unaligned) end, and a
// stretch of zeros written as data. It returns the file and its content.
func sparseBacking(t *testing.T, dir string, size int64) (string, []byte) {
	t.Helper()
	p := filepath.Join(dir, "backing.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	rng := rand.New(rand.NewSource(size))
	for _, r := range []Range{
		{0, 256 << 10},
		{1<<20 + 3*512, 100<<10 + 7*512}, // not block-aligned
		{2 << 20, 512 << 10},             // zeros written as data
		{size - 3000, 3000},              // up to the unaligned end
	} {
		b := model[r.Off : r.Off+r.Len]
		if r.Off != 2<<20 {
			rng.Read(b)
		}
		if _, err := f.WriteAt(b, r.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000, 0)
	os.Chtimes(p, mt, mt)
	return p, model
}

// A merge leaves the backing file's holes and every zero block unwritten,
// writes everything else, and gives the same image whichever way it reads
// the sources; also with changed sectors at the disk's end, a disk size
// that is not a multiple of 4096 (nor of 512), and uml_moo's whole-sector
// output.
func TestMergeSparseBacking(t *testing.T) {
	dir := t.TempDir()
	const size = 5<<20 + 3*512 + 100
	back, model := sparseBacking(t, dir, size)
	if blocks := dataBlocks(t, back); blocks[(3<<20)/blockSize] {
		t.Fatal("the test's backing file has no holes: this file system cannot run the test")
	}
	disk := append(model, make([]byte, 512-100)...) // the disk rounds up to a sector
	cp, d := createOpen(t, dir, "s.cow", back, true)
	rng := rand.New(rand.NewSource(7))
	write := func(off int64, n int, zero bool) {
		p := make([]byte, n)
		if !zero {
			rng.Read(p)
		}
		if _, err := d.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(disk[off:], p)
	}
	write(5*512, 512, false)             // one sector in a data block
	write(100<<10, 20<<10, true)         // zeros over data
	write(3<<20+512, 300<<10+512, false) // into a hole, unaligned both ends, several pieces long
	write(1<<20-1024, 2048, false)       // across a hole/data boundary
	write(4<<20, 8192, true)             // zeros over a hole
	write(size-1000, 600, false)         // the backing file's last sectors
	write(int64(len(disk))-512, 512, false)
	d.Close()

	for _, mode := range mergeModes {
		t.Run(mode.name, func(t *testing.T) {
			mode.setup(t)
			d, err := Open(cp, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			out := filepath.Join(t.TempDir(), "out.img")
			var last, calls int64
			progress := func(done, total int64) {
				if total != int64(len(disk)) || done < last {
					t.Errorf("progress(%d, %d) after %d; want it rising to %d", done, total, last, len(disk))
				}
				last = done
				calls++
			}
			if err := Merge(context.Background(), d, out, MergeOptions{Progress: progress}); err != nil {
				t.Fatal(err)
			}
			checkImage(t, out, disk)
			if last != int64(len(disk)) || calls < 2 {
				t.Errorf("progress ended at %d after %d calls, want %d", last, calls, len(disk))
			}
			// uml_moo's output: the backing size in whole sectors.
			if err := Merge(context.Background(), d, out, MergeOptions{Direct: true, NoSync: true, WholeSectors: true}); err != nil {
				t.Fatal(err)
			}
			checkImage(t, out, disk[:size/512*512])
		})
	}
}

// A disk whose every sector is in the COW file, with a size that is a
// multiple of 512 but not of 4096, over a dense backing file: the last
// partial block and piece are written, zero blocks in the COW are not.
func TestMergeFullCOW(t *testing.T) {
	dir := t.TempDir()
	const size = 3<<20 + 5*512
	back, _ := newBacking(t, dir, size)
	cp, d := createOpen(t, dir, "f.cow", back, true)
	disk := make([]byte, size)
	rand.New(rand.NewSource(3)).Read(disk)
	clear(disk[1<<20 : 1<<20+3*blockSize])
	clear(disk[size-512:])
	if _, err := d.WriteAt(disk, 0); err != nil {
		t.Fatal(err)
	}
	d.Close()
	mergeEachMode(t, cp, disk, nil)
}

// A version 2 COW file keeps its data at a 512-byte (not page) aligned
// offset: the mapping starts before it.
func TestMergeV2(t *testing.T) {
	dir := t.TempDir()
	const size = 2 << 20
	back, model := newBacking(t, dir, size)
	h := &Header{Version: 2, Backing: back, Mtime: 1700000000, Size: size, SectorSize: SectorSize, Alignment: SectorSize}
	if h.DataOffset()%pageSize == 0 {
		t.Fatalf("v2 data offset %d is page-aligned; the test needs one that is not", h.DataOffset())
	}
	hdr := make([]byte, headerV2Size)
	copy(hdr, []byte{0x4f, 0x4f, 0x4f, 0x4d, 0, 0, 0, 2})
	copy(hdr[8:], back)
	hdr[4104], hdr[4105], hdr[4106], hdr[4107] = byte(h.Mtime>>24), byte(h.Mtime>>16), byte(h.Mtime>>8), byte(h.Mtime)
	for i := 0; i < 8; i++ {
		hdr[4108+i] = byte(uint64(size) >> (56 - 8*i))
	}
	hdr[4118] = 512 >> 8
	bitmap := make([]byte, h.BitmapLen())
	data := make([]byte, size)
	rng := rand.New(rand.NewSource(2))
	for _, r := range []Range{{512, 512}, {8192, 70 << 10}, {256 << 10, 2 * pieceSize}, {1<<20 - 512, 4096 + 1024}, {size - 1536, 1536}} {
		rng.Read(data[r.Off : r.Off+r.Len])
		copy(model[r.Off:], data[r.Off:r.Off+r.Len])
		for s := r.Off / 512; s < (r.Off+r.Len)/512; s++ {
			bitmap[s/8] |= 1 << (s % 8)
		}
	}
	file := make([]byte, h.DataOffset()+size)
	copy(file, hdr)
	copy(file[h.BitmapOffset():], bitmap)
	copy(file[h.DataOffset():], data)
	cp := filepath.Join(dir, "v2.cow")
	if err := os.WriteFile(cp, file, 0o644); err != nil {
		t.Fatal(err)
	}
	mergeEachMode(t, cp, model, func(t *testing.T, d *Disk) {
		if v := d.Header().Version; v != 2 {
			t.Fatalf("opened as version %d, want 2", v)
		}
	})
}

// mergeEachMode merges the COW file cp into a new image in each of
// mergeModes and checks the image holds want; check, when set, looks at
// the opened disk first.
func mergeEachMode(t *testing.T, cp string, want []byte, check func(*testing.T, *Disk)) {
	t.Helper()
	for _, mode := range mergeModes {
		t.Run(mode.name, func(t *testing.T) {
			mode.setup(t)
			d, err := Open(cp, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if check != nil {
				check(t, d)
			}
			out := filepath.Join(t.TempDir(), "out.img")
			if err := Merge(context.Background(), d, out, MergeOptions{NoSync: true}); err != nil {
				t.Fatal(err)
			}
			checkImage(t, out, want)
		})
	}
}

// A COW file cut short inside the data of set sectors gives a
// *FormatError naming it, and no output, whichever way it is read.
func TestMergeTruncatedCOW(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 1<<20)
	cp := filepath.Join(dir, "t.cow")
	h, err := Create(cp, back, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := Open(cp, OpenOptions{Write: true})
	d.WriteAt(bytes.Repeat([]byte{7}, 64<<10), 512<<10)
	d.Close()
	if err := os.Truncate(cp, h.DataOffset()+512<<10+1000); err != nil {
		t.Fatal(err)
	}
	for _, mode := range mergeModes {
		t.Run(mode.name, func(t *testing.T) {
			mode.setup(t)
			d, err := Open(cp, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			out := filepath.Join(t.TempDir(), "out.img")
			err = Merge(context.Background(), d, out, MergeOptions{})
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Path != cp || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("Merge of a truncated COW = %v, want a *FormatError for %s", err, cp)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output after a failed merge: %v, want none", err)
			}
		})
	}
}

// A backing file that shrinks while it is mapped faults on access: the
// merge returns an error instead of crashing, and leaves no output.
func TestMergeBackingShrinks(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 4<<20)
	_, d := createOpen(t, dir, "x.cow", back, false)
	out := filepath.Join(dir, "out.img")
	truncated := false
	err := Merge(context.Background(), d, out, MergeOptions{Progress: func(done, total int64) {
		if !truncated {
			truncated = true
			if err := os.Truncate(back, 0); err != nil {
				t.Error(err)
			}
		}
	}})
	if err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Fatalf("Merge while the backing file shrinks = %v, want an error saying so", err)
	}
	if ms, _ := filepath.Glob(filepath.Join(dir, "*out.img*")); len(ms) != 0 {
		t.Errorf("files left behind: %v", ms)
	}
}

// A cancelled context stops the merge and leaves no output.
func TestMergeCancel(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 4<<20)
	_, d := createOpen(t, dir, "c.cow", back, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := filepath.Join(dir, "out.img")
	err := Merge(ctx, d, out, MergeOptions{Progress: func(done, total int64) {
		if done >= total {
			t.Error("the merge ran to the end after its context was cancelled")
		}
		cancel()
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Merge with a cancelled context = %v, want context.Canceled", err)
	}
	if ms, _ := filepath.Glob(filepath.Join(dir, "*out.img*")); len(ms) != 0 {
		t.Errorf("files left behind: %v", ms)
	}
}

// A merge into the backing file that starts writeback as it goes (here
// every 4 KiB) gives the same backing file.
func TestMergeIntoBackingWriteback(t *testing.T) {
	old := writebackStep
	writebackStep = blockSize
	t.Cleanup(func() { writebackStep = old })
	dir := t.TempDir()
	back, model := newBacking(t, dir, 1<<20)
	cp, d := createOpen(t, dir, "w.cow", back, true)
	rng := rand.New(rand.NewSource(5))
	for _, r := range []Range{{512, 512}, {8192, 300 << 10}, {600 << 10, 5000}, {1<<20 - 4096, 4096}} {
		p := make([]byte, r.Len)
		rng.Read(p)
		if _, err := d.WriteAt(p, r.Off); err != nil {
			t.Fatal(err)
		}
		copy(model[r.Off:], p)
	}
	d.Close()
	if err := MergeIntoBacking(context.Background(), cp, IntoBackingOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, model) {
		t.Fatal("backing file after MergeIntoBacking differs from the model")
	}
}

// createOpen creates the COW file name in dir over back and opens it
// (for writing when write), closing it when the test ends.
func createOpen(t *testing.T, dir, name, back string, write bool) (string, *Disk) {
	t.Helper()
	cp := filepath.Join(dir, name)
	if _, err := Create(cp, back, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(cp, OpenOptions{Write: write})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return cp, d
}
