// Package image builds root filesystem images for UML instances.
package image

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed init.sh
var minimalInit []byte

// BusyboxPath is where Debian's busybox-static package installs busybox.
const BusyboxPath = "/bin/busybox"

// DefaultMinimalSize is the size of a minimal image; the file is sparse, so
// it uses only the blocks its files need.
const DefaultMinimalSize = 64 << 20

// MinimalOptions configures BuildMinimal.
type MinimalOptions struct {
	// Busybox is a statically linked busybox; empty means BusyboxPath.
	Busybox string
	// Size is the image size in bytes; zero means DefaultMinimalSize.
	Size int64
	// Files adds or replaces files: guest path to content. Paths ending
	// in "rc.local" or under /bin or /sbin are made executable.
	Files map[string]string
	// Umlkit is a statically linked umlkit binary. When set it goes in as
	// /sbin/umlkit and is the image's init (with the exec agent); else
	// the image's init is a shell script.
	Umlkit string
}

// BuildMinimal writes a minimal ext4 root filesystem image to out: static
// busybox with its applet links, an init that mounts the kernel
// filesystems, sets the hostname and gives a shell on the console. The
// image is built in a temporary file next to out and renamed into place, so
// out is never left half written.
func BuildMinimal(ctx context.Context, out string, opts MinimalOptions) error {
	bb := opts.Busybox
	if bb == "" {
		bb = BusyboxPath
	}
	size := opts.Size
	if size == 0 {
		size = DefaultMinimalSize
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return fmt.Errorf("build image %s: mkfs.ext4 not found: install it with: apt-get install e2fsprogs", out)
	}
	if err := checkStatic(bb); err != nil {
		return fmt.Errorf("build image %s: %w", out, err)
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), ".stage-")
	if err != nil {
		return fmt.Errorf("build image %s: %w", out, err)
	}
	defer os.RemoveAll(stage)
	if opts.Umlkit != "" {
		if err := checkStatic(opts.Umlkit); err != nil {
			return fmt.Errorf("build image %s: umlkit for the guest: %w (build it with CGO_ENABLED=0)", out, err)
		}
	}
	if err := stageMinimal(ctx, stage, bb, opts.Files, opts.Umlkit); err != nil {
		return fmt.Errorf("build image %s: %w", out, err)
	}
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	defer os.Remove(tmp)
	mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "umlkit",
		"-E", "root_owner=0:0", "-d", stage, tmp, fmt.Sprintf("%dk", size/1024))
	if b, err := mkfs.CombinedOutput(); err != nil {
		return fmt.Errorf("build image %s: mkfs.ext4: %w: %s", out, err, strings.TrimSpace(string(b)))
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("build image %s: %w", out, err)
	}
	return nil
}

// checkStatic refuses a dynamically linked busybox: the image has no libc.
func checkStatic(bb string) error {
	f, err := os.Open(bb)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("busybox not found at %s: install it with: apt-get install busybox-static", bb)
		}
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	n, _ := io.ReadFull(f, buf)
	if strings.Contains(string(buf[:n]), "/lib64/ld-linux") || strings.Contains(string(buf[:n]), "/lib/ld-linux") {
		return fmt.Errorf("%s is dynamically linked; the image needs a static one: apt-get install busybox-static", bb)
	}
	return nil
}

func stageMinimal(ctx context.Context, stage, bb string, files map[string]string, umlkit string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys",
		"dev", "tmp", "run", "root", "mnt", "var/log", "home"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(stage, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := copyFile(bb, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	list, err := exec.CommandContext(ctx, bb, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w", bb, err)
	}
	for _, applet := range strings.Fields(string(list)) {
		link := filepath.Join(stage, applet)
		if applet == "bin/busybox" || applet == "sbin/init" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", link); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	base := map[string]string{
		"/sbin/init":   string(minimalInit),
		"/etc/passwd":  "root:x:0:0:root:/root:/bin/sh\n",
		"/etc/group":   "root:x:0:\n",
		"/etc/shadow":  "root::0:0:99999:7:::\n",
		"/etc/hosts":   "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
		"/etc/profile": "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nPS1='\\h:\\w# '\n",
	}
	if umlkit != "" {
		delete(base, "/sbin/init")
		if err := copyFile(umlkit, filepath.Join(stage, "sbin", "umlkit"), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("umlkit", filepath.Join(stage, "sbin", "init")); err != nil {
			return err
		}
	}
	for p, c := range files {
		base[p] = c
	}
	for p, c := range base {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(p, "/sbin/") || strings.HasPrefix(p, "/bin/") || strings.HasSuffix(p, "rc.local") {
			mode = 0o755
		}
		dst := filepath.Join(stage, filepath.FromSlash(strings.TrimPrefix(p, "/")))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		os.Remove(dst)
		if err := os.WriteFile(dst, []byte(c), mode); err != nil {
			return err
		}
		if err := os.Chmod(dst, mode); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
