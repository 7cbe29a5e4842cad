package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/cow"
	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/image/store"
	"github.com/umlkit/umlkit/internal/umltest"
)

// imageEnv gives the test its own data and runtime dirs.
func imageEnv(t *testing.T) {
	t.Helper()
	t.Setenv("UMLKIT_DATA_DIR", t.TempDir())
	t.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(t))
}

// guestRun runs argv through the agent and returns stdout, stderr, code.
func guestRun(t *testing.T, c *agent.Client, argv ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.Run(ctx, agent.Cmd{Argv: argv, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("agent run %q: %v", argv, err)
	}
	return out.String(), errb.String(), st.Code
}

func agentClient(t *testing.T, vm *umltest.Instance) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, vm.AgentConn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// image build minimal makes a named image in the store that vm flags
// resolve by name, and that boots with umlkit as init and the agent.
func TestImageBuildMinimalBoots(t *testing.T) {
	imageEnv(t)
	bin := umltest.Umlkit(t)
	var out, errb bytes.Buffer
	stdio := IO{In: strings.NewReader(""), Out: &out, Err: &errb}
	if err := imageBuildMinimal(context.Background(), stdio, buildFlags{name: "mini"}, bin); err != nil {
		t.Fatal(err)
	}
	if err := imageBuildMinimal(context.Background(), stdio, buildFlags{name: "mini"}, bin); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("building over an existing image = %v; want a refusal mentioning --force", err)
	}
	lout, _, code := runArgs(t, nil, "umlkit", "image", "list", "--json")
	var ms []store.Manifest
	if err := json.Unmarshal([]byte(lout), &ms); err != nil || code != 0 || len(ms) != 1 || ms[0].Name != "mini" || ms[0].Kind != store.KindMinimal {
		t.Fatalf("image list --json = %q (%v); want the one minimal image", lout, err)
	}
	pout, _, code := runArgs(t, nil, "umlkit", "image", "path", "mini")
	if code != 0 || strings.TrimSpace(pout) != ms[0].Path {
		t.Errorf("image path mini = %q, %d; want %s", pout, code, ms[0].Path)
	}
	f := vmFlags{name: "r1", image: "mini"}
	_, kargs, err := f.kernelArgs(nil)
	if err != nil || !strings.Contains(strings.Join(kargs, " "), "ubd0=r1.cow,"+ms[0].Path) {
		t.Errorf("vm --image mini: kernel args %q, %v; want the store's file as the backing file", kargs, err)
	}

	vm := umltest.Boot(t, umltest.Options{Image: ms[0].Path, Agent: true})
	c := agentClient(t, vm)
	sout, serr, code := guestRun(t, c, "uname", "-r")
	if code != 0 || !strings.HasPrefix(sout, "6.") || serr != "" {
		t.Errorf("uname -r in the guest = %q, %q, %d; want the kernel release", sout, serr, code)
	}
	sout, serr, code = guestRun(t, c, "sh", "-c", "echo out; echo err >&2; exit 3")
	if code != 3 || sout != "out\n" || serr != "err\n" {
		t.Errorf("failing command = %q, %q, %d; want out, err, 3", sout, serr, code)
	}
	_, _, code = guestRun(t, c, "ls", "/nonexistent")
	if code == 0 {
		t.Error("ls /nonexistent exited 0 in the guest")
	}
}

// An image that a COW file depends on is refused (naming the COW file
// and --cow); with --cow the package goes into the COW file, the image
// stays byte-identical, and an instance over the COW file sees it.
func TestImageInstallCOW(t *testing.T) {
	imageEnv(t)
	bin := umltest.Umlkit(t)
	stdio := IO{In: strings.NewReader(""), Out: &bytes.Buffer{}, Err: &bytes.Buffer{}}
	if err := imageBuildMinimal(context.Background(), stdio, buildFlags{name: "mini"}, bin); err != nil {
		t.Fatal(err)
	}
	img, err := store.Resolve("mini")
	if err != nil {
		t.Fatal(err)
	}
	cowFile := filepath.Join(os.Getenv("UMLKIT_DATA_DIR"), "r1.cow")
	if _, err := cow.Create(cowFile, img, cow.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755)
	os.MkdirAll(filepath.Join(src, "install"), 0o755)
	os.WriteFile(filepath.Join(src, "usr/bin/bar"), []byte("#!/bin/sh\necho bar here\n"), 0o755)
	os.WriteFile(filepath.Join(src, "install/slack-desc"), []byte("bar: bar (test)\n"), 0o644)
	pkg := filepath.Join(t.TempDir(), "bar-2-noarch-1.tgz")
	if out, err := exec.Command("tar", "--owner=0", "--group=0", "-czf", pkg, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	st0, _ := os.Stat(img)
	err = imageInstall(context.Background(), stdio, "mini", []string{pkg}, "", bin)
	if err == nil || !strings.Contains(err.Error(), cowFile) || !strings.Contains(err.Error(), "--cow") {
		t.Fatalf("install into an image with a COW file over it = %v; want a refusal naming %s and --cow", err, cowFile)
	}
	if _, _, code := runArgs(t, nil, "umlkit", "image", "rm", "mini"); code == 0 {
		t.Error("image rm removed an image a COW file depends on")
	}
	var out bytes.Buffer
	stdio.Out = &out
	if err := imageInstall(context.Background(), stdio, "mini", []string{pkg}, cowFile, bin); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "installed bar-2-noarch-1 (slackware") {
		t.Errorf("install --cow printed %q", out.String())
	}
	if st1, _ := os.Stat(img); !st1.ModTime().Equal(st0.ModTime()) || st1.Size() != st0.Size() {
		t.Errorf("install --cow changed the image: mtime %v -> %v", st0.ModTime(), st1.ModTime())
	}
	vm := umltest.Boot(t, umltest.Options{Root: cowFile + "," + img, Agent: true})
	c := agentClient(t, vm)
	if sout, serr, code := guestRun(t, c, "sh", "-c", "bar; head -1 /var/log/packages/bar-2-noarch-1"); code != 0 || sout != "bar here\nPACKAGE NAME:     bar-2-noarch-1\n" {
		t.Errorf("bar in the instance over the COW file = %q, %q, %d", sout, serr, code)
	}
	// The package list reads the image itself, which has no packages.
	pout, _, code := runArgs(t, nil, "umlkit", "image", "packages", "mini", "--json")
	if code != 0 || strings.TrimSpace(pout) != "[]" {
		t.Errorf("image packages mini --json = %q, %d; want []", pout, code)
	}
}
