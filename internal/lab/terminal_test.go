package lab

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTerminalCommand(t *testing.T) {
	found := func(string) (string, error) { return "/usr/bin/x-terminal-emulator", nil }
	missing := func(string) (string, error) { return "", errors.New("not found") }
	for _, tc := range []struct {
		name     string
		mode     TerminalMode
		env      map[string]string
		lookPath func(string) (string, error)
		want     string
		wantErr  bool
	}{
		{"auto, nothing set", TerminalsAuto, nil, found, "", false},
		{"auto, display but no setting", TerminalsAuto, map[string]string{"DISPLAY": ":0"}, found, "", false},
		{"auto, setting", TerminalsAuto, map[string]string{EnvTerminal: " xterm -e "}, missing, "xterm -e", false},
		{"all, setting", TerminalsAll, map[string]string{EnvTerminal: "tmux new-window", "DISPLAY": ":0"}, found, "tmux new-window", false},
		{"all, display", TerminalsAll, map[string]string{"DISPLAY": ":0"}, found, "x-terminal-emulator -e", false},
		{"all, wayland", TerminalsAll, map[string]string{"WAYLAND_DISPLAY": "wayland-0"}, found, "x-terminal-emulator -e", false},
		{"all, display, no emulator", TerminalsAll, map[string]string{"DISPLAY": ":0"}, missing, "", true},
		{"all, no display", TerminalsAll, nil, found, "", true},
		{"none, setting", TerminalsNone, map[string]string{EnvTerminal: "xterm -e"}, found, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TerminalCommand(tc.mode, func(k string) string { return tc.env[k] }, tc.lookPath)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("TerminalCommand = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), EnvTerminal+"='xterm -e'") {
				t.Errorf("error %q does not say how to set %s", err, EnvTerminal)
			}
		})
	}
}

func termLab(t *testing.T) *Lab {
	t.Helper()
	c, err := ParseConfig("lab.conf", []byte("pc1[0]=A\npc1[num_terms]=2\nr1[0]=A\nr1[num_terms]=0\npc2[0]=A\npc3[0]=A\npc3[num_terms]=1\n"))
	if err != nil {
		t.Fatal(err)
	}
	return &Lab{Dir: "/labs/x", Nodes: c.Nodes}
}

func TestPlanTerminals(t *testing.T) {
	l := termLab(t)
	all := []string{"pc1", "r1", "pc2", "pc3"}
	win := func(node string, verbs ...string) []Terminal {
		var ts []Terminal
		for _, v := range verbs {
			ts = append(ts, Terminal{Node: node, Args: []string{"lab", v, "/labs/x", node}})
		}
		return ts
	}
	cat := func(tss ...[]Terminal) []Terminal {
		var out []Terminal
		for _, ts := range tss {
			out = append(out, ts...)
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		started  []string
		mode     TerminalMode
		command  string
		want     []Terminal
		wantHint []string // in the hint; nil: no hint
	}{
		{"auto with a terminal: what lab.conf asks", all, TerminalsAuto, "xterm -e",
			cat(win("pc1", "console", "shell"), win("pc3", "console")), nil},
		{"all: num_terms, else one", all, TerminalsAll, "xterm -e",
			cat(win("pc1", "console", "shell"), win("pc2", "console"), win("pc3", "console")), nil},
		{"only the nodes started", []string{"pc2", "pc3"}, TerminalsAll, "xterm -e",
			cat(win("pc2", "console"), win("pc3", "console")), nil},
		{"none", all, TerminalsNone, "", nil, nil},
		{"auto without a terminal: a hint", all, TerminalsAuto, "",
			nil, []string{"pc1 (2), pc3 (1)", "umlkit lab console /labs/x NODE", EnvTerminal + "='xterm -e'"}},
		{"auto without a terminal, none asked", []string{"r1", "pc2"}, TerminalsAuto, "", nil, nil},
		{"nothing started", nil, TerminalsAll, "xterm -e", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanTerminals(l, tc.started, tc.mode, tc.command)
			if diff := cmp.Diff(tc.want, p.Open); diff != "" {
				t.Errorf("PlanTerminals open (-want +got):\n%s", diff)
			}
			if tc.wantHint == nil && p.Hint != "" {
				t.Errorf("hint %q, want none", p.Hint)
			}
			for _, w := range tc.wantHint {
				if !strings.Contains(p.Hint, w) {
					t.Errorf("hint %q lacks %q", p.Hint, w)
				}
			}
		})
	}
}

// OpenTerminals runs the configured command once per window, with the
// umlkit command after it and the node in $UMLKIT_NODE, and returns
// without waiting for the windows. The terminal is a script that records
// its arguments.
func TestOpenTerminals(t *testing.T) {
	dir := t.TempDir()
	l := termLab(t)
	l.Dir = dir
	if err := os.MkdirAll(l.StateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(dir, "record")
	fake := filepath.Join(dir, "fake-terminal")
	script := "#!/bin/sh\n[ \"$1\" = --title ] || exit 3\nshift 2\necho opened\necho \"$UMLKIT_NODE|$*\" >>" + rec + "\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := PlanTerminals(l, []string{"pc1", "pc3"}, TerminalsAuto, fake+` --title "$UMLKIT_NODE"`)
	if err := OpenTerminals(l, p, "/bin/umlkit"); err != nil {
		t.Fatalf("OpenTerminals: %v", err)
	}
	want := []string{
		"pc1|/bin/umlkit lab console " + dir + " pc1",
		"pc1|/bin/umlkit lab shell " + dir + " pc1",
		"pc3|/bin/umlkit lab console " + dir + " pc3",
	}
	var got []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(rec)
		got = strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
	}
	sort.Strings(got) // the windows open in the background, in any order
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("terminal commands (-want +got):\n%s", diff)
	}
	if b, _ := os.ReadFile(filepath.Join(l.StateDir(), "terminal.log")); strings.Count(string(b), "opened") != 3 {
		t.Errorf("terminal.log = %q, want the terminals' output", b)
	}

	// A command the shell cannot parse is an error naming the setting.
	p.Command = "xterm -e '"
	if err := OpenTerminals(l, p, "/bin/umlkit"); err == nil || !strings.Contains(err.Error(), EnvTerminal) {
		t.Errorf("OpenTerminals with a broken command = %v, want an error naming %s", err, EnvTerminal)
	}
}
