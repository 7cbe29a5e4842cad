package cli

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umlkit/umlkit/cow"
)

// peer returns the path of a uml-utilities program; they are the
// reference these drop-ins are checked against.
func peer(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install uml-utilities (make test runs scripts/setup, which does)", name)
	}
	return p
}

func writeImage(t *testing.T, path string, size int, seed int64) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(b)
	clear(b[size/2 : size/2+size/8])
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000+seed, 0)
	os.Chtimes(path, mt, mt)
	return b
}

func blocks(t *testing.T, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks
}

// uml_mkcow and our drop-in produce files that parse to the same fields,
// and each tool reads the other's files.
func TestUmlMkcowInterop(t *testing.T) {
	mkcow := peer(t, "uml_mkcow")
	moo := peer(t, "uml_moo")
	dir := t.TempDir()
	back := filepath.Join(dir, "root_fs")
	writeImage(t, back, 1<<20, 1)
	theirs, ours := filepath.Join(dir, "theirs.cow"), filepath.Join(dir, "ours.cow")
	if out, err := exec.Command(mkcow, theirs, back).CombinedOutput(); err != nil {
		t.Fatalf("uml_mkcow: %v %s", err, out)
	}
	if _, errOut, code := runArgs(t, Tools(), "uml_mkcow", ours, back); code != 0 {
		t.Fatalf("our uml_mkcow = %d %s", code, errOut)
	}
	ht, err1 := cow.ReadHeader(theirs)
	ho, err2 := cow.ReadHeader(ours)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if d := cmp.Diff(ht, ho); d != "" {
		t.Errorf("headers differ (-uml_mkcow +ours):\n%s", d)
	}
	st1, _ := os.Stat(theirs)
	st2, _ := os.Stat(ours)
	if st1.Size() != st2.Size() {
		t.Errorf("file sizes %d (uml_mkcow) vs %d (ours)", st1.Size(), st2.Size())
	}
	// Write into both through our library, then let each tool merge the
	// other's file: same image.
	for _, p := range []string{theirs, ours} {
		d, err := cow.Open(p, cow.OpenOptions{Write: true})
		if err != nil {
			t.Fatal(err)
		}
		d.WriteAt(bytes.Repeat([]byte("interop!"), 1000), 70000)
		d.Close()
	}
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	if out, err := exec.Command(moo, ours, a).CombinedOutput(); err != nil {
		t.Fatalf("uml_moo on our COW: %v %s", err, out)
	}
	if _, errOut, code := runArgs(t, Tools(), "uml_moo", theirs, b); code != 0 {
		t.Fatalf("our uml_moo on uml_mkcow's COW = %d %s", code, errOut)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) || len(ab) != 1<<20 {
		t.Errorf("uml_moo(ours) and our uml_moo(theirs) differ (%d vs %d bytes)", len(ab), len(bb))
	}
	for _, p := range []string{a, b} { // count blocks once written back
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		f.Sync()
		f.Close()
	}
	if blocks(t, b) > blocks(t, a) {
		t.Errorf("our uml_moo output uses %d blocks, uml_moo's %d", blocks(t, b), blocks(t, a))
	}
}

// The drop-ins' messages and exit codes follow the originals.
func TestUmlToolsErrors(t *testing.T) {
	mkcow := peer(t, "uml_mkcow")
	dir := t.TempDir()
	back := filepath.Join(dir, "root_fs")
	writeImage(t, back, 64<<10, 2)
	c := filepath.Join(dir, "x.cow")
	if out, err := exec.Command(mkcow, c, back).CombinedOutput(); err != nil {
		t.Fatalf("uml_mkcow: %v %s", err, out)
	}
	mt := time.Unix(1800000000, 0)
	os.Chtimes(back, mt, mt)
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, make([]byte, 8192), 0o644)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("OOOM"), 0o644)
	v7 := filepath.Join(dir, "v7")
	os.WriteFile(v7, append([]byte("OOOM\x00\x00\x00\x07"), make([]byte, 5000)...), 0o644)
	trunc := filepath.Join(dir, "trunc")
	os.WriteFile(trunc, append([]byte("OOOM\x00\x00\x00\x03"), bytes.Repeat([]byte{1}, 100)...), 0o644)
	align0, err := os.ReadFile("../../cow/testdata/bad-align0.hdr")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "align0"), align0, 0o644)
	for _, tc := range []struct {
		tool string
		args []string
	}{
		{"uml_mkcow", nil},
		{"uml_mkcow", []string{"-f"}},
		{"uml_mkcow", []string{c, back}},
		{"uml_mkcow", []string{filepath.Join(dir, "new.cow"), filepath.Join(dir, "missing")}},
		{"uml_moo", nil},
		{"uml_moo", []string{"-d"}},
		{"uml_moo", []string{c}},
		{"uml_moo", []string{c, filepath.Join(dir, "out")}},
		{"uml_moo", []string{"-d", c}},
		{"uml_moo", []string{filepath.Join(dir, "nope.cow"), filepath.Join(dir, "out")}},
		{"uml_moo", []string{plain, filepath.Join(dir, "out")}},
		{"uml_moo", []string{short, filepath.Join(dir, "out")}},
		{"uml_moo", []string{v7, filepath.Join(dir, "out")}},
		{"uml_moo", []string{trunc, filepath.Join(dir, "out")}},
		// The originals crash on these (SIGSEGV, SIGFPE); ours exit 1 with
		// the usage or the kernel's message.
		{"uml_moo", []string{"-d"}},
		{"uml_moo", []string{filepath.Join(dir, "align0"), filepath.Join(dir, "out")}},
	} {
		cmd := exec.Command(peer(t, tc.tool), tc.args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		wantCode := 0
		if ee, ok := err.(*exec.ExitError); ok {
			wantCode = ee.ExitCode()
		}
		os.Remove(filepath.Join(dir, "new.cow"))
		wantOut := strings.ReplaceAll(stdout.String(), peer(t, tc.tool), tc.tool)
		wantErr := strings.ReplaceAll(stderr.String(), peer(t, tc.tool), tc.tool)
		gotOut, gotErr, code := runArgs(t, Tools(), append([]string{tc.tool}, tc.args...)...)
		if _, err := os.Stat(filepath.Join(dir, "new.cow")); err == nil {
			t.Errorf("%s %q left a COW file behind after failing", tc.tool, tc.args)
			os.Remove(filepath.Join(dir, "new.cow"))
		}
		if wantCode < 0 { // the original died of a signal
			if code != 1 || gotOut+gotErr == "" {
				t.Errorf("%s %q = %d %q %q; want exit 1 with a message", tc.tool, tc.args, code, gotOut, gotErr)
			}
			continue
		}
		if code != wantCode || gotErr != wantErr || gotOut != wantOut {
			t.Errorf("%s %q = %d, stdout %q, stderr %q; the original gives %d, %q, %q", tc.tool, tc.args, code, gotOut, gotErr, wantCode, wantOut, wantErr)
		}
	}
}

func TestCowCommands(t *testing.T) {
	dir := t.TempDir()
	back := filepath.Join(dir, "root_fs")
	img := writeImage(t, back, 1<<20, 3)
	c := filepath.Join(dir, "a.cow")
	if out, errOut, code := runArgs(t, nil, "umlkit", "cow", "create", c, back); code != 0 || !strings.Contains(out, "created") {
		t.Fatalf("cow create = %d %q %q", code, out, errOut)
	}
	if _, errOut, code := runArgs(t, nil, "umlkit", "cow", "create", c, back); code != 1 || !strings.Contains(errOut, "--force") {
		t.Errorf("cow create over an existing file = %d %q, want a refusal naming --force", code, errOut)
	}
	d, _ := cow.Open(c, cow.OpenOptions{Write: true})
	d.WriteAt(bytes.Repeat([]byte{7}, 8192), 4096)
	d.Close()
	copy(img[4096:], bytes.Repeat([]byte{7}, 8192))

	out, _, code := runArgs(t, nil, "umlkit", "cow", "info", "--json", c)
	var in cow.Info
	if err := json.Unmarshal([]byte(out), &in); err != nil || code != 0 {
		t.Fatalf("cow info --json = %d %q (%v)", code, out, err)
	}
	if in.ChangedSectors != 16 || in.ChangedBytes != 8192 || !in.SizeMatches || !in.MtimeMatches || in.DiskUsage == 0 || in.DataOffset != 12288 {
		t.Errorf("cow info = %+v; want 16 sectors changed, matching backing file, data at 12288", in)
	}
	if out, _, code := runArgs(t, nil, "umlkit", "cow", "check", c); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("cow check = %d %q", code, out)
	}

	merged := filepath.Join(dir, "merged.img")
	if _, errOut, code := runArgs(t, nil, "umlkit", "cow", "merge", c, merged); code != 0 {
		t.Fatalf("cow merge = %d %q", code, errOut)
	}
	if mb, _ := os.ReadFile(merged); !bytes.Equal(mb, img) {
		t.Error("cow merge output differs from the disk")
	}

	// Another COW over the same backing file blocks merging into it.
	other := filepath.Join(dir, "b.cow")
	runArgs(t, nil, "umlkit", "cow", "create", other, back)
	_, errOut, code := runArgs(t, nil, "umlkit", "cow", "merge", "--into-backing", c)
	if code != 1 || !strings.Contains(errOut, other) || !strings.Contains(errOut, "--force") {
		t.Errorf("merge --into-backing with another COW = %d %q, want a refusal listing %s", code, errOut, other)
	}
	if bb, _ := os.ReadFile(back); !bytes.Equal(bb[4096:12288], make([]byte, 8192)) && bytes.Equal(bb, img) {
		t.Error("the refused merge changed the backing file")
	}
	if _, errOut, code := runArgs(t, nil, "umlkit", "cow", "merge", "--into-backing", "--force", c); code != 0 {
		t.Fatalf("merge --into-backing --force = %d %q", code, errOut)
	}
	if bb, _ := os.ReadFile(back); !bytes.Equal(bb, img) {
		t.Error("backing file after merge --into-backing differs from the disk")
	}

	// The other COW is now stale: info and every command that opens it
	// say so, with both times and the fix.
	out, _, code = runArgs(t, nil, "umlkit", "cow", "info", other)
	if code != 1 || !strings.Contains(out, "MISMATCH") || !strings.Contains(out, "umlkit cow rebase --refresh-mtime "+other) {
		t.Errorf("cow info on a stale COW = %d %q", code, out)
	}
	_, errOut, code = runArgs(t, nil, "umlkit", "cow", "merge", other, filepath.Join(dir, "x.img"))
	if code != 1 || !strings.Contains(errOut, "1700000003") || !strings.Contains(errOut, "umlkit cow rebase --refresh-mtime") {
		t.Errorf("cow merge on a stale COW = %d %q, want both mtimes and the fix", code, errOut)
	}
	if _, errOut, code := runArgs(t, nil, "umlkit", "cow", "rebase", other); code != 1 || !strings.Contains(errOut, "--refresh-mtime") {
		t.Errorf("cow rebase without a new backing file = %d %q", code, errOut)
	}
	if out, errOut, code := runArgs(t, nil, "umlkit", "cow", "rebase", "--refresh-mtime", other); code != 0 || !strings.Contains(out, "mtime") {
		t.Errorf("cow rebase --refresh-mtime = %d %q %q", code, out, errOut)
	}
	if _, _, code := runArgs(t, nil, "umlkit", "cow", "check", other); code != 0 {
		t.Errorf("cow check after the refresh = %d", code)
	}
	help, _, _ := runArgs(t, nil, "umlkit", "cow", "rebase", "--help")
	if !strings.Contains(help, "RISK") {
		t.Errorf("rebase help does not say what --refresh-mtime risks:\n%s", help)
	}
}

// Old header versions, hand-made as the kernel lays them out, with data in
// a few sectors: uml_moo and umlkit merge them to the same image.
func TestOldVersionsAgainstUmlMoo(t *testing.T) {
	moo := peer(t, "uml_moo")
	dir := t.TempDir()
	back := filepath.Join(dir, "root_fs")
	const size = 64 << 10
	img := writeImage(t, back, size, 4)
	st, _ := os.Stat(back)
	mtime := uint32(st.ModTime().Unix())
	sectors := []int64{0, 5, 6, 127}
	for _, tc := range []struct {
		name   string
		header func() []byte
		bitmap int64 // bitmap offset
		data   int64 // data offset
	}{
		{"v1", func() []byte {
			b := make([]byte, 280)
			binary.BigEndian.PutUint32(b, cow.Magic)
			binary.BigEndian.PutUint32(b[4:], 1)
			copy(b[8:], back)
			binary.LittleEndian.PutUint32(b[264:], mtime)
			binary.LittleEndian.PutUint64(b[268:], size)
			binary.LittleEndian.PutUint32(b[276:], 512)
			return b
		}, 280, 512},
		{"v2", func() []byte {
			b := make([]byte, 4120)
			binary.BigEndian.PutUint32(b, cow.Magic)
			binary.BigEndian.PutUint32(b[4:], 2)
			copy(b[8:], back)
			binary.BigEndian.PutUint32(b[4104:], mtime)
			binary.BigEndian.PutUint64(b[4108:], size)
			binary.BigEndian.PutUint32(b[4116:], 512)
			return b
		}, 4120, 4608},
		{"v3-broken64", func() []byte {
			b := make([]byte, 4136)
			binary.BigEndian.PutUint32(b, cow.Magic)
			binary.BigEndian.PutUint32(b[4:], 3)
			binary.BigEndian.PutUint32(b[8:], mtime)
			binary.BigEndian.PutUint64(b[16:], size)
			binary.BigEndian.PutUint32(b[24:], 512)
			binary.BigEndian.PutUint32(b[28:], 4096)
			copy(b[36:], back)
			return b
		}, 8192, 12288},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := filepath.Join(dir, tc.name+".cow")
			f, err := os.Create(c)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(tc.header(), 0)
			want := bytes.Clone(img)
			bm := make([]byte, size/512/8)
			for _, s := range sectors {
				bm[s/8] |= 1 << (s % 8)
				sec := bytes.Repeat([]byte{byte(s + 1)}, 512)
				copy(sec, tc.name)
				f.WriteAt(sec, tc.data+s*512)
				copy(want[s*512:], sec)
			}
			f.WriteAt(bm, tc.bitmap)
			f.Truncate(tc.data + size)
			f.Close()
			h, err := cow.ReadHeader(c)
			if err != nil || h.BitmapOffset() != tc.bitmap || h.DataOffset() != tc.data {
				t.Fatalf("ReadHeader = %+v, %v; want bitmap at %d, data at %d", h, err, tc.bitmap, tc.data)
			}
			theirs, ours := filepath.Join(dir, tc.name+".moo"), filepath.Join(dir, tc.name+".ours")
			if out, err := exec.Command(moo, c, theirs).CombinedOutput(); err != nil {
				t.Fatalf("uml_moo: %v %s", err, out)
			}
			outText, errText, code := runArgs(t, nil, "umlkit", "cow", "merge", c, ours)
			if code != 0 {
				t.Fatalf("cow merge = %d %s %s", code, outText, errText)
			}
			tb, _ := os.ReadFile(theirs)
			ob, _ := os.ReadFile(ours)
			if !bytes.Equal(tb, want) || !bytes.Equal(ob, want) {
				t.Errorf("uml_moo output matches: %v; umlkit output matches: %v", bytes.Equal(tb, want), bytes.Equal(ob, want))
			}
		})
	}
}
