package image

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// SlackRecord is an entry of /var/log/packages, as installpkg writes it.
type SlackRecord struct {
	Name             string
	CompressedSize   string // "12K"
	UncompressedSize string
	Location         string
	Desc             []string
	Files            []string
}

// FormatSlackRecord writes p's /var/log/packages entry with installpkg's
// fields, for the package found at location.
func FormatSlackRecord(p *Package, location string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "PACKAGE NAME:     %s\n", p.Name)
	fmt.Fprintf(&b, "COMPRESSED PACKAGE SIZE:     %dK\n", p.CompressedSize/1024)
	fmt.Fprintf(&b, "UNCOMPRESSED PACKAGE SIZE:     %dK\n", p.UncompressedSize/1024)
	fmt.Fprintf(&b, "PACKAGE LOCATION: %s\n", location)
	b.WriteString("PACKAGE DESCRIPTION:\n")
	for _, l := range p.Desc {
		b.WriteString(l + "\n")
	}
	b.WriteString("FILE LIST:\n")
	for _, f := range p.Files {
		b.WriteString(f + "\n")
	}
	return b.String()
}

// ParseSlackRecord reads a /var/log/packages entry.
func ParseSlackRecord(text string) (*SlackRecord, error) {
	r := &SlackRecord{}
	section := ""
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		switch {
		case section == "files":
			if l != "" {
				r.Files = append(r.Files, l)
			}
		case strings.HasPrefix(l, "PACKAGE NAME:"):
			r.Name = strings.TrimSpace(strings.TrimPrefix(l, "PACKAGE NAME:"))
		case strings.HasPrefix(l, "COMPRESSED PACKAGE SIZE:"):
			r.CompressedSize = strings.TrimSpace(strings.TrimPrefix(l, "COMPRESSED PACKAGE SIZE:"))
		case strings.HasPrefix(l, "UNCOMPRESSED PACKAGE SIZE:"):
			r.UncompressedSize = strings.TrimSpace(strings.TrimPrefix(l, "UNCOMPRESSED PACKAGE SIZE:"))
		case strings.HasPrefix(l, "PACKAGE LOCATION:"):
			r.Location = strings.TrimSpace(strings.TrimPrefix(l, "PACKAGE LOCATION:"))
		case l == "PACKAGE DESCRIPTION:":
			section = "desc"
		case l == "FILE LIST:":
			section = "files"
		case section == "desc":
			r.Desc = append(r.Desc, l)
		}
	}
	if r.Name == "" {
		return nil, fmt.Errorf("no PACKAGE NAME line")
	}
	return r, nil
}

// Summary is the first line of the description without its "name:" prefix.
func (r *SlackRecord) Summary() string {
	if len(r.Desc) == 0 {
		return ""
	}
	_, s, _ := strings.Cut(r.Desc[0], ":")
	return strings.TrimSpace(s)
}

// Stanza is one paragraph of a dpkg status or control file, fields in order.
type Stanza []Field

// Field is a "Key: value" field; continuation lines stay in Value.
type Field struct{ Key, Value string }

// Get returns the value of key (case-insensitive), or "".
func (s Stanza) Get(key string) string {
	for _, f := range s {
		if strings.EqualFold(f.Key, key) {
			return f.Value
		}
	}
	return ""
}

// Set sets key, appending it when missing.
func (s Stanza) Set(key, value string) Stanza {
	for i, f := range s {
		if strings.EqualFold(f.Key, key) {
			s[i].Value = value
			return s
		}
	}
	return append(s, Field{key, value})
}

// ParseDpkgStatus splits dpkg's status (or a control file) into stanzas.
func ParseDpkgStatus(text string) []Stanza {
	var out []Stanza
	var cur Stanza
	for _, l := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n") {
		switch {
		case strings.TrimSpace(l) == "":
			if len(cur) > 0 {
				out = append(out, cur)
				cur = nil
			}
		case l[0] == ' ' || l[0] == '\t':
			if len(cur) > 0 {
				cur[len(cur)-1].Value += "\n" + l
			}
		default:
			k, v, ok := strings.Cut(l, ":")
			if ok {
				cur = append(cur, Field{strings.TrimSpace(k), strings.TrimSpace(v)})
			}
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// FormatDpkgStatus writes stanzas back in dpkg's format.
func FormatDpkgStatus(st []Stanza) string {
	var b strings.Builder
	for i, s := range st {
		if i > 0 {
			b.WriteString("\n")
		}
		for _, f := range s {
			if f.Value == "" {
				fmt.Fprintf(&b, "%s:\n", f.Key)
			} else {
				fmt.Fprintf(&b, "%s: %s\n", f.Key, f.Value)
			}
		}
	}
	return b.String()
}

// Installed is a package installed in an image.
type Installed struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Summary string `json:"summary,omitempty"`
}

// ListPackages reads what is installed in the ext2/3/4 image at path,
// without booting it: /var/log/packages (Slackware) and
// /var/lib/dpkg/status (Debian, packages whose status is "installed").
func ListPackages(path string) ([]Installed, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	var out []Installed
	recs, err := slackRecords(path)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		out = append(out, Installed{Kind: Slackware, Name: r.Name, Summary: r.Summary()})
	}
	status, _, err := debugfsCat(path, "/var/lib/dpkg/status")
	if err != nil {
		return nil, err
	}
	for _, s := range ParseDpkgStatus(string(status)) {
		if !strings.HasSuffix(s.Get("Status"), " installed") {
			continue
		}
		sum, _, _ := strings.Cut(s.Get("Description"), "\n")
		out = append(out, Installed{Kind: Debian, Name: s.Get("Package"), Version: s.Get("Version"), Summary: sum})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind > out[j].Kind
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// slackRecords reads /var/log/packages from the image.
func slackRecords(img string) ([]*SlackRecord, error) {
	tmp, err := os.MkdirTemp("", "umlkit-pkgs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if _, exists, err := debugfs(img, "stat /var/log/packages"); err != nil || !exists {
		return nil, err
	}
	if _, _, err := debugfs(img, "rdump /var/log/packages "+tmp); err != nil {
		return nil, err
	}
	files, _ := filepath.Glob(filepath.Join(tmp, "packages", "*"))
	var out []*SlackRecord
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		r, err := ParseSlackRecord(string(b))
		if err != nil {
			return nil, fmt.Errorf("image %s: /var/log/packages/%s: %w", img, filepath.Base(f), err)
		}
		out = append(out, r)
	}
	return out, nil
}

// debugfsCat returns the file at guest path in the image, and whether it
// exists.
func debugfsCat(img, path string) ([]byte, bool, error) {
	return debugfs(img, "cat "+path)
}

// debugfs runs one read-only debugfs request on img. exists is false when
// debugfs says the path is not there.
func debugfs(img, request string) ([]byte, bool, error) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		return nil, false, fmt.Errorf("debugfs not found: install it with: apt-get install e2fsprogs")
	}
	cmd := exec.Command("debugfs", "-R", request, img)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, false, fmt.Errorf("image %s: debugfs %s: %w: %s", img, request, err, strings.TrimSpace(stderr.String()))
	}
	e := stderr.String()
	if strings.Contains(e, "not found by ext2_lookup") || strings.Contains(e, "File not found") {
		return nil, false, nil
	}
	if strings.Contains(e, "Bad magic number") || strings.Contains(e, "while trying to open") {
		return nil, false, fmt.Errorf("image %s is not an ext2/3/4 filesystem (debugfs: %s)", img, strings.TrimSpace(e))
	}
	return stdout.Bytes(), true, nil
}

// debugfsWrite runs a debugfs request that changes img.
func debugfsWrite(img, request string) error {
	cmd := exec.Command("debugfs", "-w", "-R", request, img)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("image %s: debugfs -w %s: %w: %s", img, request, err, strings.TrimSpace(string(out)))
	}
	if s := string(out); strings.Contains(s, "rror") || strings.Contains(s, "not found") || strings.Contains(s, "No free space") {
		return fmt.Errorf("image %s: debugfs -w %s: %s", img, request, strings.TrimSpace(s))
	}
	return nil
}

// SymlinksOf returns the links a Slackware doinst.sh makes, relative to
// the root: makepkg writes them as "( cd DIR ; ln -sf TARGET LINK )";
// plain "ln -s[f] TARGET LINK" lines count too.
func SymlinksOf(script string) []string {
	var out []string
	for _, l := range strings.Split(script, "\n") {
		l = strings.TrimSpace(l)
		dir := ""
		if strings.HasPrefix(l, "(") && strings.HasSuffix(l, ")") {
			inner := strings.TrimSpace(l[1 : len(l)-1])
			cd, rest, ok := strings.Cut(inner, ";")
			if !ok {
				continue
			}
			f := strings.Fields(cd)
			if len(f) != 2 || f[0] != "cd" {
				continue
			}
			dir, l = f[1], strings.TrimSpace(rest)
		}
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != "ln" || (f[1] != "-sf" && f[1] != "-s" && f[1] != "-fs") {
			continue
		}
		link := strings.TrimPrefix(filepath.Clean(filepath.Join("/", dir, f[3])), "/")
		if link != "" && link != "." {
			out = append(out, link)
		}
	}
	return out
}
