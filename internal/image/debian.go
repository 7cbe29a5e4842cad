package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// DefaultSuite is the Debian suite BuildDebian installs when none is given.
const DefaultSuite = "bookworm"

// Presets are named package sets for common lab roles.
var Presets = map[string][]string{
	"router": {"iproute2", "iputils-ping", "tcpdump", "iptables", "frr"},
	"vpn":    {"iproute2", "iputils-ping", "strongswan"},
	"dns":    {"iproute2", "iputils-ping", "bind9", "bind9-dnsutils"},
	"web":    {"iproute2", "iputils-ping", "lighttpd"},
	"client": {"iproute2", "iputils-ping", "bind9-dnsutils", "curl", "traceroute"},
}

// PresetNames lists the presets in order.
func PresetNames() []string {
	var names []string
	for n := range Presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DebianOptions configures BuildDebian.
type DebianOptions struct {
	// Suite is the Debian suite; empty means DefaultSuite.
	Suite string
	// Mirror is the archive URL; empty means the host's apt sources
	// (HostMirror), else debootstrap's default.
	Mirror string
	// Packages are installed on top of minbase.
	Packages []string
	// Umlkit is a statically linked umlkit: it goes in as /sbin/umlkit
	// and /sbin/init (the image's own init, if any, stays as
	// /sbin/init.debian).
	Umlkit string
	// Progress gets debootstrap's progress lines and the build's steps;
	// nil means none.
	Progress io.Writer
	// Work is a directory for the root tree (large); empty means next
	// to out.
	Work string
	// Modules is the host's directory of UML kernel modules (one
	// subdirectory per kernel release), copied to /lib/modules with kmod
	// to load them (netfilter, for one, is modular in Debian's kernel);
	// empty means UMLModules, "-" means none.
	Modules string
}

// UMLModules is where Debian's user-mode-linux package puts the kernel's
// modules.
const UMLModules = "/usr/lib/uml/modules"

// BuildDebian builds a Debian root filesystem with debootstrap
// (--variant=minbase, plus opts.Packages), adds umlkit as its init, and
// writes it to out as a sparse ext4 image sized to fit with room to spare.
// It needs root (debootstrap chroots) and network access to the mirror.
// out is written through a temporary file and a rename. It returns the
// mirror it used ("" for debootstrap's default).
func BuildDebian(ctx context.Context, out string, opts DebianOptions) (string, error) {
	fail := func(err error) (string, error) { return "", fmt.Errorf("build debian image %s: %w", out, err) }
	for _, tool := range []string{"debootstrap", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := map[string]string{"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs"}[tool]
			return fail(fmt.Errorf("%s not found: install it with: apt-get install %s", tool, pkg))
		}
	}
	if os.Geteuid() != 0 {
		return fail(errors.New("debootstrap needs root: run it with sudo"))
	}
	if opts.Umlkit == "" {
		return fail(errors.New("no umlkit binary for the guest"))
	}
	if ok, err := IsStatic(opts.Umlkit); err != nil || !ok {
		return fail(fmt.Errorf("umlkit for the guest (%s) must be statically linked: build it with make build (CGO_ENABLED=0)", opts.Umlkit))
	}
	suite := opts.Suite
	if suite == "" {
		suite = DefaultSuite
	}
	mirror := opts.Mirror
	if mirror == "" {
		mirror = HostMirror()
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	work := opts.Work
	if work == "" {
		work = filepath.Dir(out)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fail(err)
	}
	stage, err := os.MkdirTemp(work, ".debootstrap-")
	if err != nil {
		return fail(err)
	}
	defer removeTree(stage)
	modules := opts.Modules
	if modules == "" {
		modules = UMLModules
	}
	releases, _ := filepath.Glob(filepath.Join(modules, "*", "modules.dep"))
	pkgs := opts.Packages
	if modules != "-" && len(releases) > 0 {
		pkgs = append(append([]string(nil), pkgs...), "kmod")
	}
	args := []string{"--variant=minbase"}
	if len(pkgs) > 0 {
		args = append(args, "--include="+strings.Join(pkgs, ","))
	}
	args = append(args, suite, stage)
	if mirror != "" {
		args = append(args, mirror)
	}
	src := mirror
	if src == "" {
		src = "debootstrap's default mirror"
	}
	fmt.Fprintf(progress, "debootstrap %s (minbase%s) from %s\n", suite, plusPackages(opts.Packages), src)
	if err := runProgress(ctx, progress, "debootstrap", args...); err != nil {
		return fail(fmt.Errorf("debootstrap %s: %w", strings.Join(args, " "), err))
	}
	if modules != "-" {
		for _, dep := range releases {
			rel := filepath.Dir(dep)
			fmt.Fprintf(progress, "adding the kernel's modules (%s)\n", filepath.Base(rel))
			dst := inRoot(stage, "/lib/modules")
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return fail(err)
			}
			if b, err := exec.CommandContext(ctx, "cp", "-a", rel, dst).CombinedOutput(); err != nil {
				return fail(fmt.Errorf("copy modules %s: %w: %s", rel, err, strings.TrimSpace(string(b))))
			}
		}
	}
	fmt.Fprintln(progress, "adding umlkit as init")
	if err := finishDebian(stage, opts.Umlkit); err != nil {
		return fail(err)
	}
	used, files, err := treeUsage(stage)
	if err != nil {
		return fail(err)
	}
	// Room to spare: a third more than the files use, and 256 MiB; the
	// file is sparse, so the spare room costs nothing until used.
	size := (used + used/3 + 256<<20 + 1<<20 - 1) &^ (1<<20 - 1)
	inodes := files + files/2 + 16384
	fmt.Fprintf(progress, "mkfs.ext4: %d MiB, %d files\n", size>>20, files)
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	defer os.Remove(tmp)
	mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "umlkit", "-N", fmt.Sprint(inodes),
		"-E", "root_owner=0:0", "-d", stage, tmp, fmt.Sprintf("%dk", size/1024))
	if b, err := mkfs.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(b))))
	}
	if err := os.Rename(tmp, out); err != nil {
		return fail(err)
	}
	return mirror, nil
}

func plusPackages(p []string) string {
	if len(p) == 0 {
		return ""
	}
	return " + " + strings.Join(p, " ")
}

// runProgress runs a command with its output, line by line, on w; on
// failure the error carries the last lines.
func runProgress(ctx context.Context, w io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return err
	}
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintf(w, "  %s\n", line)
			tail = append(tail, line)
			if len(tail) > 8 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%w:\n%s", err, strings.Join(tail, "\n"))
	}
	return nil
}

// inRoot resolves p (absolute, inside the tree root) without leaving the
// tree: symlinks on the way (such as merged /usr's sbin -> usr/sbin) are
// followed relative to root.
func inRoot(root, p string) string {
	cur := root
	parts := strings.Split(strings.Trim(p, "/"), "/")
	for i, part := range parts {
		next := filepath.Join(cur, part)
		if i < len(parts)-1 {
			for n := 0; n < 8; n++ {
				target, err := os.Readlink(next)
				if err != nil {
					break
				}
				if filepath.IsAbs(target) {
					next = filepath.Join(root, target)
				} else {
					next = filepath.Join(filepath.Dir(next), target)
				}
				if !strings.HasPrefix(next, root) {
					next = filepath.Join(root, part)
					break
				}
			}
		}
		cur = next
	}
	return cur
}

// finishDebian adds umlkit as init, gives root an empty password (the
// console is the host user's), and drops apt's downloaded archives.
func finishDebian(root, umlkit string) error {
	bin := inRoot(root, "/sbin/umlkit")
	if err := copyFile(umlkit, bin, 0o755); err != nil {
		return err
	}
	init := inRoot(root, "/sbin/init")
	if _, err := os.Lstat(init); err == nil {
		if err := os.Rename(init, init+".debian"); err != nil {
			return err
		}
	}
	if err := os.Symlink("umlkit", init); err != nil {
		return err
	}
	shadow := inRoot(root, "/etc/shadow")
	if b, err := os.ReadFile(shadow); err == nil {
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[0] == "root" {
				lines[i] = "root::" + f[2]
			}
		}
		if err := os.WriteFile(shadow, []byte(strings.Join(lines, "\n")), 0o640); err != nil {
			return err
		}
	}
	os.WriteFile(inRoot(root, "/etc/hostname"), []byte("uml\n"), 0o644)
	// iptables-nft fails in the guest until nf_tables is loaded by hand
	// (TABLE_ADD: Operation not supported), while the legacy tools load
	// their modules on demand: labs expect iptables to just work.
	for _, t := range []string{"iptables", "ip6tables"} {
		legacy := "/usr/sbin/" + t + "-legacy"
		if _, err := os.Stat(inRoot(root, legacy)); err == nil {
			if b, err := exec.Command("chroot", root, "update-alternatives", "--set", t, legacy).CombinedOutput(); err != nil {
				return fmt.Errorf("update-alternatives --set %s: %w: %s", t, err, strings.TrimSpace(string(b)))
			}
		}
	}
	debs, _ := filepath.Glob(filepath.Join(inRoot(root, "/var/cache/apt/archives"), "*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	return nil
}

// treeUsage sums the disk blocks and counts the entries under root.
func treeUsage(root string) (int64, int64, error) {
	var used, n int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			used += st.Blocks * 512
		} else {
			used += info.Size()
		}
		return nil
	})
	return used, n, err
}

// removeTree removes a build tree, first unmounting anything a failed
// debootstrap left mounted inside it (its /proc, /sys), so the removal
// never reaches into the host's.
func removeTree(root string) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return
	}
	b, _ := os.ReadFile("/proc/self/mounts")
	var mounts []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && strings.HasPrefix(f[1], abs+"/") {
			mounts = append(mounts, f[1])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			return // leave the tree rather than delete through a mount
		}
	}
	os.RemoveAll(abs)
}

// HostMirror returns the Debian archive the host's apt sources use (the
// first "deb" source of a main suite), or "" when there is none.
func HostMirror() string {
	var texts []string
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		texts = append(texts, string(b))
	}
	for _, pat := range []string{"/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources"} {
		files, _ := filepath.Glob(pat)
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				if strings.HasSuffix(f, ".sources") {
					texts = append(texts, Deb822ToList(string(b)))
				} else {
					texts = append(texts, string(b))
				}
			}
		}
	}
	for _, t := range texts {
		if m := MirrorFromSources(t); m != "" {
			return m
		}
	}
	return ""
}

// MirrorFromSources returns the URI of the first one-line "deb" entry in
// sources.list text whose suite is a main suite (no "-security",
// "-updates", ... and no "/"), or "".
func MirrorFromSources(text string) string {
	for _, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") { // options: [arch=amd64 signed-by=...]
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) < 2 {
			continue
		}
		uri, suite := f[0], f[1]
		if strings.ContainsAny(suite, "-/") || !strings.Contains(uri, "://") {
			continue
		}
		return uri
	}
	return ""
}

// Deb822ToList turns deb822 .sources stanzas into one-line entries.
func Deb822ToList(text string) string {
	var out strings.Builder
	for _, stanza := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		var key string
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
				continue
			}
			if (line[0] == ' ' || line[0] == '\t') && key != "" {
				fields[key] += " " + strings.TrimSpace(line)
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			key = strings.ToLower(strings.TrimSpace(k))
			fields[key] = strings.TrimSpace(v)
		}
		if strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		types := strings.Fields(fields["types"])
		hasDeb := false
		for _, t := range types {
			hasDeb = hasDeb || t == "deb"
		}
		if !hasDeb {
			continue
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			for _, suite := range strings.Fields(fields["suites"]) {
				fmt.Fprintf(&out, "deb %s %s %s\n", uri, suite, fields["components"])
			}
		}
	}
	return out.String()
}
