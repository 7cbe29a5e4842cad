package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/cow"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	data := t.TempDir()
	t.Setenv("UMLKIT_DATA_DIR", data)
	t.Setenv("UMLKIT_RUNTIME_DIR", t.TempDir())
	return DefaultStore()
}

func addImage(t *testing.T, s *Store, name string) string {
	t.Helper()
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := s.Path(name)
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveManifest(&Manifest{Name: name, Kind: KindMinimal, Size: 1 << 20, Created: time.Now(), Packages: []string{"busybox"}}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestListGetResolve(t *testing.T) {
	s := newStore(t)
	if ms, err := s.List(); err != nil || len(ms) != 0 {
		t.Fatalf("List() of a missing store = %v, %v; want nothing", ms, err)
	}
	pa := addImage(t, s, "a")
	addImage(t, s, "b")
	ms, err := s.List()
	if err != nil || len(ms) != 2 || ms[0].Name != "a" || ms[1].Name != "b" || ms[0].Path != pa || ms[0].Kind != KindMinimal {
		t.Fatalf("List() = %+v, %v; want a and b", ms, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"a", pa},
		{"./rel.img", filepath.Join(mustWd(t), "rel.img")},
		{"/abs/x.img", "/abs/x.img"},
	} {
		if got, err := Resolve(tc.in); err != nil || got != tc.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := Resolve("nosuch"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "umlkit image list") {
		t.Errorf("Resolve(nosuch) = %v; want ErrNotFound saying how to list images", err)
	}
	if _, err := s.Get("../etc"); err == nil {
		t.Error("Get(../etc) accepted a name with a slash")
	}
}

func mustWd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

func TestBadManifest(t *testing.T) {
	s := newStore(t)
	addImage(t, s, "a")
	os.WriteFile(filepath.Join(s.Dir, "a.json"), []byte("{not json"), 0o644)
	if _, err := s.Get("a"); err == nil || !strings.Contains(err.Error(), "a.json") {
		t.Errorf("Get with a broken manifest = %v; want an error naming it", err)
	}
}

// rm refuses while a COW file in the data dir is over the image, and
// names it; once the COW file is gone it removes image and manifest.
func TestRemoveRefusedWhileCOWDepends(t *testing.T) {
	s := newStore(t)
	p := addImage(t, s, "a")
	cowDir := filepath.Join(filepath.Dir(s.Dir), "labs", "l1")
	os.MkdirAll(cowDir, 0o755)
	cf := filepath.Join(cowDir, "r1.cow")
	if _, err := cow.Create(cf, p, cow.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := s.Remove("a")
	var iu *InUseError
	if !errors.As(err, &iu) || !errors.Is(err, ErrInUse) || len(iu.COWs) != 1 || iu.COWs[0] != cf {
		t.Fatalf("Remove(a) with %s over it = %v; want an InUseError naming it", cf, err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the image went away although it was refused: %v", err)
	}
	os.Remove(cf)
	if err := s.Remove("a"); err != nil {
		t.Fatalf("Remove(a) = %v", err)
	}
	for _, f := range []string{p, filepath.Join(s.Dir, "a.json")} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Remove: %v", f, err)
		}
	}
	if err := s.Remove("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove of a removed image = %v; want ErrNotFound", err)
	}
}
