package umltest

import (
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/umlkit/umlkit/internal/console"
)

func TestMain(m *testing.M) { Main(m) }

func TestBootRunPoweroff(t *testing.T) {
	vm := Boot(t, Options{Umid: "ut1", Args: []string{"hostname=alpha"}})
	out, status := vm.Run("uname -r; hostname")
	if status != 0 {
		t.Fatalf("Run status = %d, want 0; output %q", status, out)
	}
	if !strings.Contains(out, "6.") || !strings.Contains(out, "alpha") {
		t.Errorf("Run output = %q, want the kernel release and hostname alpha", out)
	}
	if _, status := vm.Run("false"); status != 1 {
		t.Errorf("Run(false) status = %d, want 1", status)
	}
	if out, _ := vm.Run("printf no-newline"); out != "no-newline" {
		t.Errorf("Run(printf) = %q, want %q", out, "no-newline")
	}
	vm.Poweroff()
}

// TestPanicIsReported boots with a root disk that does not exist: the kernel
// panics, and the harness must see the panic rather than time out.
func TestPanicIsReported(t *testing.T) {
	vm := Boot(t, Options{Umid: "ut2", Root: t.TempDir() + "/missing", NoWait: true})
	err := vm.Wait(DefaultTimeout)
	if err == nil || !strings.Contains(err.Error(), "Unable to mount root fs") {
		t.Fatalf("Wait() = %v, want the kernel panic about the root fs", err)
	}
}

func TestSanitize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"TestFoo", "testfoo"},
		{"TestFoo/sub_case", "testfoo-sub-case"},
		{"TestAVeryLongNameThatGoesOnAndOn/x", "ongnamethatgoesonandon-x"},
	} {
		if got := sanitize(tc.in); got != tc.want {
			t.Errorf("sanitize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Only a SIGABRT after the console's halt line passes for a clean
// poweroff; any other exit error, or an abort before the halt, does not.
func TestAbortedAfterHalt(t *testing.T) {
	exitErr := func(script string) error {
		err := exec.Command("sh", "-c", script).Run()
		if err == nil {
			t.Fatalf("sh -c %q exited 0", script)
		}
		return err
	}
	abort, status := exitErr("kill -ABRT $$"), exitErr("exit 3")
	for _, tc := range []struct {
		console string
		err     error
		want    bool
	}{
		{"vm:/# poweroff -f\nreboot: System halted\n", abort, true},
		{"vm:/# poweroff -f\nreboot: Power down\n", abort, true},
		{"vm:/# poweroff -f\n", abort, false},
		{"reboot: System halted\n", status, false},
		{"reboot: System halted\n", errors.New("still running"), false},
	} {
		c := console.New(strings.NewReader(tc.console), io.Discard, nil)
		<-c.Done()
		i := &Instance{t: t, Console: c}
		if got := i.abortedAfterHalt(tc.err); got != tc.want {
			t.Errorf("abortedAfterHalt(%v) after %q = %v, want %v", tc.err, tc.console, got, tc.want)
		}
	}
}
