package mconsole_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umlkit/umlkit/internal/cli"
	"github.com/umlkit/umlkit/internal/umltest"
)

type result struct {
	out, err string
	code     int
}

// ours runs umlkit with argv (argv[0] picks the tool, as a link would).
func ours(t *testing.T, stdin string, argv ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), argv, cli.IO{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	return result{out.String(), errb.String(), code}
}

// real runs the installed uml_mconsole.
func real(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	cmd := exec.Command("uml_mconsole", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("uml_mconsole: %v", err)
	}
	return result{out.String(), errb.String(), code}
}

// TestDropIn compares umlkit, invoked as uml_mconsole, with the real
// uml_mconsole on one instance: stdout, stderr and exit status must be
// the same, for single commands and for an interactive session.
func TestDropIn(t *testing.T) {
	if _, err := exec.LookPath("uml_mconsole"); err != nil {
		if umltest.Required() {
			t.Fatalf("uml_mconsole is not installed (apt-get install uml-utilities; make test does it): %v", err)
		}
		t.Skip("uml_mconsole is not installed: apt-get install uml-utilities")
	}
	umltest.Kernel(t)
	t.Setenv("HOME", umltest.ShortDir(t)) // the same "couldn't stat" warnings for both
	vm := umltest.Boot(t, umltest.Options{})
	m := vm.MconsolePath()

	for _, c := range []string{
		"version", "help", "proc filesystems", "config ubd0", "config ubd1", "config con0",
		"config eth0", "remove ubd0", "remove ubd5", "remove ubd99", "remove bogus", "frobnicate",
		"versionXYZ", "helpme", "mconsole-version", "stack", "proc nonexistent", "go", "log hello there",
		"config ubd2=/nonexistent/disk", "int",
	} {
		t.Run(c, func(t *testing.T) {
			args := append([]string{m}, strings.Fields(c)...)
			want := real(t, "", args...)
			got := ours(t, "", append([]string{"uml_mconsole"}, args...)...)
			if got != want {
				t.Errorf("uml_mconsole %s:\n ours %+v\n real %+v", c, got, want)
			}
		})
	}
	t.Run("exit codes", func(t *testing.T) {
		for c, want := range map[string]int{"remove ubd0": 240, "remove ubd5": 237, "frobnicate": 1, "version": 0} {
			if got := ours(t, "", append([]string{"uml_mconsole", m}, strings.Fields(c)...)...); got.code != want {
				t.Errorf("uml_mconsole %s exit status = %d, want %d", c, got.code, want)
			}
		}
	})
	t.Run("interactive", func(t *testing.T) {
		script := "version\nmconsole-version\n\nint\nswitch /nonexistent\nswitch " + m + "\nconfig ubd0\nhelp\nlog abc\nquit\nversion\n"
		want := real(t, script, m)
		got := ours(t, script, "uml_mconsole", m)
		if got != want {
			t.Errorf("interactive session:\n ours %+v\n real %+v", got, want)
		}
	})
	t.Run("usage", func(t *testing.T) {
		if got, want := ours(t, "", "uml_mconsole"), real(t, ""); got != want {
			t.Errorf("no arguments: ours %+v, real %+v", got, want)
		}
		if got, want := ours(t, "", "uml_mconsole", "nosuch", "version"), real(t, "", "nosuch", "version"); got != want {
			t.Errorf("unknown instance: ours %+v, real %+v", got, want)
		}
	})

	// A relative disk path is made absolute on the client side, so the
	// kernel (whose working directory is elsewhere) finds it; the disk is
	// then readable in the guest, and the real tool sees the same config.
	t.Run("hotplug relative path", func(t *testing.T) {
		dir := t.TempDir()
		data := make([]byte, 1<<20)
		copy(data, "dropin-hotplug-marker")
		if err := os.WriteFile(filepath.Join(dir, "hot.img"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Chdir(dir)
		if got := ours(t, "", "uml_mconsole", m, "config", "ubd1=hot.img"); got.out != "OK \n" || got.code != 0 {
			t.Fatalf("config ubd1=hot.img = %+v", got)
		}
		abs, _ := filepath.EvalSymlinks(filepath.Join(dir, "hot.img"))
		if got := real(t, "", m, "config", "ubd1"); got.out != "OK "+abs+"\n" {
			t.Errorf("real config ubd1 = %q, want OK %s", got.out, abs)
		}
		out, st := vm.Run("for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/ubdb ] && break; sleep 0.2; done; head -c 21 /dev/ubdb")
		if st != 0 || out != "dropin-hotplug-marker" {
			t.Errorf("guest read of /dev/ubdb = %q, %d", out, st)
		}
		if got := ours(t, "", "uml_mconsole", m, "remove", "ubd1"); got.out != "OK \n" || got.code != 0 {
			t.Errorf("remove ubd1 = %+v", got)
		}
	})

	// umlkit mconsole: the same output, found by umid and uml_dir.
	t.Run("umlkit mconsole", func(t *testing.T) {
		for _, c := range []string{"version", "config ubd0", "remove ubd0", "help"} {
			want := real(t, "", append([]string{m}, strings.Fields(c)...)...)
			got := ours(t, "", append([]string{"umlkit", "mconsole", "--uml-dir", vm.UMLDir, vm.Umid}, strings.Fields(c)...)...)
			if got.out != want.out || got.code != want.code || got.err != "" {
				t.Errorf("umlkit mconsole %s = %+v; want uml_mconsole's %+v without warnings", c, got, want)
			}
		}
		got := ours(t, "", "umlkit", "mconsole", "--json", "--uml-dir", vm.UMLDir, vm.Umid, "remove", "ubd0")
		var j struct {
			OK    bool   `json:"ok"`
			Err   int32  `json:"err"`
			Errno string `json:"errno"`
			Text  string `json:"text"`
		}
		if err := json.Unmarshal([]byte(got.out), &j); err != nil || got.code != 240 || j.OK || j.Err != -16 || j.Text != "Device is currently open" || j.Errno == "" {
			t.Errorf("umlkit mconsole --json remove ubd0 = %+v (%v); want err -16, exit 240", got, err)
		}
		f := filepath.Join(t.TempDir(), "msg")
		os.WriteFile(f, []byte("umlkit-log-file-marker\n"), 0o644)
		n := vm.Console.Len()
		if got := ours(t, "", "umlkit", "mconsole", "--uml-dir", vm.UMLDir, vm.Umid, "log", "-f", f); got.out != "OK \n" || got.code != 0 {
			t.Errorf("umlkit mconsole log -f = %+v", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), umltest.DefaultTimeout)
		defer cancel()
		if _, _, err := vm.Console.WaitFrom(ctx, n, "umlkit-log-file-marker"); err != nil {
			t.Errorf("log -f text not on the console: %v", err)
		}
		if got := ours(t, "", "umlkit", "mconsole", "nosuch", "version"); got.code != 1 || !strings.Contains(got.err, "--uml-dir") {
			t.Errorf("umlkit mconsole nosuch = %+v; want exit 1 and a hint", got)
		}
	})

	if got := ours(t, "", "uml_mconsole", m, "halt"); got.out != "OK \n" || got.code != 0 {
		t.Errorf("halt = %+v", got)
	}
	if err := vm.Wait(umltest.DefaultTimeout); err != nil {
		t.Errorf("after halt: %v, want a clean exit", err)
	}
}
