package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

// The demo boots two instances from one image through COW files and shows
// each one's uname -a and hostname.
func TestDemo(t *testing.T) {
	umltest.Kernel(t)
	dir := t.TempDir()
	var out bytes.Buffer
	if err := Run(context.Background(), Options{Dir: dir}, &out); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"Linux uml1 6.", "Linux uml2 6.",
		`Creating "root_fs1.cow" as COW file for "root_fs"`,
		"uml1: powered off (exit status 0)", "uml2: powered off (exit status 0)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
	for _, f := range []string{"root_fs", "root_fs1.cow", "root_fs2.cow"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("demo left no %s: %v", f, err)
		}
	}
}
