package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func runArgs(t *testing.T, tools map[string]Tool, argv ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), argv, IO{In: strings.NewReader(""), Out: &out, Err: &errb}, tools)
	return out.String(), errb.String(), code
}

// Invoked under a tool's name (argv[0], any directory), umlkit runs that
// tool with the remaining arguments and returns its status.
func TestMulticall(t *testing.T) {
	var got []string
	tools := map[string]Tool{"uml_fake": {Name: "uml_fake", Run: func(_ context.Context, args []string, io IO) int {
		got = args
		io.Out.Write([]byte("fake ran\n"))
		return 3
	}}}
	out, _, code := runArgs(t, tools, "/usr/local/bin/uml_fake", "-x", "y")
	if code != 3 || out != "fake ran\n" || strings.Join(got, " ") != "-x y" {
		t.Errorf("run(uml_fake -x y) = %q, %d, args %q; want the tool's output, 3, [-x y]", out, code, got)
	}
	out, _, code = runArgs(t, tools, "umlkit", "tools")
	if code != 0 || out != "no classic tools yet\n" && !strings.Contains(out, "uml_") {
		t.Errorf("umlkit tools = %q, %d", out, code)
	}
}

func TestUnknownCommand(t *testing.T) {
	_, errOut, code := runArgs(t, nil, "umlkit", "frobnicate")
	if code != 1 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("umlkit frobnicate = %q, %d; want exit 1 naming the command", errOut, code)
	}
}

func TestVersionJSON(t *testing.T) {
	out, _, code := runArgs(t, nil, "umlkit", "version", "--json")
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v.Umlkit == "" {
		t.Fatalf("version --json = %q, %d (%v); want JSON with umlkit's version", out, code, err)
	}
	if v.Kernel == "" && v.KernelErr == "" {
		t.Errorf("version --json has neither the kernel's version nor why not: %+v", v)
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, code := runArgs(t, nil, "umlkit", "completion", sh)
		if code != 0 || !strings.Contains(out, "umlkit") {
			t.Errorf("completion %s: status %d, %d bytes", sh, code, len(out))
		}
	}
}

func TestHelpGroups(t *testing.T) {
	out, _, code := runArgs(t, nil, "umlkit", "--help")
	if code != 0 || !strings.Contains(out, "Host:") || !strings.Contains(out, "doctor") {
		t.Errorf("umlkit --help = %q, %d; want the Host group with doctor", out, code)
	}
}

func TestDoctorJSON(t *testing.T) {
	out, _, code := runArgs(t, nil, "umlkit", "doctor", "--json")
	var r struct {
		Healthy bool `json:"healthy"`
		Checks  []struct {
			Name, Status string
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Checks) < 8 {
		t.Fatalf("doctor --json = %q (%v); want a report", out, err)
	}
	if r.Healthy != (code == 0) {
		t.Errorf("doctor exit status %d does not match healthy=%v", code, r.Healthy)
	}
}

func TestTapAndNatFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tap", "create", "a234567890123456"}, "at most 15"},
		{[]string{"tap", "create", "t0", "--ip", "10.0.0.1"}, "prefix length"},
		{[]string{"tap", "create", "t0", "--owner", "no-such-user-here"}, "no such user"},
		{[]string{"net", "nat"}, "--from CIDR is required"},
		{[]string{"net", "nat", "--from", "banana"}, "want a network"},
	} {
		_, errOut, code := runArgs(t, nil, append([]string{"umlkit"}, tc.args...)...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("umlkit %v = %q, %d; want exit 1 and %q", tc.args, errOut, code, tc.want)
		}
	}
}
