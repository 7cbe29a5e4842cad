package cow

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/umltest"
)

func fileBlocks(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks
}

// A COW file made by Create boots as the root disk (first given alone, so
// the kernel takes the backing file from our header, then as cow,backing);
// the guest's writes persist across reboots and land in the COW file only.
func TestKernelBootsOurCOW(t *testing.T) {
	img := umltest.Image(t)
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "root.cow")
	if _, err := Create(cp, img, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vm := umltest.Boot(t, umltest.Options{Root: cp, Umid: "cow-boot1"})
	// The minimal image's init remounts / before /proc is mounted, which
	// busybox mount cannot do, so / stays read-only: remount it here.
	if out, st := vm.Run("mount -o remount,rw /"); st != 0 {
		t.Fatalf("remount rw: %q %d", out, st)
	}
	if out, st := vm.Run("echo persisted-$((6*7)) > /root/marker && sync && ls /bin/busybox"); st != 0 {
		t.Fatalf("guest write: %q, status %d", out, st)
	}
	vm.Poweroff()
	d, err := Open(cp, OpenOptions{})
	if err != nil {
		t.Fatalf("Open after the kernel wrote to it: %v", err)
	}
	if d.ChangedSectors() == 0 {
		t.Error("the guest's writes did not reach the COW file")
	}
	d.Close()
	if ps, err := Check(cp); err != nil || len(ps) != 0 {
		t.Errorf("Check after the kernel wrote = %v, %v", ps, err)
	}
	vm = umltest.Boot(t, umltest.Options{Root: cp + "," + img, Umid: "cow-boot2"})
	if out, _ := vm.Run("cat /root/marker"); strings.TrimSpace(out) != "persisted-42" {
		t.Errorf("after reboot /root/marker = %q, want persisted-42", out)
	}
	vm.Poweroff()
	after, _ := os.ReadFile(img)
	if !bytes.Equal(before, after) {
		t.Error("the backing image changed")
	}

	// A safe rebase onto a different image keeps the disk: the new one
	// has its superblock and more zeroed, so a rebase that missed a
	// sector would not even mount.
	other := filepath.Join(filepath.Dir(cp), "other.img")
	changed := bytes.Clone(before)
	clear(changed[1024:2048])
	clear(changed[64<<10 : 256<<10])
	if err := os.WriteFile(other, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Rebase(context.Background(), cp, RebaseOptions{NewBacking: other})
	if err != nil || !res.Compared || res.Copied < 2 {
		t.Fatalf("safe Rebase = %+v, %v; want the differing sectors copied", res, err)
	}
	vm = umltest.Boot(t, umltest.Options{Root: cp, Umid: "cow-boot3"})
	if out, _ := vm.Run("cat /root/marker"); strings.TrimSpace(out) != "persisted-42" {
		t.Errorf("after the safe rebase /root/marker = %q, want persisted-42", out)
	}
	vm.Poweroff()
}

// The kernel creates and writes a COW file over a data disk; umlkit's
// merge and uml_moo's give the same bytes, umlkit's with no more blocks.
// Then a touched backing file is refused by the kernel and by Open, with
// both times and the fix; and a COW in use cannot be merged or rebased.
func TestKernelCOWInterop(t *testing.T) {
	moo, err := exec.LookPath("uml_moo")
	if err != nil {
		t.Fatal("uml_moo not found: install uml-utilities (scripts/setup does)")
	}
	dir := umltest.ShortDir(t)
	data := filepath.Join(dir, "data.img")
	b := bytes.Repeat([]byte("backing-data-pattern-0123456789\n"), (4<<20)/32)
	clear(b[1<<20 : 2<<20]) // a zero MiB, so holes matter
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000, 0)
	os.Chtimes(data, mt, mt)
	kc := filepath.Join(dir, "k.cow")
	vm := umltest.Boot(t, umltest.Options{Umid: "cow-kernel", Args: []string{"ubd1=" + kc + "," + data}})
	for _, cmd := range []string{
		"printf HELLO-FROM-UML | dd of=/dev/ubdb bs=512 seek=3 conv=notrunc,fsync",
		"dd if=/dev/zero of=/dev/ubdb bs=4096 seek=10 count=5 conv=fsync",      // zeros over data
		"dd if=/dev/urandom of=/dev/ubdb bs=4096 seek=300 count=40 conv=fsync", // into the zero MiB
		"dd if=/dev/zero of=/dev/ubdb bs=4096 seek=320 count=4 conv=fsync",     // zeros over zeros
		"dd if=/dev/urandom of=/dev/ubdb bs=4096 seek=1023 count=1 conv=fsync", // the last block
	} {
		if out, st := vm.Run(cmd); st != 0 {
			t.Fatalf("guest %q: %q, status %d", cmd, out, st)
		}
	}
	inGuest, _ := vm.Run("dd if=/dev/ubdb bs=4096 count=1024 2>/dev/null | md5sum")

	// While the instance runs, umlkit refuses to merge or rebase, naming it.
	checkInUse := func(what string, err error) {
		t.Helper()
		var iu *InUseError
		if !errors.As(err, &iu) {
			t.Errorf("%s while the instance runs = %v, want ErrInUse", what, err)
			return
		}
		if iu.Umid != "cow-kernel" || iu.PID <= 0 || !strings.Contains(err.Error(), "instance cow-kernel (pid ") {
			t.Errorf("%s: %v; want the error to name instance cow-kernel and its pid", what, err)
		}
	}
	// The kernel holds the host file (and its lock) while the guest has
	// the device open: keep it open in the console shell.
	if out, st := vm.Run("exec 3</dev/ubdb"); st != 0 {
		t.Fatalf("guest: %q %d", out, st)
	}
	if d, err := Open(kc, OpenOptions{}); err == nil {
		d.Close()
		t.Error("Open for merge succeeded while the instance runs")
	} else {
		checkInUse("Open for merge", err)
	}
	checkInUse("MergeIntoBacking", MergeIntoBacking(context.Background(), kc, IntoBackingOptions{}))
	_, err = Rebase(context.Background(), kc, RebaseOptions{RefreshMtime: true})
	checkInUse("Rebase", err)
	if in, err := Stat(kc); err != nil || in.InUseBy != "cow-kernel" || in.InUsePID <= 0 {
		t.Errorf("Stat while the instance runs = %+v, %v; want it in use by cow-kernel", in, err)
	}
	if iu, err := Probe(kc, false); err != nil || iu == nil || iu.Umid != "cow-kernel" {
		t.Errorf("Probe = %v, %v; want cow-kernel", iu, err)
	} else if pgid, _ := syscall.Getpgid(iu.PID); pgid != vm.PID() {
		t.Errorf("lock holder pid %d is not in the instance's process group %d", iu.PID, vm.PID())
	}
	vm.Poweroff()

	// Merged by uml_moo and by umlkit: identical bytes.
	theirs, ours := filepath.Join(dir, "moo.img"), filepath.Join(dir, "ours.img")
	if out, err := exec.Command(moo, kc, theirs).CombinedOutput(); err != nil {
		t.Fatalf("uml_moo: %v %s", err, out)
	}
	d, err := Open(kc, OpenOptions{})
	if err != nil {
		t.Fatalf("Open of the kernel's COW file: %v", err)
	}
	sec := make([]byte, 14)
	d.ReadAt(sec, 3*512)
	if string(sec) != "HELLO-FROM-UML" {
		t.Errorf("sector 3 reads %q, want HELLO-FROM-UML", sec)
	}
	if err := Merge(context.Background(), d, ours, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	tb, _ := os.ReadFile(theirs)
	ob, _ := os.ReadFile(ours)
	if !bytes.Equal(tb, ob) || len(ob) != len(b) {
		t.Fatalf("umlkit's merge (%d bytes) differs from uml_moo's (%d bytes)", len(ob), len(tb))
	}
	// Count blocks once both are on disk: delayed allocation hides the
	// extent tree block of a file not yet written back.
	for _, p := range []string{ours, theirs} {
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		f.Sync()
		f.Close()
	}
	if fileBlocks(t, ours) > fileBlocks(t, theirs) {
		t.Errorf("umlkit's merge uses %d blocks, uml_moo's %d", fileBlocks(t, ours), fileBlocks(t, theirs))
	}
	t.Logf("blocks: umlkit %d, uml_moo %d; guest md5 %s", fileBlocks(t, ours), fileBlocks(t, theirs), strings.TrimSpace(inGuest))
	sum, _ := exec.Command("md5sum", ours).Output()
	if g := strings.Fields(inGuest); len(g) == 0 || !strings.HasPrefix(string(sum), g[0]) {
		t.Errorf("merged image md5 %s, the guest saw %q", sum, inGuest)
	}

	// Touch the backing file: the kernel refuses the COW, and so does
	// umlkit, with both times and the command that fixes it.
	now := time.Unix(1700000777, 0)
	os.Chtimes(data, now, now)
	_, err = Open(kc, OpenOptions{})
	var be *BackingError
	if !errors.As(err, &be) || be.HeaderMtime != 1700000000 || be.ActualMtime != 1700000777 ||
		!strings.Contains(err.Error(), "umlkit cow rebase --refresh-mtime "+kc) {
		t.Errorf("Open after touch = %v; want both mtimes and the rebase command", err)
	}
	vm = umltest.Boot(t, umltest.Options{Umid: "cow-stale", Args: []string{"ubd1=" + kc + "," + data}})
	if _, st := vm.Run("dd if=/dev/ubdb of=/dev/null bs=512 count=1 2>/dev/null"); st == 0 {
		t.Error("the kernel opened a COW file whose backing file was touched")
	}
	var saw bool
	for _, l := range vm.Console.Lines() {
		saw = saw || strings.Contains(l, "mtime mismatch (1700000000 vs 1700000777)")
	}
	if !saw {
		t.Error("the kernel did not report the mtime mismatch")
	}
	vm.Poweroff()

	// Only the time changed: refresh it, then merge into the backing
	// file. The backing file becomes the merged image, and the emptied
	// COW file still opens in the kernel and shows the same disk.
	if _, err := Rebase(context.Background(), kc, RebaseOptions{RefreshMtime: true}); err != nil {
		t.Fatal(err)
	}
	if err := MergeIntoBacking(context.Background(), kc, IntoBackingOptions{}); err != nil {
		t.Fatal(err)
	}
	if db, _ := os.ReadFile(data); !bytes.Equal(db, ob) {
		t.Error("backing file after MergeIntoBacking differs from the merged image")
	}
	vm = umltest.Boot(t, umltest.Options{Umid: "cow-merged", Args: []string{"ubd1=" + kc + "," + data}})
	if again, _ := vm.Run("dd if=/dev/ubdb bs=4096 count=1024 2>/dev/null | md5sum"); again != inGuest {
		t.Errorf("disk after the merge into the backing file: md5 %q, before %q", again, inGuest)
	}
	vm.Poweroff()
}
