// Package store keeps named root filesystem images with a small manifest
// each, resolves names to files, and finds the COW files and instances
// that depend on an image.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/umlkit/umlkit/cow"
	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/internal/machine/cmdline"
)

// ErrNotFound is returned when the store has no image of that name.
var ErrNotFound = errors.New("no such image")

// ErrInUse is returned when an image cannot change because COW files or
// instances depend on it.
var ErrInUse = errors.New("image in use")

// Kinds of images.
const (
	KindMinimal = "minimal"
	KindDebian  = "debian"
)

// Manifest describes an image in the store; it sits next to the image as
// NAME.json.
type Manifest struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"`
	Size     int64     `json:"size"`
	Created  time.Time `json:"created"`
	Suite    string    `json:"suite,omitempty"`
	Mirror   string    `json:"mirror,omitempty"`
	Packages []string  `json:"packages,omitempty"`
	// Path is the image file (not stored; filled in by the store).
	Path string `json:"path,omitempty"`
}

// Store is a directory of named images, each NAME.img with NAME.json.
type Store struct{ Dir string }

// DefaultStore is the store under the user's data dir
// ($UMLKIT_DATA_DIR/images).
func DefaultStore() *Store { return &Store{Dir: filepath.Join(hostdirs.Data(), "images")} }

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// CheckName validates an image name.
func CheckName(name string) error {
	if !validName.MatchString(name) || strings.HasSuffix(name, ".json") || strings.HasSuffix(name, ".tmp") {
		return fmt.Errorf("image name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// Path is where the image name lives (whether or not it exists).
func (s *Store) Path(name string) string { return filepath.Join(s.Dir, name+".img") }

func (s *Store) manifestPath(name string) string { return filepath.Join(s.Dir, name+".json") }

// Get returns the manifest of the image name.
func (s *Store) Get(name string) (*Manifest, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	p := s.Path(name)
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("image %s: %w in %s (umlkit image list shows them; umlkit image build minimal --name %s makes one)", name, ErrNotFound, s.Dir, name)
		}
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	m := &Manifest{Name: name, Kind: "unknown", Size: st.Size(), Created: st.ModTime()}
	if b, err := os.ReadFile(s.manifestPath(name)); err == nil {
		if err := json.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("image %s: manifest %s: %w (remove it, or the image: umlkit image rm %s)", name, s.manifestPath(name), err, name)
		}
	}
	m.Name, m.Path, m.Size = name, p, st.Size()
	return m, nil
}

// List returns the store's images sorted by name.
func (s *Store) List() ([]Manifest, error) {
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("image store %s: %w", s.Dir, err)
	}
	var out []Manifest
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".img")
		if !ok || !e.Type().IsRegular() || CheckName(name) != nil {
			continue
		}
		m, err := s.Get(name)
		if err != nil {
			return nil, err
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// SaveManifest writes m (for the image m.Name) through a temporary file.
func (s *Store) SaveManifest(m *Manifest) error {
	c := *m
	c.Path = ""
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.manifestPath(m.Name), append(b, '\n'), 0o644)
}

// Remove deletes the image name and its manifest. It refuses with
// ErrInUse while COW files or instances depend on it.
func (s *Store) Remove(name string) error {
	m, err := s.Get(name)
	if err != nil {
		return err
	}
	if err := CheckUnused(m.Path); err != nil {
		return err
	}
	if err := os.Remove(m.Path); err != nil {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	if err := os.Remove(s.manifestPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	return nil
}

// Resolve turns an image name (in the default store) or a file path into
// an absolute path. Anything with a '/' or that exists as a file is a path.
func Resolve(nameOrPath string) (string, error) { return DefaultStore().Resolve(nameOrPath) }

// Resolve turns an image name in s or a file path into an absolute path.
func (s *Store) Resolve(nameOrPath string) (string, error) {
	if nameOrPath == "" {
		return "", errors.New("no image given")
	}
	if strings.Contains(nameOrPath, "/") || CheckName(nameOrPath) != nil {
		return filepath.Abs(nameOrPath)
	}
	if st, err := os.Stat(nameOrPath); err == nil && st.Mode().IsRegular() {
		return filepath.Abs(nameOrPath)
	}
	m, err := s.Get(nameOrPath)
	if err != nil {
		return "", fmt.Errorf("%w (or give a path to an image file, such as ./%s)", err, nameOrPath)
	}
	return m.Path, nil
}

// InUseError names what depends on an image.
type InUseError struct {
	Path      string
	COWs      []string // COW files whose backing file it is
	Instances []string // live instances that have it as a disk
}

func (e *InUseError) Error() string {
	var parts []string
	if len(e.COWs) > 0 {
		parts = append(parts, "COW files "+strings.Join(e.COWs, ", "))
	}
	if len(e.Instances) > 0 {
		parts = append(parts, "running instances "+strings.Join(e.Instances, ", "))
	}
	return fmt.Sprintf("image %s is used by %s", e.Path, strings.Join(parts, " and "))
}

func (e *InUseError) Unwrap() error { return ErrInUse }

// CheckUnused returns an *InUseError when COW files umlkit can find (in
// the data dir, the working directory and the instances' directories) or
// live instances depend on the image at path.
func CheckUnused(path string) error {
	cows, insts, err := Dependents(path)
	if err != nil {
		return err
	}
	if len(cows) == 0 && len(insts) == 0 {
		return nil
	}
	return &InUseError{Path: path, COWs: cows, Instances: insts}
}

// Dependents finds the COW files over the image at path and the live
// instances that use it. It looks in the data dir (recursively), the
// working directory, and the directories of every instance's disks.
func Dependents(path string) (cows, instances []string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, err
	}
	img, err := os.Stat(abs)
	if err != nil {
		return nil, nil, err
	}
	dirs := map[string]bool{}
	filepath.WalkDir(hostdirs.Data(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs[p] = true
		}
		return nil
	})
	if wd, err := os.Getwd(); err == nil {
		dirs[wd] = true
	}
	ins, _ := machine.List()
	for _, in := range ins {
		c, err := cmdline.Parse(in.Spec.Args)
		if err != nil {
			continue
		}
		for _, d := range c.Disks() {
			for _, f := range []string{d.File, d.Backing} {
				if f == "" {
					continue
				}
				if !filepath.IsAbs(f) {
					f = filepath.Join(in.Spec.Dir, f)
				}
				dirs[filepath.Dir(f)] = true
				if st, err := os.Stat(f); err == nil && os.SameFile(st, img) && in.State.Live() {
					instances = append(instances, in.Spec.Name)
				}
			}
		}
	}
	seen := map[string]bool{}
	for dir := range dirs {
		found, err := cow.FindCOWs(abs, []string{dir})
		if err != nil {
			continue
		}
		for _, f := range found {
			if a, err := filepath.Abs(f); err == nil && !seen[a] {
				seen[a] = true
				cows = append(cows, a)
			}
		}
	}
	if e, err := cow.Probe(abs, true); err == nil && e != nil {
		who := fmt.Sprintf("pid %d", e.PID)
		if e.Umid != "" {
			who = e.Umid
		}
		if !contains(instances, who) {
			instances = append(instances, who)
		}
	}
	sort.Strings(cows)
	sort.Strings(instances)
	return cows, dedupe(instances), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func dedupe(list []string) []string {
	var out []string
	for _, s := range list {
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// writeFileAtomic writes b to path through a temporary file and a rename.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
