package image_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/umltest"
)

// slackPackage builds a Slackware package in dir: /usr/bin/NAME prints
// "hi from NAME", and its doinst.sh links usr/bin/NAME-link to it (as
// makepkg writes links) and then runs extra.
func slackPackage(t *testing.T, dir, name, extra string) string {
	t.Helper()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755)
	os.MkdirAll(filepath.Join(src, "usr/share", name), 0o755)
	os.MkdirAll(filepath.Join(src, "install"), 0o755)
	os.WriteFile(filepath.Join(src, "usr/bin", name), []byte("#!/bin/sh\necho hi from "+name+"\n"), 0o755)
	os.WriteFile(filepath.Join(src, "usr/share", name, "README"), []byte("readme\n"), 0o644)
	os.WriteFile(filepath.Join(src, "install/slack-desc"), []byte(name+": "+name+" (a test package)\n"+name+":\n"+name+": Built by the test.\nother: not ours\n"), 0o644)
	os.WriteFile(filepath.Join(src, "install/doinst.sh"), []byte(fmt.Sprintf("( cd usr/bin ; rm -rf %[1]s-link )\n( cd usr/bin ; ln -sf %[1]s %[1]s-link )\n%[2]s", name, extra)), 0o644)
	pkg := filepath.Join(dir, name+"-1.0-x86_64-1.txz")
	if out, err := exec.Command("tar", "--owner=0", "--group=0", "-cJf", pkg, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	return pkg
}

var (
	debOnceHello sync.Once
	helloDeb     string
	helloErr     error
)

// realDeb fetches Debian's hello package with apt-get download (updating
// the package lists only when the first try fails).
func realDeb(t *testing.T) string {
	t.Helper()
	debOnceHello.Do(func() {
		dir := filepath.Dir(umltest.Umlkit(t))
		get := func() ([]byte, error) {
			cmd := exec.Command("apt-get", "download", "-q", "hello")
			cmd.Dir = dir
			return cmd.CombinedOutput()
		}
		out, err := get()
		if err != nil {
			exec.Command("apt-get", "update", "-q").Run()
			out, err = get()
		}
		if err != nil {
			helloErr = fmt.Errorf("apt-get download hello: %v\n%s", err, out)
			return
		}
		m, _ := filepath.Glob(filepath.Join(dir, "hello_*.deb"))
		if len(m) != 1 {
			helloErr = fmt.Errorf("apt-get download hello left %v", m)
			return
		}
		helloDeb = m[0]
	})
	if helloErr != nil {
		t.Fatalf("fetch a real .deb (needs apt and the host's Debian mirror): %v", helloErr)
	}
	return helloDeb
}

func hashFile(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	st, _ := f.Stat()
	return fmt.Sprintf("%x %d %v", h.Sum(nil), st.Size(), st.ModTime())
}

func minimalImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "root_fs")
	if err := image.BuildMinimal(context.Background(), img, image.MinimalOptions{Umlkit: umltest.Umlkit(t)}); err != nil {
		t.Fatal(err)
	}
	return img
}

// The seed's adaptation: a Slackware package built here and a real
// Debian package go into the minimal image (no dpkg: unpacked and
// recorded); the guest sees their files and the doinst.sh link; image
// packages lists both; removing the Slackware one removes its files.
func TestInstallMinimal(t *testing.T) {
	img := minimalImage(t)
	deb := realDeb(t)
	pkg := slackPackage(t, t.TempDir(), "foo", "")
	opts := image.InstallOptions{Image: img, Umlkit: umltest.Umlkit(t)}
	done, err := image.Install(context.Background(), []string{pkg, deb}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 || done[0].Name != "foo-1.0-x86_64-1" || done[1].Name != "hello" {
		t.Fatalf("Install returned %+v; want foo-1.0-x86_64-1 and hello", done)
	}
	list, err := image.ListPackages(img)
	if err != nil {
		t.Fatal(err)
	}
	want := []image.Installed{
		{Kind: image.Slackware, Name: "foo-1.0-x86_64-1", Summary: "foo (a test package)"},
		{Kind: image.Debian, Name: "hello", Version: done[1].Version, Summary: "example package based on GNU hello"},
	}
	if fmt.Sprint(list) != fmt.Sprint(want) {
		t.Errorf("ListPackages = %+v, want %+v", list, want)
	}

	c := boot(t, img)
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"foo"}, "hi from foo\n"},
		{[]string{"foo-link"}, "hi from foo\n"},
		{[]string{"readlink", "/usr/bin/foo-link"}, "foo\n"},
		// hello needs libc, which the busybox image lacks: its files are there.
		{[]string{"sh", "-c", "test -x /usr/bin/hello && echo ok"}, "ok\n"},
		{[]string{"ls", "/install"}, ""},
	} {
		out, errOut, code := agentRun(t, c, tc.argv...)
		if tc.argv[0] == "ls" {
			if code == 0 {
				t.Errorf("/install is left in the guest: %q", out)
			}
			continue
		}
		if code != 0 || out != tc.want {
			t.Errorf("%q in the guest = %q, %q, %d; want %q", tc.argv, out, errOut, code, tc.want)
		}
	}
	out, _, _ := agentRun(t, c, "cat", "/var/log/packages/foo-1.0-x86_64-1")
	for _, field := range []string{"PACKAGE NAME:     foo-1.0-x86_64-1\n", "COMPRESSED PACKAGE SIZE:", "UNCOMPRESSED PACKAGE SIZE:",
		"PACKAGE LOCATION: " + pkg + "\n", "PACKAGE DESCRIPTION:\nfoo: foo (a test package)\nfoo:\nfoo: Built by the test.\nFILE LIST:\n./\n", "\nusr/bin/foo\n", "\nusr/share/foo/README\n"} {
		if !strings.Contains(out, field) {
			t.Errorf("/var/log/packages/foo-1.0-x86_64-1 lacks %q:\n%s", field, out)
		}
	}
	if strings.Contains(out, "other:") {
		t.Errorf("the record has another package's description lines:\n%s", out)
	}
	out, _, _ = agentRun(t, c, "cat", "/var/lib/dpkg/info/hello.list")
	if !strings.Contains(out, "/usr/bin/hello\n") {
		t.Errorf("hello.list = %q; want /usr/bin/hello", out)
	}
	c.Close()

	// The instance above ran over a COW file; remove needs the image free.
	rec, err := image.Remove(context.Background(), "foo", opts)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Name != "foo-1.0-x86_64-1" {
		t.Errorf("Remove removed %s", rec.Name)
	}
	c = boot(t, img)
	out, _, code := agentRun(t, c, "sh", "-c", "ls -d /usr/bin/foo /usr/bin/foo-link /usr/share/foo /var/log/packages/foo-1.0-x86_64-1 2>/dev/null; ls /var/log/removed_packages; test -x /usr/bin/hello && echo hello kept")
	if code != 0 || out != "foo-1.0-x86_64-1\nhello kept\n" {
		t.Errorf("after remove: %q, %d; want foo's files, link and record gone, its record in removed_packages, hello kept", out, code)
	}
	list, _ = image.ListPackages(img)
	if len(list) != 1 || list[0].Name != "hello" {
		t.Errorf("ListPackages after remove = %+v; want only hello", list)
	}
}

// A package that is not a valid archive, and one whose doinst.sh fails in
// the guest, leave the image byte-identical, with a clear error naming
// the package.
func TestInstallFailureLeavesImage(t *testing.T) {
	img := minimalImage(t)
	dir := t.TempDir()
	good := slackPackage(t, dir, "good", "")
	badScript := slackPackage(t, dir, "bad", "echo doinst failed on purpose >&2; exit 7\n")
	b, _ := os.ReadFile(good)
	truncated := filepath.Join(dir, "trunc-1.0-x86_64-1.txz")
	os.WriteFile(truncated, b[:len(b)/2], 0o644)
	notDeb := filepath.Join(dir, "nodeb_1.0_amd64.deb")
	os.WriteFile(notDeb, []byte("!<arch>\nthis is not a package\n"), 0o644)
	before := hashFile(t, img)
	opts := image.InstallOptions{Image: img, Umlkit: umltest.Umlkit(t)}
	for _, tc := range []struct {
		pkgs []string
		want string
	}{
		{[]string{good, truncated}, truncated},
		{[]string{notDeb}, notDeb},
		{[]string{good, badScript}, "doinst failed on purpose"},
	} {
		_, err := image.Install(context.Background(), tc.pkgs, opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Install(%v) = %v; want an error containing %q", tc.pkgs, err, tc.want)
		}
		var pe *image.PackageError
		if tc.want != "doinst failed on purpose" && !errors.As(err, &pe) {
			t.Errorf("Install(%v) = %v; want a *PackageError", tc.pkgs, err)
		}
		if after := hashFile(t, img); after != before {
			t.Errorf("Install(%v) failed but changed the image: %s -> %s", tc.pkgs, before, after)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(img), ".*")); len(left) != 0 {
		t.Errorf("failed installs left files: %v", left)
	}
}

// In the Debian image, .deb files go through dpkg -i: a real one
// installs, one with an unmet dependency fails and changes nothing.
func TestInstallDebianDpkg(t *testing.T) {
	src := debianImage(t)
	img := filepath.Join(t.TempDir(), "debian.img")
	if out, err := exec.Command("cp", "--sparse=always", src, img).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	deb := realDeb(t)
	// A .deb that depends on a package that does not exist.
	pkgDir := t.TempDir()
	os.MkdirAll(filepath.Join(pkgDir, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(pkgDir, "usr/share/unmet"), 0o755)
	os.WriteFile(filepath.Join(pkgDir, "usr/share/unmet/x"), []byte("x\n"), 0o644)
	os.WriteFile(filepath.Join(pkgDir, "DEBIAN/control"), []byte("Package: unmet\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDepends: no-such-package-umlkit\nDescription: unmet dependency\n"), 0o644)
	unmet := filepath.Join(t.TempDir(), "unmet_1.0_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkgDir, unmet).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	opts := image.InstallOptions{Image: img, Umlkit: umltest.Umlkit(t)}
	before := hashFile(t, img)
	if _, err := image.Install(context.Background(), []string{unmet}, opts); err == nil || !strings.Contains(err.Error(), "no-such-package-umlkit") {
		t.Errorf("Install(unmet) = %v; want dpkg's error about the missing dependency", err)
	}
	if after := hashFile(t, img); after != before {
		t.Errorf("a failed dpkg -i changed the image")
	}
	if _, err := image.Install(context.Background(), []string{deb}, opts); err != nil {
		t.Fatal(err)
	}
	c := boot(t, img)
	out, _, code := agentRun(t, c, "sh", "-c", "hello && dpkg-query -W -f '${Status}' hello")
	if code != 0 || out != "Hello, world!\ninstall ok installed" {
		t.Errorf("hello after dpkg -i = %q, %d", out, code)
	}
}

// An image whose init is not umlkit (the shell-init minimal image) gets
// umlkit as init for the install only; a package bigger than the free
// room grows the image.
func TestInstallForeignImageGrows(t *testing.T) {
	img := filepath.Join(t.TempDir(), "root_fs")
	if err := image.BuildMinimal(context.Background(), img, image.MinimalOptions{}); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "usr/share/big"), 0o755)
	if err := os.WriteFile(filepath.Join(src, "usr/share/big/blob"), make([]byte, 80<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(t.TempDir(), "big-1-noarch-1.tgz")
	if out, err := exec.Command("tar", "--owner=0", "--group=0", "-czf", pkg, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	if _, err := image.Install(context.Background(), []string{pkg}, image.InstallOptions{Image: img, Umlkit: umltest.Umlkit(t)}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(img); st.Size() <= image.DefaultMinimalSize {
		t.Errorf("image size %d after installing 80 MiB into a 64 MiB image; want it grown", st.Size())
	}
	out, err := exec.Command("debugfs", "-R", "stat /usr/share/big/blob", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Size: 83886080") {
		t.Errorf("the blob in the image: %v\n%s", err, out)
	}
	out, _ = exec.Command("debugfs", "-R", "ls /", img).CombinedOutput()
	if strings.Contains(string(out), ".umlkit-install") {
		t.Errorf("the install's init is left in the image:\n%s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "cat /sbin/init", img).CombinedOutput()
	if !strings.Contains(string(out), "umlkit-ready") {
		t.Errorf("the image's own init script changed:\n%s", out)
	}
	vm := umltest.Boot(t, umltest.Options{Image: img})
	if out, status := vm.Run("ls -l /usr/share/big/blob && head -1 /var/log/packages/big-1-noarch-1"); status != 0 || !strings.Contains(out, "83886080") || !strings.Contains(out, "PACKAGE NAME:     big-1-noarch-1") {
		t.Errorf("in the booted image: %q, %d", out, status)
	}
}
