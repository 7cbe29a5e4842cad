package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/console"
	"github.com/umlkit/umlkit/internal/kernel"
)

// InstallOptions configures Install and Remove.
type InstallOptions struct {
	// Image is the image file. Install changes it unless COW is set.
	Image string
	// COW, when set, is an instance's COW file over Image: the packages
	// go into it and Image is left alone.
	COW string
	// Umlkit is a statically linked umlkit that runs as the guest's init
	// during the install (the image's own umlkit is not needed).
	Umlkit string
	// Progress gets one line per step; nil means none.
	Progress io.Writer
	// Mem is the guest's memory; empty means 256M.
	Mem string
	// Timeout bounds the boot and each step; zero means 2 minutes.
	Timeout time.Duration
}

// Install installs the package files pkgs into the image, as the seed
// does by hand: it boots the image under UML with the packages shared
// through hostfs (confined to a directory holding only them), installs
// each inside the guest through the exec agent, and powers off.
// Slackware packages are unpacked at /, their install/doinst.sh is run and
// they are recorded in /var/log/packages like installpkg does; Debian
// packages go through dpkg -i where the image has dpkg, else they are
// unpacked and recorded in dpkg's database. The work happens on a copy
// that replaces the target only when every package installed, so a
// failure leaves the image (or COW file) byte-identical.
func Install(ctx context.Context, pkgs []string, opts InstallOptions) ([]*Package, error) {
	target := opts.Image
	if opts.COW != "" {
		target = opts.COW
	}
	s, err := newSession(opts)
	if err != nil {
		return nil, fmt.Errorf("install into %s: %w", target, err)
	}
	defer s.close()
	var list []*Package
	for _, p := range pkgs {
		pkg, err := s.stage(p)
		if err != nil {
			return nil, fmt.Errorf("install into %s: %w", target, err)
		}
		list = append(list, pkg)
	}
	hasDpkg := false
	if opts.COW == "" {
		hasDpkg = realDpkg(s.copy)
	} else {
		hasDpkg = realDpkg(opts.Image)
	}
	var status []Stanza
	for _, p := range list {
		if p.Kind == Debian && !hasDpkg && status == nil {
			b, _, err := debugfsCat(s.imageForRead(), "/var/lib/dpkg/status")
			if err != nil {
				return nil, err
			}
			status = ParseDpkgStatus(string(b))
		}
	}
	if opts.COW == "" {
		var need int64
		for _, p := range list {
			need += p.UncompressedSize
		}
		if err := s.grow(ctx, need); err != nil {
			return nil, fmt.Errorf("install into %s: %w", target, err)
		}
	}
	if err := s.boot(ctx); err != nil {
		return nil, fmt.Errorf("install into %s: %w", target, err)
	}
	for i, p := range list {
		s.progressf("installing %s (%s)", p.Name, p.Kind)
		var script string
		tarName := fmt.Sprintf("/mnt/%d.tar", i)
		switch {
		case p.Kind == Slackware:
			rec := FormatSlackRecord(p, p.Path)
			if err := os.WriteFile(filepath.Join(s.stageDir, fmt.Sprintf("%d.record", i)), []byte(rec), 0o644); err != nil {
				return nil, err
			}
			script = fmt.Sprintf(`set -e
cd /
tar -xpf %[1]s
if [ -f install/doinst.sh ]; then
	sh install/doinst.sh -install
	mkdir -p /var/log/scripts
	cp install/doinst.sh /var/log/scripts/%[2]s
fi
rm -rf /install
mkdir -p /var/log/packages
cp /mnt/%[3]d.record /var/log/packages/%[2]s
`, tarName, p.Name, i)
		case hasDpkg:
			script = fmt.Sprintf("DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/%d.deb", i)
		default:
			stz := ParseDpkgStatus(p.Control)[0]
			stz = append(Stanza{{"Package", p.Name}, {"Status", "install ok installed"}}, withoutKey(stz, "Package", "Status")...)
			status = replacePackage(status, stz)
			if err := os.WriteFile(filepath.Join(s.stageDir, fmt.Sprintf("%d.status", i)), []byte(FormatDpkgStatus(status)), 0o644); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(s.stageDir, fmt.Sprintf("%d.list", i)), []byte(dpkgList(p.Files)), 0o644); err != nil {
				return nil, err
			}
			script = fmt.Sprintf(`set -e
cd /
tar -xpf %[1]s
mkdir -p /var/lib/dpkg/info
cp /mnt/%[2]d.list /var/lib/dpkg/info/%[3]s.list
cp /mnt/%[2]d.status /var/lib/dpkg/status
`, tarName, i, p.Name)
		}
		if out, err := s.run(ctx, script); err != nil {
			return nil, fmt.Errorf("install %s into %s: %w%s", p.Path, target, err, indent(out))
		}
	}
	if err := s.finish(ctx); err != nil {
		return nil, fmt.Errorf("install into %s: %w", target, err)
	}
	return list, nil
}

// Remove undoes a Slackware install in the image like removepkg: it
// deletes the package's files that no other package lists, the links its
// doinst.sh made, and the directories left empty, and moves its records to
// /var/log/removed_packages and /var/log/removed_scripts.
func Remove(ctx context.Context, name string, opts InstallOptions) (*SlackRecord, error) {
	target := opts.Image
	if opts.COW != "" {
		target = opts.COW
		return nil, fmt.Errorf("remove %s from %s: removing from a COW file is not supported; remove it from the image", name, target)
	}
	recs, err := slackRecords(opts.Image)
	if err != nil {
		return nil, err
	}
	var rec *SlackRecord
	others := map[string]bool{}
	for _, r := range recs {
		if r.Name == name || SlackShortName(r.Name) == name && rec == nil {
			rec = r
			continue
		}
		for _, f := range r.Files {
			others[f] = true
		}
	}
	if rec == nil {
		return nil, fmt.Errorf("remove %s from %s: no such Slackware package in /var/log/packages (umlkit image packages %s lists them)", name, target, target)
	}
	script, _, err := debugfsCat(opts.Image, "/var/log/scripts/"+rec.Name)
	if err != nil {
		return nil, err
	}
	var sh strings.Builder
	sh.WriteString("cd /\n")
	var dirs []string
	for _, f := range rec.Files {
		switch {
		case f == "./" || strings.HasPrefix(f, "install/") || others[f]:
		case strings.HasSuffix(f, "/"):
			dirs = append(dirs, strings.TrimSuffix(f, "/"))
		default:
			fmt.Fprintf(&sh, "rm -f %s\n", shellQuote(f))
		}
	}
	for _, l := range SymlinksOf(string(script)) {
		if !others[l] {
			fmt.Fprintf(&sh, "[ -L %[1]s ] && rm -f %[1]s\n", shellQuote(l))
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		fmt.Fprintf(&sh, "rmdir %s 2>/dev/null\n", shellQuote(dirs[i]))
	}
	fmt.Fprintf(&sh, "mkdir -p /var/log/removed_packages /var/log/removed_scripts\nmv /var/log/packages/%[1]s /var/log/removed_packages/%[1]s\n[ -f /var/log/scripts/%[1]s ] && mv /var/log/scripts/%[1]s /var/log/removed_scripts/%[1]s\ntrue\n", shellQuote(rec.Name))
	s, err := newSession(opts)
	if err != nil {
		return nil, fmt.Errorf("remove %s from %s: %w", name, target, err)
	}
	defer s.close()
	if err := s.boot(ctx); err != nil {
		return nil, fmt.Errorf("remove %s from %s: %w", name, target, err)
	}
	s.progressf("removing %s", rec.Name)
	if out, err := s.run(ctx, sh.String()); err != nil {
		return nil, fmt.Errorf("remove %s from %s: %w%s", name, target, err, indent(out))
	}
	if err := s.finish(ctx); err != nil {
		return nil, fmt.Errorf("remove %s from %s: %w", name, target, err)
	}
	return rec, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func indent(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return "\n  " + strings.ReplaceAll(s, "\n", "\n  ")
}

func withoutKey(s Stanza, keys ...string) Stanza {
	var out Stanza
next:
	for _, f := range s {
		for _, k := range keys {
			if strings.EqualFold(f.Key, k) {
				continue next
			}
		}
		out = append(out, f)
	}
	return out
}

func replacePackage(status []Stanza, s Stanza) []Stanza {
	for i, x := range status {
		if x.Get("Package") == s.Get("Package") {
			status[i] = s
			return status
		}
	}
	return append(status, s)
}

// dpkgList is a package's info/NAME.list: every path, absolute, "/." first.
func dpkgList(files []string) string {
	var b strings.Builder
	for _, f := range files {
		if f == "./" {
			b.WriteString("/.\n")
			continue
		}
		b.WriteString("/" + strings.TrimSuffix(f, "/") + "\n")
	}
	return b.String()
}

// realDpkg reports whether the image has dpkg itself (not busybox's).
func realDpkg(img string) bool {
	for _, p := range []string{"/usr/bin/dpkg", "/bin/dpkg"} {
		out, exists, err := debugfs(img, "stat "+p)
		if err == nil && exists && strings.Contains(string(out), "Type: regular") {
			return true
		}
	}
	return false
}

// session is one boot of a copy of the image (or COW file) for changes.
type session struct {
	opts     InstallOptions
	target   string // what the copy replaces at the end
	copy     string
	stageDir string // shared with the guest through hostfs
	umlDir   string
	injected bool // umlkit written into the copy as its init for this boot

	cmd    *exec.Cmd
	con    *console.Console
	agentF *os.File
	client *agent.Client
	done   chan struct{}
	exit   error
}

const injectedInit = "/.umlkit-install/init"

func newSession(opts InstallOptions) (*session, error) {
	if opts.Umlkit == "" {
		return nil, errors.New("no umlkit binary for the guest")
	}
	if ok, err := IsStatic(opts.Umlkit); err != nil || !ok {
		return nil, fmt.Errorf("umlkit for the guest (%s) must be statically linked: build it with make build (CGO_ENABLED=0)", opts.Umlkit)
	}
	if _, err := os.Stat(opts.Image); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	target := opts.Image
	if opts.COW != "" {
		target = opts.COW
	}
	s := &session{opts: opts, target: target, done: make(chan struct{})}
	var err error
	if s.stageDir, err = os.MkdirTemp("", "umlkit-pkgs-"); err != nil {
		return nil, err
	}
	if s.umlDir, err = os.MkdirTemp("", "uml"); err != nil {
		s.close()
		return nil, err
	}
	s.copy = filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".install")
	os.Remove(s.copy)
	s.progressf("copying %s", target)
	if err := sparseCopy(target, s.copy); err != nil {
		s.close()
		return nil, fmt.Errorf("copy %s: %w", target, err)
	}
	return s, nil
}

func (s *session) imageForRead() string {
	if s.opts.COW != "" {
		return s.opts.Image
	}
	return s.copy
}

func (s *session) progressf(format string, a ...any) {
	if s.opts.Progress != nil {
		fmt.Fprintf(s.opts.Progress, format+"\n", a...)
	}
}

// stage checks the package file and puts what the guest needs in the
// shared directory: the plain tar stream, or the .deb for dpkg.
func (s *session) stage(path string) (*Package, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	n, _ := os.ReadDir(s.stageDir)
	i := 0
	for _, e := range n {
		if strings.HasSuffix(e.Name(), ".tar") {
			i++
		}
	}
	tarPath := filepath.Join(s.stageDir, fmt.Sprintf("%d.tar", i))
	f, err := os.Create(tarPath)
	if err != nil {
		return nil, err
	}
	p, err := OpenPackage(abs, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	if p.Kind == Debian {
		if err := os.Link(abs, filepath.Join(s.stageDir, fmt.Sprintf("%d.deb", i))); err != nil {
			if err := copyFile(abs, filepath.Join(s.stageDir, fmt.Sprintf("%d.deb", i)), 0o644); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

func (s *session) boot(ctx context.Context) error {
	k, err := kernel.Find()
	if err != nil {
		return err
	}
	initArg := ""
	if s.opts.COW == "" {
		// umlkit is the init for this boot, whatever the image's own is.
		if err := debugfsWrite(s.copy, "mkdir /.umlkit-install"); err != nil {
			return err
		}
		if err := debugfsWrite(s.copy, "write "+s.opts.Umlkit+" "+injectedInit); err != nil {
			return err
		}
		s.injected = true
		initArg = "init=" + injectedInit
	} else if out, _, _ := debugfs(s.opts.Image, "stat /sbin/init"); !strings.Contains(string(out), "umlkit") {
		return fmt.Errorf("installing into a COW file needs an image whose /sbin/init is umlkit (%s's is not)", s.opts.Image)
	}
	root := s.copy
	if s.opts.COW != "" {
		root = s.copy + "," + s.opts.Image
	}
	mem := s.opts.Mem
	if mem == "" {
		mem = "256M"
	}
	b := make([]byte, 4)
	rand.Read(b)
	umid := "umlkit-install-" + hex.EncodeToString(b)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	host, guest := os.NewFile(uintptr(fds[0]), "agent-host"), os.NewFile(uintptr(fds[1]), "agent-guest")
	s.agentF = host
	args := []string{"ubd0=" + root, "mem=" + mem, "umid=" + umid, "uml_dir=" + s.umlDir + "/",
		"con=null", "ssl=null", "con0=fd:0,fd:1", "ssl1=fd:3", "umlkit.agent=ttyS1", "umlkit.shell=0",
		"hostname=install", "hostfs=" + s.stageDir}
	if initArg != "" {
		args = append(args, initArg)
	}
	cmd, err := k.Command(context.Background(), args...)
	if err != nil {
		guest.Close()
		return err
	}
	cmd.ExtraFiles = []*os.File{guest}
	in, err := cmd.StdinPipe()
	if err != nil {
		guest.Close()
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		guest.Close()
		return err
	}
	cmd.Stderr = cmd.Stdout
	s.progressf("booting %s", s.target)
	if err := cmd.Start(); err != nil {
		guest.Close()
		return fmt.Errorf("start %s: %w", k.Path, err)
	}
	guest.Close()
	s.cmd = cmd
	s.con = console.New(out, in, nil)
	go func() {
		<-s.con.Done()
		s.exit = cmd.Wait()
		close(s.done)
	}()
	bctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	if _, err := s.con.WaitFor(bctx, "umlkit-ready"); err != nil {
		return fmt.Errorf("image %s did not boot: %w%s", s.opts.Image, err, indent(s.consoleTail()))
	}
	c, err := agent.NewClient(bctx, host)
	if err != nil {
		return fmt.Errorf("image %s: %w", s.opts.Image, err)
	}
	s.client = c
	if out, err := s.run(ctx, "mkdir -p /mnt && mount -t hostfs none /mnt -o /"); err != nil {
		return fmt.Errorf("mount the packages through hostfs: %w%s", err, indent(out))
	}
	return nil
}

func (s *session) timeout() time.Duration {
	if s.opts.Timeout > 0 {
		return s.opts.Timeout
	}
	return 2 * time.Minute
}

func (s *session) consoleTail() string {
	l := s.con.Lines()
	if len(l) > 15 {
		l = l[len(l)-15:]
	}
	return strings.Join(l, "\n")
}

// run runs a shell script in the guest and returns its output.
func (s *session) run(ctx context.Context, script string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	var out bytes.Buffer
	st, err := s.client.Run(rctx, agent.Cmd{Argv: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &out,
		Env: []string{"LC_ALL=C"}})
	if err != nil {
		return out.String(), err
	}
	if st.Error != "" {
		return out.String(), errors.New(st.Error)
	}
	if st.Code != 0 {
		return out.String(), fmt.Errorf("exit status %d", st.Code)
	}
	return out.String(), nil
}

// finish powers the guest off cleanly and puts the copy in place.
func (s *session) finish(ctx context.Context) error {
	s.run(ctx, "umount /mnt; sync")
	s.progressf("powering off")
	go s.run(ctx, "kill -USR2 1")
	select {
	case <-s.done:
	case <-time.After(s.timeout()):
		return fmt.Errorf("the guest did not power off within %v", s.timeout())
	}
	if s.exit != nil {
		return fmt.Errorf("the kernel exited with %v%s", s.exit, indent(s.consoleTail()))
	}
	if s.injected {
		if err := debugfsWrite(s.copy, "rm "+injectedInit); err != nil {
			return err
		}
		if err := debugfsWrite(s.copy, "rmdir /.umlkit-install"); err != nil {
			return err
		}
	}
	if st, err := os.Stat(s.target); err == nil {
		os.Chmod(s.copy, st.Mode().Perm())
	}
	if err := os.Rename(s.copy, s.target); err != nil {
		return err
	}
	return nil
}

func (s *session) close() {
	if s.client != nil {
		s.client.Close()
	}
	if s.agentF != nil {
		s.agentF.Close()
	}
	if s.cmd != nil {
		select {
		case <-s.done:
		default:
			kernel.KillGroup(s.cmd)
			<-s.done
		}
	}
	if s.copy != "" {
		os.Remove(s.copy)
	}
	if s.stageDir != "" {
		os.RemoveAll(s.stageDir)
	}
	if s.umlDir != "" {
		os.RemoveAll(s.umlDir)
	}
}

// sparseCopy copies src to dst, leaving holes where src has them.
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	size := st.Size()
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // no more data: the rest is a hole
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for p := data; p < hole; {
			n := int64(len(buf))
			if hole-p < n {
				n = hole - p
			}
			if _, err := in.ReadAt(buf[:n], p); err != nil {
				out.Close()
				return err
			}
			if _, err := out.WriteAt(buf[:n], p); err != nil {
				out.Close()
				return err
			}
			p += n
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// grow makes room in the copy for need more bytes of files (with a
// quarter more and 16 MiB to spare) when its filesystem lacks it: the
// file gets longer (sparse) and resize2fs grows the filesystem.
func (s *session) grow(ctx context.Context, need int64) error {
	out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", s.copy).Output()
	if err != nil {
		return fmt.Errorf("dumpe2fs -h %s: %w (is it an ext2/3/4 image?)", s.opts.Image, err)
	}
	var free, bsize int64
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch strings.TrimSpace(k) {
		case "Free blocks":
			fmt.Sscan(strings.TrimSpace(v), &free)
		case "Block size":
			fmt.Sscan(strings.TrimSpace(v), &bsize)
		}
	}
	want := need + need/4 + 16<<20
	if bsize == 0 || free*bsize >= want {
		return nil
	}
	st, err := os.Stat(s.copy)
	if err != nil {
		return err
	}
	size := (st.Size() + want - free*bsize + 1<<20 - 1) &^ (1<<20 - 1)
	s.progressf("growing %s to %d MiB", s.target, size>>20)
	if err := os.Truncate(s.copy, size); err != nil {
		return err
	}
	fsck := exec.CommandContext(ctx, "e2fsck", "-f", "-y", s.copy)
	if b, err := fsck.CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			return fmt.Errorf("e2fsck before growing: %w: %s", err, strings.TrimSpace(string(b)))
		}
	}
	if b, err := exec.CommandContext(ctx, "resize2fs", s.copy).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}
