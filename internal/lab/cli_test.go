package lab

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/umltest"
)

// TestKernelCLI drives `umlkit lab` as a user does, with the static umlkit
// the test builds: up (refused with --terminals and no terminal; opening
// the terminals lab.conf asks for with one), a second up, exec and its
// exit status, status --json, test, down, clean.
func TestKernelCLI(t *testing.T) {
	umltest.Kernel(t)
	bin := umltest.Umlkit(t)
	img := umltest.AgentImage(t)
	rt := umltest.ShortDir(t)
	dir := copyLab(t, "twohosts")
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "DISPLAY" && k != "WAYLAND_DISPLAY" && k != EnvTerminal {
			env = append(env, kv)
		}
	}
	env = append(env, "UMLKIT_RUNTIME_DIR="+rt, EnvImage+"="+img)
	run := cliRunner(t, env, bin)
	t.Cleanup(func() { run("lab", "crash", dir) })
	// --terminals without a terminal emulator is refused before anything starts.
	if out, code := run("lab", "up", "--terminals", dir); code == 0 || !strings.Contains(out, EnvTerminal+"='xterm -e'") || strings.Contains(out, "booting") {
		t.Fatalf("lab up --terminals without a terminal = %d, want a refusal saying how to set one:\n%s", code, out)
	}
	// pc1[num_terms]=2: with a terminal configured (a script that records
	// what it runs), lab up opens pc1's console and a shell.
	rec := filepath.Join(rt, "terminals")
	fake := filepath.Join(rt, "term")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$UMLKIT_NODE|$*\" >>"+rec+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	runTerm := cliRunner(t, append(env, EnvTerminal+"="+fake), bin)
	if out, code := runTerm("lab", "up", dir); code != 0 || !strings.Contains(out, "eth0=10.0.0.2/24") || !strings.Contains(out, "opening 2 terminal(s)") {
		t.Fatalf("lab up = %d:\n%s", code, out)
	}
	want := "pc1|" + bin + " lab console " + dir + " pc1\npc1|" + bin + " lab shell " + dir + " pc1"
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && strings.Count(got, "\n") < 2; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(rec)
		got = string(b)
	}
	if lines := strings.Split(strings.TrimSpace(got), "\n"); len(lines) != 2 || !strings.Contains(want, lines[0]) || !strings.Contains(want, lines[1]) || lines[0] == lines[1] {
		t.Errorf("terminals opened:\n%s\nwant (in any order):\n%s", got, want)
	}
	// Nodes already running get no new terminals.
	if out, code := runTerm("lab", "up", dir); code != 0 || strings.Contains(out, "booting") || strings.Contains(out, "terminal") {
		t.Errorf("second lab up = %d, want nothing started or opened:\n%s", code, out)
	}
	if out, code := run("lab", "exec", dir, "pc1", "--", "ping", "-c", "1", "10.0.0.2"); code != 0 {
		t.Errorf("lab exec ping = %d:\n%s", code, out)
	}
	if _, code := run("lab", "exec", dir, "pc1", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("lab exec 'exit 7' = %d, want 7", code)
	}
	out, code := run("lab", "status", dir, "--json")
	var st struct {
		Nodes []NodeStatus `json:"nodes"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Nodes) != 2 || st.Nodes[1].State != "running" {
		t.Errorf("lab status --json = %d:\n%s", code, out)
	}
	if out, code := run("lab", "test", dir); code != 0 || !strings.Contains(out, "passed") {
		t.Errorf("lab test = %d:\n%s", code, out)
	}
	os.WriteFile(filepath.Join(dir, "_test", "checks"), []byte("ping pc1 10.0.0.77\n"), 0o644)
	if out, code := run("lab", "test", dir); code != 1 || !strings.Contains(out, "FAIL pc1        ping pc1 10.0.0.77") {
		t.Errorf("lab test with a failing check = %d, want 1 and the check named:\n%s", code, out)
	}
	if out, code := run("lab", "clean", dir); code == 0 || !strings.Contains(out, "still running") {
		t.Errorf("lab clean while running = %d:\n%s", code, out)
	}
	if out, code := run("lab", "down", dir); code != 0 {
		t.Errorf("lab down = %d:\n%s", code, out)
	}
	if out, code := run("lab", "down", dir); code != 0 {
		t.Errorf("lab down of a stopped lab = %d:\n%s", code, out)
	}
	if out, code := run("lab", "clean", dir); code != 0 {
		t.Errorf("lab clean = %d:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, ".umlkit")); !os.IsNotExist(err) {
		t.Errorf("lab clean left .umlkit: %v", err)
	}
}

// cliRunner returns a function that runs command (the umlkit binary, maybe
// behind a prefix such as ip netns exec NS) with args and env, and gives
// its combined output and exit status; failing to run at all fails t.
func cliRunner(t *testing.T, env []string, command ...string) func(args ...string) (string, int) {
	return func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(command[0], append(command[1:len(command):len(command)], args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("umlkit %v: %v", args, err)
		}
		return string(out), 0
	}
}
