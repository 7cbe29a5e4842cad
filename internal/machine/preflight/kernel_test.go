package preflight

// Each test here shows, with the real kernel, that what a check reports
// really goes wrong when the kernel is started anyway, and that preflight
// says so before a kernel starts.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/umltest"
)

// copyImage copies the shared test image into dir, keeping its mtime.
func copyImage(t *testing.T, dir string) string {
	t.Helper()
	src := umltest.Image(t)
	dst := filepath.Join(dir, "root.img")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// preflight checks args (with the kernel's working directory, the test's)
// and logs what it finds.
func preflight(t *testing.T, opts Options, args ...string) *Report {
	t.Helper()
	_, r := CheckArgs(context.Background(), args, opts)
	for _, p := range r.Problems {
		t.Logf("preflight: %s %s: %s", p.Severity, p.Check, p.Error())
	}
	return r
}

// consoleHas reports whether a console line contains text.
func consoleHas(vm *umltest.Instance, text string) bool {
	for _, l := range vm.Console.Lines() {
		if strings.Contains(l, text) {
			return true
		}
	}
	return false
}

// bootFails starts the kernel on a line preflight refused and asserts that
// it fails as predicted: it exits (a panic) and its console says want.
func bootFails(t *testing.T, opts umltest.Options, want string) {
	t.Helper()
	opts.NoWait = true
	vm := umltest.Boot(t, opts)
	err := vm.Wait(umltest.DefaultTimeout)
	if err == nil {
		t.Fatalf("the kernel exited cleanly; want it to fail with %q", want)
	}
	if !consoleHas(vm, want) {
		t.Fatalf("the kernel failed (%v) without saying %q", err, want)
	}
	t.Logf("raw kernel: %v, console says %q", err, want)
}

// TestKernelLockedImage is the seed's Figure 5.2: a second instance on an
// image a running instance uses. Preflight names the first instance and
// its pid; the first keeps running; started anyway, the second stops.
func TestKernelLockedImage(t *testing.T) {
	umltest.Kernel(t)
	img := copyImage(t, t.TempDir())
	first := umltest.Boot(t, umltest.Options{Umid: "lock1", Root: img})

	r := preflight(t, Options{}, "ubd0="+img, "mem=64M", "umid=lock2", "uml_dir="+first.UMLDir)
	p := only(t, r, ErrLocked, "instance lock1", fmt.Sprintf("pid %d", first.PID()), "ubd0=NAME.cow,"+img)
	if p.PID != first.PID() || p.Umid != "lock1" {
		t.Errorf("problem names pid %d umid %q, want %d lock1", p.PID, p.Umid, first.PID())
	}
	// A COW file over the image is refused too while the image is
	// opened read-write.
	only(t, preflight(t, Options{}, "ubd0="+filepath.Join(t.TempDir(), "x.cow")+","+img, "uml_dir="+first.UMLDir), ErrLocked, "cannot be the backing file")

	bootFails(t, umltest.Options{Umid: "lock2", Root: img}, fmt.Sprintf("F_SETLK failed, file already locked by pid %d", first.PID()))

	if out, status := first.Run("echo still-$((1+1))"); status != 0 || strings.TrimSpace(out) != "still-2" {
		t.Errorf("first instance after the refusal: %q, %d", out, status)
	}
	first.Poweroff()
	if r := preflight(t, Options{}, "ubd0="+img, "umid=lock2", "uml_dir="+first.UMLDir); len(r.Problems) != 0 {
		t.Errorf("after the first instance stopped: %v", r.Problems)
	}
}

// TestKernelMissingRoot is the seed's Figure 5.1: no root_fs.
func TestKernelMissingRoot(t *testing.T) {
	umltest.Kernel(t)
	dir := t.TempDir()
	// The kernel runs in the test's working directory, which has no
	// root_fs; preflight checks against the same directory.
	if _, err := os.Stat("root_fs"); err == nil {
		t.Fatal("the package directory has a root_fs; this test needs it missing")
	}
	only(t, preflight(t, Options{Home: dir}, "mem=64M", "uml_dir="+dir), ErrMissing, "no ubd0=", "panic")
	bootFails(t, umltest.Options{Umid: "noroot", Root: "root_fs"}, "Unable to mount root fs")
}

// TestKernelStaleCOW: the backing file is touched after the kernel made
// the COW file.
func TestKernelStaleCOW(t *testing.T) {
	umltest.Kernel(t)
	dir := t.TempDir()
	img := copyImage(t, dir)
	cow := filepath.Join(dir, "a.cow")
	root := cow + "," + img
	uml := umltest.ShortDir(t)
	if r := preflight(t, Options{}, "ubd0="+root, "uml_dir="+uml); len(r.Problems) != 0 {
		t.Fatalf("before the first boot: %v", r.Problems)
	}
	vm := umltest.Boot(t, umltest.Options{Umid: "stale", Root: root})
	vm.Poweroff()
	if r := preflight(t, Options{}, "ubd0="+root, "uml_dir="+uml); len(r.Problems) != 0 {
		t.Fatalf("COW file made by the kernel: %v", r.Problems)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(img, later, later); err != nil {
		t.Fatal(err)
	}
	only(t, preflight(t, Options{}, "ubd0="+root, "uml_dir="+uml), ErrBackingChanged, "mtime mismatch", "umlkit cow rebase")
	bootFails(t, umltest.Options{Umid: "stale2", Root: root}, "mtime mismatch")
}

// TestKernelEmptyCOW: an empty file where the COW file should be.
func TestKernelEmptyCOW(t *testing.T) {
	umltest.Kernel(t)
	dir := t.TempDir()
	img := copyImage(t, dir)
	cow := filepath.Join(dir, "empty.cow")
	if err := os.WriteFile(cow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	only(t, preflight(t, Options{}, "ubd0="+cow+","+img, "uml_dir="+dir), ErrEmptyCOW, "is empty", "rm "+cow)
	bootFails(t, umltest.Options{Umid: "emptycow", Root: cow + "," + img}, "short header")
}

// TestKernelUmidInUse: a second kernel with a running instance's umid
// boots anyway under a random umid, so its mconsole is not where the user
// looks for it.
func TestKernelUmidInUse(t *testing.T) {
	first := umltest.Boot(t, umltest.Options{Umid: "dup"})
	p := only(t, preflight(t, Options{}, "ubd0="+filepath.Join(t.TempDir(), "b.cow")+","+umltest.Image(t), "umid=dup", "uml_dir="+first.UMLDir),
		ErrUmidInUse, "umid dup is in use", fmt.Sprintf("pid %d", first.PID()))
	if p.PID != first.PID() {
		t.Errorf("problem pid %d, want %d", p.PID, first.PID())
	}
	second := umltest.Boot(t, umltest.Options{Umid: "dup", NoWait: true, Args: []string{"uml_dir=" + first.UMLDir}})
	second.WaitFor(fmt.Sprintf(`umid "dup" is already in use by pid %d`, first.PID()), umltest.DefaultTimeout)
	second.WaitFor("trying with a random umid", umltest.DefaultTimeout)
	second.WaitFor(umltest.ReadyMarker, umltest.DefaultTimeout)
	second.Poweroff()
	first.Poweroff()
}

// TestKernelNoListener: a switch socket with nothing listening. The kernel
// boots without the network device and never connects later.
func TestKernelNoListener(t *testing.T) {
	s := umltest.ShortDir(t)
	args := []string{"vec0:transport=bess,dst=" + s + "/sw.sock", "eth1=daemon,,unix," + s + "/ctl"}
	r := preflight(t, Options{}, append([]string{"ubd0=" + filepath.Join(t.TempDir(), "c.cow") + "," + umltest.Image(t), "uml_dir=" + s}, args...)...)
	if len(r.Problems) != 2 || !errors.Is(r.Problems[0], ErrNoListener) || !errors.Is(r.Problems[1], ErrNoListener) {
		t.Fatalf("problems %v, want two ErrNoListener", r.Problems)
	}
	vm := umltest.Boot(t, umltest.Options{Umid: "nolisten", Args: args})
	// The daemon transport connects when the device is configured: no
	// device at all.
	if out, status := vm.Run("ip link show eth1"); status == 0 {
		t.Errorf("eth1 exists in the guest without a switch: %q", out)
	}
	if !consoleHas(vm, "daemon_open : control connect failed") {
		t.Error("the kernel did not report the failed daemon connection")
	}
	// The vector transport connects when the interface goes up: the
	// device is there but cannot be brought up.
	if out, status := vm.Run("ip link set vec0 up"); status == 0 {
		t.Errorf("vec0 came up without a switch: %q", out)
	}
	vm.Poweroff()
}

// TestKernelUMLDirMissing: a uml_dir the kernel cannot make crashes it.
func TestKernelUMLDirMissing(t *testing.T) {
	umltest.Kernel(t)
	dir := filepath.Join(t.TempDir(), "no", "such") + "/"
	only(t, preflight(t, Options{}, "ubd0=x.cow,"+umltest.Image(t), "uml_dir="+dir), ErrUMLDir, "mkdir -p "+dir)
	bootFails(t, umltest.Options{Umid: "nodir", Args: []string{"uml_dir=" + dir}}, "Failed to mkdir")
}
