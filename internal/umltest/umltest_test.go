package umltest

import (
	"strings"
	"testing"
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
