// Package umltest boots the real User-Mode Linux kernel in tests: it builds
// a tiny root filesystem once per package run, starts instances over COW
// files with a short uml_dir, streams their consoles into the test log,
// waits for console markers, turns a kernel panic into a test failure with
// the panic text, and kills and removes everything in t.Cleanup.
//
// A package that boots kernels calls Main from its TestMain. Under
// `make test` (UMLKIT_REQUIRE_KERNEL=1) a missing kernel fails the test;
// elsewhere the test is skipped with the command that installs it.
package umltest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/kernel"
)

// EnvRequire makes a missing kernel a test failure instead of a skip.
const EnvRequire = "UMLKIT_REQUIRE_KERNEL"

var (
	mainDir   string // set by Main; holds the shared image
	imageOnce sync.Once
	imagePath string
	imageErr  error

	umlkitOnce sync.Once
	umlkitPath string
	umlkitErr  error

	agentOnce  sync.Once
	agentImage string
	agentErr   error
)

// Main runs the package's tests with a scratch directory for the shared
// image, and removes it afterwards. Call it from TestMain:
//
//	func TestMain(m *testing.M) { umltest.Main(m) }
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "umltest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "umltest:", err)
		os.Exit(2)
	}
	mainDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Required reports whether this run must have the kernel (make test).
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Kernel returns the host's UML kernel. Without one, the test fails under
// make test and is skipped otherwise, saying what to install.
func Kernel(t testing.TB) *kernel.Kernel {
	t.Helper()
	k, err := kernel.Find()
	if err != nil {
		if Required() {
			t.Fatalf("%v (%s=1: kernel tests must run; `make test` installs it)", err, EnvRequire)
		}
		t.Skipf("%v", err)
	}
	return k
}

// Image returns the path of the shared minimal root filesystem, built on
// first use. Tests must not write it: boot it through a COW file (Boot does).
func Image(t testing.TB) string {
	t.Helper()
	if mainDir == "" {
		t.Fatal("umltest: call umltest.Main(m) from TestMain in this package")
	}
	imageOnce.Do(func() {
		imagePath = filepath.Join(mainDir, "root_fs")
		imageErr = image.BuildMinimal(context.Background(), imagePath, image.MinimalOptions{})
	})
	if imageErr != nil {
		if Required() {
			t.Fatalf("umltest: %v", imageErr)
		}
		t.Skipf("umltest: %v", imageErr)
	}
	return imagePath
}

// ShortDir returns a new directory with a short path (socket paths must
// fit in 108 bytes; t.TempDir's may not), removed when the test ends.
func ShortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "uml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// sanitize turns a test name into a umid: letters, digits, '-' only, at
// most 24 characters.
func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > 24 {
		s = s[len(s)-24:]
	}
	return strings.Trim(s, "-")
}

// Umlkit returns a statically linked umlkit built from this module, once
// per package run (for images whose init and agent it is).
func Umlkit(t testing.TB) string {
	t.Helper()
	if mainDir == "" {
		t.Fatal("umltest: call umltest.Main(m) from TestMain in this package")
	}
	umlkitOnce.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			umlkitErr = fmt.Errorf("find the module: %w", err)
			return
		}
		umlkitPath = filepath.Join(mainDir, "umlkit")
		cmd := exec.Command("go", "build", "-o", umlkitPath, "./cmd/umlkit")
		cmd.Dir = strings.TrimSpace(string(root))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			umlkitErr = fmt.Errorf("go build ./cmd/umlkit: %w\n%s", err, out)
		}
	})
	if umlkitErr != nil {
		t.Fatalf("umltest: %v", umlkitErr)
	}
	return umlkitPath
}

// AgentImage returns a minimal image whose init is umlkit (Umlkit), with
// the exec agent; built once per package run. Boot it with
// Options{Image: AgentImage(t), Agent: true}.
func AgentImage(t testing.TB) string {
	t.Helper()
	bin := Umlkit(t)
	Kernel(t)
	agentOnce.Do(func() {
		agentImage = filepath.Join(mainDir, "root_fs_agent")
		agentErr = image.BuildMinimal(context.Background(), agentImage, image.MinimalOptions{Umlkit: bin})
	})
	if agentErr != nil {
		t.Fatalf("umltest: %v", agentErr)
	}
	return agentImage
}

// CPUTime is the user and system CPU time process pid and its reaped
// children have used so far (for benchmarks that compare with the CPU
// limit); 0 when the process is gone.
func CPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / 100
}
