package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/umlkit/umlkit/internal/kernel"
)

func find(r *Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

// A host without the kernel: doctor names the package to install and the
// report is unhealthy.
func TestNoKernel(t *testing.T) {
	h := Default()
	h.FindKernel = func() (*kernel.Kernel, error) {
		return nil, fmt.Errorf("%w on PATH", kernel.ErrNotFound)
	}
	h.RuntimeDir = t.TempDir()
	r := Run(context.Background(), h)
	c := find(r, "kernel")
	if c.Status != Fail || c.Fix != "apt-get install user-mode-linux" {
		t.Errorf("kernel check = %+v, want fail with fix %q", c, "apt-get install user-mode-linux")
	}
	if r.Healthy() {
		t.Error("Healthy() = true without a kernel, want false")
	}
}

// A host without optional tools warns but stays healthy; without a
// required one it fails.
func TestMissingTools(t *testing.T) {
	h := Default()
	h.LookPath = func(string) (string, error) { return "", errors.New("not found") }
	h.Busybox = t.TempDir() + "/busybox"
	h.RuntimeDir = t.TempDir()
	r := Run(context.Background(), h)
	for name, want := range map[string]Status{"uml-utilities": Warn, "vde2": Warn, "debootstrap": Warn, "e2fsprogs": Fail, "busybox-static": Fail} {
		if c := find(r, name); c.Status != want || !strings.HasPrefix(c.Fix, "apt-get install ") {
			t.Errorf("check %s = %+v, want status %s with an apt-get fix", name, c, want)
		}
	}
}

func TestShmNoexec(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo string
		want            Status
	}{
		{"exec", "30 25 0:27 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw\n", OK},
		{"noexec", "30 25 0:27 / /dev/shm rw,nosuid,nodev,noexec shared:4 - tmpfs tmpfs rw\n", Fail},
		{"missing", "22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw\n", Fail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := checkShm([]byte(tc.mountinfo)); c.Status != tc.want {
				t.Errorf("checkShm(%q) = %+v, want %s", tc.mountinfo, c, tc.want)
			}
		})
	}
}

func TestLongRuntimeDir(t *testing.T) {
	h := Default()
	h.RuntimeDir = "/" + strings.Repeat("d", 80)
	if c := checkRuntime(h); c.Status != Fail || !strings.Contains(c.Fix, "UMLKIT_RUNTIME_DIR") {
		t.Errorf("checkRuntime(long dir) = %+v, want fail with a fix naming UMLKIT_RUNTIME_DIR", c)
	}
}

// On a set-up machine (make test) every check passes.
func TestHostAllOK(t *testing.T) {
	if os.Getenv("UMLKIT_REQUIRE_KERNEL") != "1" {
		t.Skip("needs the full set-up: run make test")
	}
	h := Default()
	h.RuntimeDir = t.TempDir()
	r := Run(context.Background(), h)
	for _, c := range r.Checks {
		if c.Status != OK {
			t.Errorf("check %s = %s: %s (fix: %s)", c.Name, c.Status, c.Detail, c.Fix)
		}
	}
}

func TestMemoryDir(t *testing.T) {
	env := map[string]string{"TMP": "/scratch"}
	if got := memoryDir(func(k string) string { return env[k] }); got != "/scratch" {
		t.Errorf("memoryDir(TMP=/scratch) = %q, want /scratch", got)
	}
	if got := memoryDir(func(string) string { return "" }); got != "/dev/shm" {
		t.Errorf("memoryDir(no env) = %q, want /dev/shm", got)
	}
	mi := "22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw\n31 22 0:30 / /scratch rw,noexec - tmpfs tmpfs rw\n"
	if c := checkMemoryDir([]byte(mi), "/scratch/uml"); c.Status != Fail || !strings.Contains(c.Detail, "noexec") {
		t.Errorf("checkMemoryDir(noexec /scratch) = %+v, want fail naming noexec", c)
	}
}
