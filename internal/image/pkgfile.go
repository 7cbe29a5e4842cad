package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Package kinds.
const (
	Slackware = "slackware"
	Debian    = "debian"
)

// PackageError says what is wrong with a package file.
type PackageError struct {
	Path   string
	Reason string
	Err    error
}

func (e *PackageError) Error() string {
	s := fmt.Sprintf("package %s: %s", e.Path, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *PackageError) Unwrap() error { return e.Err }

// Package is a package file, read and checked on the host.
type Package struct {
	Path string
	Kind string
	// Name is what the package is recorded as: Slackware's full name
	// (foo-1.0-x86_64-1) or Debian's package name.
	Name    string
	Version string // Debian only
	// CompressedSize is the file's size; UncompressedSize the size of its
	// (data) tar stream.
	CompressedSize   int64
	UncompressedSize int64
	// Files are the archive's entries in order, as installpkg lists
	// them ("./", "usr/", "usr/bin/foo").
	Files []string
	// Desc is the package's lines of install/slack-desc (Slackware).
	Desc []string
	// Doinst: the package has install/doinst.sh (Slackware).
	Doinst bool
	// Control is the Debian control file's text.
	Control string
}

// OpenPackage reads and checks the package at path (.tgz or .txz for
// Slackware, .deb for Debian), writing its uncompressed (data) tar
// stream to tarOut. A file that is not a valid package is a
// *PackageError.
func OpenPackage(path string, tarOut io.Writer) (*Package, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &PackageError{Path: path, Reason: "cannot read it", Err: err}
	}
	base := filepath.Base(path)
	p := &Package{Path: path, CompressedSize: st.Size()}
	switch {
	case strings.HasSuffix(base, ".tgz"), strings.HasSuffix(base, ".txz"):
		p.Kind = Slackware
		p.Name = base[:len(base)-4]
		f, err := os.Open(path)
		if err != nil {
			return nil, &PackageError{Path: path, Reason: "cannot read it", Err: err}
		}
		defer f.Close()
		if err := p.readSlackware(f, strings.HasSuffix(base, ".txz"), tarOut); err != nil {
			return nil, err
		}
	case strings.HasSuffix(base, ".deb"):
		p.Kind = Debian
		f, err := os.Open(path)
		if err != nil {
			return nil, &PackageError{Path: path, Reason: "cannot read it", Err: err}
		}
		defer f.Close()
		if err := p.readDeb(f, tarOut); err != nil {
			return nil, err
		}
	default:
		return nil, &PackageError{Path: path, Reason: "unknown package type: want a Slackware .tgz or .txz, or a Debian .deb"}
	}
	return p, nil
}

// SlackShortName is a Slackware package's name without version, arch and
// build (foo-bar-1.0-x86_64-1 -> foo-bar).
func SlackShortName(full string) string {
	f := strings.Split(full, "-")
	if len(f) <= 3 {
		return full
	}
	return strings.Join(f[:len(f)-3], "-")
}

func (p *Package) readSlackware(r io.Reader, isXZ bool, tarOut io.Writer) error {
	dr, wait, err := decompress(r, map[bool]string{true: "xz", false: "gz"}[isXZ])
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "not a compressed tar archive", Err: err}
	}
	files, n, contents, err := readTar(dr, tarOut, map[string]bool{"install/slack-desc": true})
	if werr := wait(); err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "not a valid package archive", Err: err}
	}
	if len(files) == 0 {
		return &PackageError{Path: p.Path, Reason: "the archive is empty"}
	}
	p.Files, p.UncompressedSize = files, n
	short := SlackShortName(p.Name)
	for _, l := range strings.Split(string(contents["install/slack-desc"]), "\n") {
		if strings.HasPrefix(l, short+":") {
			p.Desc = append(p.Desc, l)
		}
	}
	for _, f := range files {
		if f == "install/doinst.sh" {
			p.Doinst = true
		}
	}
	return nil
}

// readTar copies a tar stream to out while checking it, and returns its
// entry names (normalised as installpkg lists them), its size, and the
// contents of the entries named in want.
func readTar(r io.Reader, out io.Writer, want map[string]bool) ([]string, int64, map[string][]byte, error) {
	cr := &countReader{r: r}
	tee := io.TeeReader(cr, out)
	tr := tar.NewReader(tee)
	var files []string
	contents := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, 0, nil, err
		}
		name := strings.TrimPrefix(h.Name, "./")
		if name == "" || name == "." {
			name = "./"
		}
		if strings.HasPrefix(name, "/") || strings.Contains("/"+name+"/", "/../") {
			return nil, 0, nil, fmt.Errorf("entry %q leaves the root", h.Name)
		}
		files = append(files, name)
		if want[strings.TrimSuffix(name, "/")] {
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				return nil, 0, nil, err
			}
			contents[strings.TrimSuffix(name, "/")] = b
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return nil, 0, nil, err
		}
	}
	// The rest of the stream (padding) goes out too, so out is the
	// whole tar stream.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, 0, nil, err
	}
	return files, cr.n, contents, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// decompress returns the decompressed stream of r; gz is done here, xz,
// zst and bz2 by the host's tools. wait reports the tool's failure.
func decompress(r io.Reader, kind string) (io.Reader, func() error, error) {
	switch kind {
	case "", "tar":
		return r, func() error { return nil }, nil
	case "gz":
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() error { return nil }, nil
	}
	tool := map[string]string{"xz": "xz", "zst": "zstd", "bz2": "bzip2"}[kind]
	if tool == "" {
		return nil, nil, fmt.Errorf("unknown compression %q", kind)
	}
	if _, err := exec.LookPath(tool); err != nil {
		return nil, nil, fmt.Errorf("%s not found: install it (apt-get install %s)", tool, map[string]string{"xz": "xz-utils", "zstd": "zstd", "bzip2": "bzip2"}[tool])
	}
	cmd := exec.Command(tool, "-dc")
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return out, func() error {
		io.Copy(io.Discard, out)
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("%s -dc: %v: %s", tool, err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}, nil
}

// ArMember is one member of an ar archive.
type ArMember struct {
	Name string
	Data []byte
}

// ParseAr reads an ar archive (the container of a .deb) with members of
// up to limit bytes each.
func ParseAr(b []byte, limit int64) ([]ArMember, error) {
	const magic = "!<arch>\n"
	if !bytes.HasPrefix(b, []byte(magic)) {
		return nil, errors.New("not an ar archive (no !<arch> magic)")
	}
	off := len(magic)
	var out []ArMember
	for off < len(b) {
		if len(b)-off < 60 {
			return nil, fmt.Errorf("truncated member header at offset %d", off)
		}
		h := b[off : off+60]
		if string(h[58:60]) != "`\n" {
			return nil, fmt.Errorf("bad member header at offset %d", off)
		}
		name := strings.TrimRight(strings.TrimSpace(string(h[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(h[48:58])), 10, 64)
		if err != nil || size < 0 || size > limit {
			return nil, fmt.Errorf("bad size of member %q at offset %d", name, off)
		}
		off += 60
		if int64(len(b)-off) < size {
			return nil, fmt.Errorf("member %q is truncated", name)
		}
		out = append(out, ArMember{Name: name, Data: b[off : off+int(size)]})
		off += int(size)
		if off%2 == 1 && off < len(b) {
			off++
		}
	}
	return out, nil
}

func (p *Package) readDeb(f *os.File, tarOut io.Writer) error {
	b, err := io.ReadAll(io.LimitReader(f, 4<<30))
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "cannot read it", Err: err}
	}
	members, err := ParseAr(b, 4<<30)
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "not a Debian package", Err: err}
	}
	var control, data *ArMember
	for i := range members {
		m := &members[i]
		switch {
		case strings.HasPrefix(m.Name, "control.tar"):
			control = m
		case strings.HasPrefix(m.Name, "data.tar"):
			data = m
		}
	}
	if len(members) == 0 || members[0].Name != "debian-binary" || control == nil || data == nil {
		return &PackageError{Path: p.Path, Reason: "not a Debian package (want debian-binary, control.tar.* and data.tar.*)"}
	}
	cr, wait, err := decompress(bytes.NewReader(control.Data), strings.TrimPrefix(filepath.Ext(control.Name), "."))
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "bad " + control.Name, Err: err}
	}
	_, _, ctl, err := readTar(cr, io.Discard, map[string]bool{"control": true})
	if werr := wait(); err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "bad " + control.Name, Err: err}
	}
	p.Control = strings.TrimRight(string(ctl["control"]), "\n") + "\n"
	st := ParseDpkgStatus(p.Control)
	if len(st) == 0 || st[0].Get("Package") == "" {
		return &PackageError{Path: p.Path, Reason: "its control file names no package"}
	}
	p.Name, p.Version = st[0].Get("Package"), st[0].Get("Version")
	dr, wait, err := decompress(bytes.NewReader(data.Data), strings.TrimPrefix(filepath.Ext(data.Name), "."))
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "bad " + data.Name, Err: err}
	}
	files, n, _, err := readTar(dr, tarOut, nil)
	if werr := wait(); err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		return &PackageError{Path: p.Path, Reason: "bad " + data.Name, Err: err}
	}
	p.Files, p.UncompressedSize = files, n
	return nil
}
