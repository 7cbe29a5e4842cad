package image

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMirrorFromSources(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"one-line", "deb http://m.example/debian bookworm main\n", "http://m.example/debian"},
		{"skips security and deb-src", "deb-src http://a.example/debian bookworm main\ndeb http://s.example/debian-security bookworm-security main\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n", "http://m.example/debian"},
		{"comments", "# deb http://old.example/debian bookworm main\ndeb http://m.example/debian bookworm main # trailing\n", "http://m.example/debian"},
		{"flat repo", "deb http://x.example/repo ./\n", ""},
		{"unterminated options", "deb [arch=amd64 http://x.example bookworm main\n", ""},
		{"empty", "", ""},
	} {
		if got := MirrorFromSources(tc.text); got != tc.want {
			t.Errorf("%s: MirrorFromSources(%q) = %q, want %q", tc.name, tc.text, got, tc.want)
		}
	}
}

func TestDeb822ToList(t *testing.T) {
	text := "Types: deb deb-src\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n" +
		"Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n" +
		"Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n"
	want := "deb http://m.example/debian bookworm main\ndeb http://m.example/debian bookworm-updates main\ndeb http://s.example/debian-security bookworm-security main\n"
	if got := Deb822ToList(text); got != want {
		t.Errorf("Deb822ToList = %q, want %q", got, want)
	}
	if got := MirrorFromSources(Deb822ToList(text)); got != "http://m.example/debian" {
		t.Errorf("mirror from deb822 = %q", got)
	}
}

func FuzzMirrorFromSources(f *testing.F) {
	f.Add("deb [arch=amd64] http://m.example/debian bookworm main\n")
	f.Add("Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\n")
	f.Add("deb [\n")
	f.Fuzz(func(t *testing.T, s string) {
		MirrorFromSources(s)
		MirrorFromSources(Deb822ToList(s))
	})
}

// inRoot follows merged /usr's relative and absolute links inside the tree.
func TestInRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
	os.Symlink("usr/sbin", filepath.Join(root, "sbin"))
	os.Symlink("/usr/sbin", filepath.Join(root, "asbin"))
	os.Symlink("../../../../../etc", filepath.Join(root, "escape"))
	for in, want := range map[string]string{
		"/sbin/init":  filepath.Join(root, "usr/sbin/init"),
		"/asbin/init": filepath.Join(root, "usr/sbin/init"),
		"/etc/shadow": filepath.Join(root, "etc/shadow"),
		"/escape/x":   filepath.Join(root, "escape/x"),
	} {
		if got := inRoot(root, in); got != want {
			t.Errorf("inRoot(%s) = %s, want %s", in, got, want)
		}
	}
}
