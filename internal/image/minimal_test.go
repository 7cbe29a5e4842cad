package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildMinimal(t *testing.T) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skip("busybox-static is not installed: apt-get install busybox-static")
	}
	out := filepath.Join(t.TempDir(), "root_fs")
	err := BuildMinimal(context.Background(), out, MinimalOptions{Files: map[string]string{"/etc/motd": "hello\n"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil || st.Size() != DefaultMinimalSize {
		t.Fatalf("image %s: %v, size %d; want %d bytes", out, err, st.Size(), DefaultMinimalSize)
	}
	// The image holds init, busybox links and the extra file.
	for path, want := range map[string]string{"/etc/motd": "hello", "/sbin/init": "umlkit-ready"} {
		b, err := exec.Command("debugfs", "-R", "cat "+path, out).Output()
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("debugfs cat %s = %q, %v; want it to contain %q", path, b, err, want)
		}
	}
	b, err := exec.Command("debugfs", "-R", "stat /bin/sh", out).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "Type: symlink") {
		t.Errorf("/bin/sh in the image: %s, %v; want a symlink to busybox", b, err)
	}
	if entries, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(entries) != 0 {
		t.Errorf("temporary files left next to the image: %v", entries)
	}
}

func TestBuildMinimalBadBusybox(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "root_fs")
	for _, tc := range []struct{ busybox, want string }{
		{filepath.Join(dir, "nope"), "apt-get install busybox-static"},
		{"/bin/ls", "dynamically linked"},
	} {
		err := BuildMinimal(context.Background(), out, MinimalOptions{Busybox: tc.busybox})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("BuildMinimal(busybox %s) = %v, want an error containing %q", tc.busybox, err, tc.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("BuildMinimal(busybox %s) left %s behind", tc.busybox, out)
		}
	}
}
