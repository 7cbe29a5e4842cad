package cow

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/umltest"
)

// newBacking writes a backing file of size bytes with a recognisable
// pattern and zero stretches, and gives it a fixed mtime.
func newBacking(t *testing.T, dir string, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewSource(int64(size)))
	rng.Read(b)
	clear(b[size/4 : size/2]) // a zero stretch, to exercise holes
	p := filepath.Join(dir, "backing.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000, 0)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func TestCreateLikeKernel(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 1<<20)
	cp := filepath.Join(dir, "a.cow")
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(dir)
	h, err := Create("a.cow", "backing.img", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := Absolutize(back)
	if h.Backing != abs || h.Size != 1<<20 || h.Mtime != 1700000000 || h.DataOffset() != 12288 {
		t.Errorf("Create = %+v (data at %d), want backing %s, size 1 MiB, mtime 1700000000, data at 12288", h, h.DataOffset(), abs)
	}
	st, err := os.Stat(cp)
	if err != nil || st.Size() != 1060864 {
		t.Fatalf("COW file size = %v, %v; want 1060864 (spec 1.3)", st, err)
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 64<<10 {
		t.Errorf("new COW file uses %d bytes of disk, want it sparse", blocks)
	}
	if _, err := Create(cp, back, CreateOptions{}); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("Create over an existing file = %v, want ErrExist and the --force hint", err)
	}
	// Force gives a fresh file even over one with data.
	d, err := Open(cp, OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	d.WriteAt(bytes.Repeat([]byte{1}, 4096), 0)
	d.Close()
	if _, err := Create(cp, back, CreateOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	d, err = Open(cp, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if n := d.ChangedSectors(); n != 0 {
		t.Errorf("forced Create kept %d changed sectors, want a fresh file", n)
	}
}

// A model-based test: random writes through WriteAt, compared with the
// same writes applied to an in-memory copy of the backing file.
func TestReadWriteModel(t *testing.T) {
	dir := t.TempDir()
	const size = 1<<20 + 3*512 + 100 // not a multiple of 512 nor of the chunk
	back, model := newBacking(t, dir, size)
	model = append(model, make([]byte, 512-100)...) // the disk rounds up
	cp := filepath.Join(dir, "m.cow")
	if _, err := Create(cp, back, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(cp, OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != int64(len(model)) {
		t.Fatalf("Size = %d, want %d", d.Size(), len(model))
	}
	rng := rand.New(rand.NewSource(1))
	written := map[int64]bool{}
	for i := 0; i < 200; i++ {
		off := rng.Int63n(int64(len(model)))
		n := rng.Intn(20000) + 1
		if off+int64(n) > int64(len(model)) {
			n = int(int64(len(model)) - off)
		}
		p := make([]byte, n)
		if i%5 == 0 {
			rng.Read(p)
		} else {
			for j := range p {
				p[j] = byte(i)
			}
		}
		if i%7 == 0 {
			clear(p) // zero data in the COW over non-zero backing
		}
		if _, err := d.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
		for s := off / 512; s <= (off+int64(n)-1)/512; s++ {
			written[s] = true
		}
	}
	got := make([]byte, len(model))
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("ReadAt after WriteAt differs from the model")
	}
	if n := d.ChangedSectors(); n != int64(len(written)) {
		t.Errorf("ChangedSectors = %d, want %d", n, len(written))
	}
	var total int64
	for _, r := range d.Allocated() {
		for s := r.Off / 512; s < (r.Off+r.Len)/512; s++ {
			if !written[s] {
				t.Fatalf("Allocated includes unwritten sector %d", s)
			}
		}
		total += r.Len
	}
	if total != int64(len(written))*512 {
		t.Errorf("Allocated covers %d bytes, want %d", total, len(written)*512)
	}
	d.Close()

	// Reopened, the bitmap on disk gives the same disk.
	d, err = Open(cp, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clear(got)
	d.ReadAt(got, 0)
	if !bytes.Equal(got, model) {
		t.Fatal("ReadAt after reopening differs from the model")
	}

	// Merge gives the model, sparse where zero.
	out := filepath.Join(dir, "merged.img")
	var last int64
	if err := Merge(context.Background(), d, out, MergeOptions{Progress: func(done, total int64) { last = done }}); err != nil {
		t.Fatal(err)
	}
	if err := Merge(context.Background(), d, back, MergeOptions{}); err == nil || !strings.Contains(err.Error(), "--into-backing") {
		t.Errorf("Merge onto the backing file = %v, want a refusal", err)
	}
	d.Close()
	mb, _ := os.ReadFile(out)
	if !bytes.Equal(mb, model) || last != int64(len(model)) {
		t.Fatalf("Merge output (%d bytes, progress %d) differs from the model (%d bytes)", len(mb), last, len(model))
	}
	st, _ := os.Stat(out)
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used >= int64(len(model)) {
		t.Errorf("merged image uses %d bytes of disk for %d bytes with a zero quarter, want holes", used, len(model))
	}
	if ms, _ := filepath.Glob(filepath.Join(dir, ".merged*")); len(ms) != 0 {
		t.Errorf("temporary files left behind: %v", ms)
	}

	// Merge into the backing file: the backing file becomes the model,
	// the COW file stays a valid, empty overlay.
	if err := MergeIntoBacking(context.Background(), cp, IntoBackingOptions{}); err != nil {
		t.Fatal(err)
	}
	bb, _ := os.ReadFile(back)
	if !bytes.Equal(bb, model[:size]) {
		t.Fatal("backing file after MergeIntoBacking differs from the model")
	}
	d, err = Open(cp, OpenOptions{})
	if err != nil {
		t.Fatalf("Open after MergeIntoBacking = %v, want a valid COW file", err)
	}
	defer d.Close()
	if n := d.ChangedSectors(); n != 0 {
		t.Errorf("COW file after MergeIntoBacking has %d changed sectors, want 0", n)
	}
	clear(got)
	d.ReadAt(got, 0)
	// Bytes past the backing file's end cannot go into it.
	if !bytes.Equal(got[:size], model[:size]) {
		t.Fatal("disk after MergeIntoBacking differs from the model")
	}
	if _, err := os.Stat(cp + journalSuffix); !os.IsNotExist(err) {
		t.Errorf("journal left behind: %v", err)
	}
}

// A merge into the backing file interrupted after it changed the backing
// file is completed by running it again.
func TestMergeIntoBackingResume(t *testing.T) {
	dir := t.TempDir()
	back, model := newBacking(t, dir, 256<<10)
	cp := filepath.Join(dir, "r.cow")
	Create(cp, back, CreateOptions{})
	d, _ := Open(cp, OpenOptions{Write: true})
	p := bytes.Repeat([]byte("resume!!"), 4096)
	d.WriteAt(p, 8192)
	copy(model[8192:], p)
	d.Close()
	// Simulate the interruption: the journal is written and half the data
	// reached the backing file, changing its mtime.
	h, _ := ReadHeader(cp)
	os.WriteFile(cp+journalSuffix, []byte("backing="+h.Backing+"\nsize=262144\nmtime=1700000000\n"), 0o644)
	f, _ := os.OpenFile(back, os.O_WRONLY, 0)
	f.WriteAt(p[:len(p)/2], 8192)
	f.Close()
	if _, err := Open(cp, OpenOptions{}); !errors.Is(err, ErrBackingChanged) {
		t.Fatalf("Open of the half-merged COW = %v, want ErrBackingChanged", err)
	}
	if err := MergeIntoBacking(context.Background(), cp, IntoBackingOptions{}); err != nil {
		t.Fatalf("rerun of the interrupted merge = %v", err)
	}
	bb, _ := os.ReadFile(back)
	if !bytes.Equal(bb, model) {
		t.Fatal("backing file after the resumed merge differs from the model")
	}
	d, err := Open(cp, OpenOptions{})
	if err != nil {
		t.Fatalf("Open after the resumed merge = %v", err)
	}
	d.Close()
}

func TestBackingChanged(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 64<<10)
	cp := filepath.Join(dir, "t.cow")
	Create(cp, back, CreateOptions{})
	mt := time.Unix(1700000999, 0)
	os.Chtimes(back, mt, mt)
	_, err := Open(cp, OpenOptions{})
	var be *BackingError
	if !errors.As(err, &be) || !errors.Is(err, ErrBackingChanged) {
		t.Fatalf("Open with a touched backing file = %v, want *BackingError", err)
	}
	if be.HeaderMtime != 1700000000 || be.ActualMtime != 1700000999 {
		t.Errorf("BackingError times = %d, %d; want 1700000000, 1700000999", be.HeaderMtime, be.ActualMtime)
	}
	msg := err.Error()
	for _, want := range []string{"1700000000", "1700000999", "umlkit cow rebase --refresh-mtime " + cp} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	in, err := Stat(cp)
	if err != nil || in.MtimeMatches || !in.SizeMatches || in.BackingError == "" {
		t.Errorf("Stat = %+v, %v; want the mtime mismatch reported", in, err)
	}
	if _, err := Rebase(context.Background(), cp, RebaseOptions{RefreshMtime: true}); err != nil {
		t.Fatal(err)
	}
	if d, err := Open(cp, OpenOptions{}); err != nil {
		t.Errorf("Open after rebase --refresh-mtime = %v", err)
	} else {
		d.Close()
	}
}

func TestRebase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	back, model := newBacking(t, dir, 128<<10)
	cp := filepath.Join(dir, "rb.cow")
	Create(cp, back, CreateOptions{})
	d, _ := Open(cp, OpenOptions{Write: true})
	d.WriteAt([]byte("guest data"), 1000)
	copy(model[1000:], "guest data")
	d.Close()

	// Moved with its times: only the path changes.
	moved := filepath.Join(dir, "moved.img")
	if err := os.Rename(back, moved); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(cp, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "umlkit cow rebase "+cp) {
		t.Errorf("Open with the backing file gone = %v, want the rebase hint", err)
	}
	res, err := Rebase(ctx, cp, RebaseOptions{NewBacking: moved})
	if err != nil || res.Compared || res.Copied != 0 {
		t.Fatalf("Rebase onto the moved file = %+v, %v; want a path change", res, err)
	}
	// Onto different content: the sectors that differ are copied, the
	// disk is unchanged.
	other := filepath.Join(dir, "other.img")
	ob := bytes.Clone(model)
	copy(ob[5000:], "changed in the new backing file")
	copy(ob[600:], "also under the guest's data")
	os.WriteFile(other, ob, 0o644)
	res, err = Rebase(ctx, cp, RebaseOptions{NewBacking: other})
	if err != nil || !res.Compared {
		t.Fatalf("safe Rebase = %+v, %v", res, err)
	}
	if res.Copied != 1 {
		t.Errorf("safe Rebase copied %d sectors, want 1 (sector 9; sector 1 is the guest's)", res.Copied)
	}
	d, err = Open(cp, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := make([]byte, len(model))
	d.ReadAt(got, 0)
	if !bytes.Equal(got, model) || d.BackingPath() != other {
		t.Errorf("disk after safe rebase differs from before (backing %s)", d.BackingPath())
	}
	short := filepath.Join(dir, "short.img")
	os.WriteFile(short, model[:4096], 0o644)
	if _, err := Rebase(ctx, cp, RebaseOptions{NewBacking: short}); err == nil || !strings.Contains(err.Error(), "same size") {
		t.Errorf("Rebase onto a smaller file = %v, want a size refusal", err)
	}
}

// A POSIX lock (what the kernel takes) makes Open, Merge and Rebase refuse
// with ErrInUse naming the holder.
func TestInUse(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 64<<10)
	cp := filepath.Join(dir, "l.cow")
	Create(cp, back, CreateOptions{})
	// POSIX locks belong to the process and vanish when it closes any
	// descriptor of the file, so another process must hold it.
	holder := exec.Command(os.Args[0], "-test.run=^$")
	holder.Env = append(os.Environ(), "COW_TEST_LOCK="+cp)
	holder.Args = append(holder.Args, "umid=holder-vm")
	in, _ := holder.StdinPipe()
	out, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); holder.Wait() }()
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("lock holder said %q", line)
	}
	pid := holder.Process.Pid
	_, err := Open(cp, OpenOptions{})
	var iu *InUseError
	if !errors.As(err, &iu) || !errors.Is(err, ErrInUse) || iu.PID != pid || iu.Umid != "holder-vm" {
		t.Fatalf("Open of a locked COW = %v, want ErrInUse naming holder-vm (pid %d)", err, pid)
	}
	if !strings.Contains(err.Error(), "instance holder-vm (pid") {
		t.Errorf("error %q does not name the instance", err)
	}
	if _, err := Rebase(context.Background(), cp, RebaseOptions{RefreshMtime: true}); !errors.Is(err, ErrInUse) {
		t.Errorf("Rebase of a locked COW = %v, want ErrInUse", err)
	}
	if err := MergeIntoBacking(context.Background(), cp, IntoBackingOptions{}); !errors.Is(err, ErrInUse) {
		t.Errorf("MergeIntoBacking of a locked COW = %v, want ErrInUse", err)
	}
	if p, err := Probe(cp, false); err != nil || p == nil || p.PID != pid {
		t.Errorf("Probe = %v, %v; want the holder", p, err)
	}
	in.Close()
	holder.Wait()
	// Two umlkit writers exclude each other too (OFD locks).
	d1, err := Open(cp, OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if _, err := Open(cp, OpenOptions{Write: true}); !errors.Is(err, ErrInUse) {
		t.Errorf("second writer = %v, want ErrInUse", err)
	}
}

func TestFindCOWs(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 64<<10)
	for _, n := range []string{"a.cow", "b.cow", "c.cow"} {
		if _, err := Create(filepath.Join(dir, n), back, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	other := filepath.Join(dir, "other.img")
	os.WriteFile(other, make([]byte, 4096), 0o644)
	Create(filepath.Join(dir, "d.cow"), other, CreateOptions{})
	os.WriteFile(filepath.Join(dir, "junk"), []byte("x"), 0o644)
	got, err := FindCOWs(back, []string{dir}, filepath.Join(dir, "a.cow"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "b.cow"), filepath.Join(dir, "c.cow")}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("FindCOWs = %v, want %v", got, want)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	back, _ := newBacking(t, dir, 64<<10)
	cp := filepath.Join(dir, "c.cow")
	Create(cp, back, CreateOptions{})
	if ps, err := Check(cp); err != nil || len(ps) != 0 {
		t.Errorf("Check(fresh) = %v, %v; want no problems", ps, err)
	}
	d, _ := Open(cp, OpenOptions{Write: true})
	d.WriteAt(make([]byte, 4096), 60<<10)
	h := d.Header()
	d.Close()
	os.Truncate(cp, h.DataOffset()+32<<10)
	ps, err := Check(cp)
	if err != nil || len(ps) != 1 || !ps[0].Fatal || ps[0].Offset != h.BitmapOffset()+120/8 || !strings.Contains(ps[0].Message, "sectors 120-127") {
		t.Errorf("Check(truncated) = %+v, %v; want sectors 120-127 past the end at the bitmap byte", ps, err)
	}
	if ps, _ := Check("testdata/bad-align0.hdr"); len(ps) != 1 || ps[0].Offset != 24 {
		t.Errorf("Check(bad-align0) = %+v, want one problem at offset 24", ps)
	}
}

// TestMain runs the tests with umltest (kernel tests boot the real
// kernel), and doubles as a lock holder for TestInUse: with COW_TEST_LOCK set
// it takes a POSIX write lock, as the kernel does, and holds it until its
// stdin closes.
func TestMain(m *testing.M) {
	if p := os.Getenv("COW_TEST_LOCK"); p != "" {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			panic(err)
		}
		lk := syscall.Flock_t{Type: syscall.F_WRLCK}
		if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
			panic(err)
		}
		os.Stdout.WriteString("locked\n")
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	umltest.Main(m)
}
