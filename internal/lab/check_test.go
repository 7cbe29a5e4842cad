package lab

import (
	"errors"
	"strings"
	"testing"
)

func TestParseChecks(t *testing.T) {
	cs, err := ParseChecks("checks", []byte(`# comment
ping pc1 10.0.0.2
! ping pc1 10.0.0.99
route r1 10.0.2.7/24
route r1 default
exec pc2 "ip addr" contains 10.0.0.2
exec pc2 'test -f /x' exit 1
exec pc2 true
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Check{
		{Line: 2, Kind: "ping", Node: "pc1", Target: "10.0.0.2"},
		{Line: 3, Negate: true, Kind: "ping", Node: "pc1", Target: "10.0.0.99"},
		{Line: 4, Kind: "route", Node: "r1", Target: "10.0.2.0/24"},
		{Line: 5, Kind: "route", Node: "r1", Target: "default"},
		{Line: 6, Kind: "exec", Node: "pc2", Target: "ip addr", Contains: "10.0.0.2"},
		{Line: 7, Kind: "exec", Node: "pc2", Target: "test -f /x", Exit: 1},
		{Line: 8, Kind: "exec", Node: "pc2", Target: "true"},
	}
	if len(cs) != len(want) {
		t.Fatalf("ParseChecks = %d checks, want %d", len(cs), len(want))
	}
	for i := range want {
		want[i].Text = cs[i].Text
		if cs[i] != want[i] {
			t.Errorf("check %d = %+v, want %+v", i, cs[i], want[i])
		}
	}
}

func TestParseChecksErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ping pc1\n", "checks:1: \"ping pc1\": want"},
		{"ping pc1 nowhere\n", "want one IP address"},
		{"route r1 10.0.0.0/99\n", "want a prefix"},
		{"exec pc1 \"ls\" exit x\n", "exit x"},
		{"exec pc1 \"ls\" maybe so\n", "write exit N or contains TEXT"},
		{"exec pc1 \"ls\n", "unclosed"},
		{"\n\ntrace pc1 x\n", "checks:3: unknown check"},
	} {
		_, err := ParseChecks("checks", []byte(tc.in))
		var pe *ParseError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseChecks(%q) = %v, want a ParseError containing %q", tc.in, err, tc.want)
		}
	}
}

func TestLineDiff(t *testing.T) {
	got := lineDiff("a\nb\nc\n", "a\nc\nd\n")
	if got != "  - b\n  + d" {
		t.Errorf("lineDiff = %q", got)
	}
}

func FuzzParseChecks(f *testing.F) {
	for _, s := range []string{"ping a 10.0.0.1\n", "! route b default\n", "exec c \"x y\" contains 'z'\n", "exec c x exit 3\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, err := ParseChecks("checks", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			return
		}
		for _, c := range cs {
			if c.Node == "" || c.Target == "" {
				t.Fatalf("check %+v has no node or target", c)
			}
		}
	})
}
