package cli

import (
	"strings"
	"testing"
)

func TestMconsoleArgs(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, tc := range []struct {
		name     string
		argv     []string
		code     int
		out, err string
	}{
		{"usage", []string{"uml_mconsole"}, 1, "", "Usage : uml_mconsole socket-name [command]\n"},
		{"unknown instance", []string{"uml_mconsole", "nosuch", "version"}, 1, "",
			"couldn't stat file: nosuch - No such file or directory\nSending command to '' : Invalid argument\n"},
		{"umlkit unknown instance", []string{"umlkit", "mconsole", "nosuch", "version"}, 1, "", "give its uml_dir with --uml-dir"},
		{"umlkit no instance", []string{"umlkit", "mconsole"}, 1, "", "requires at least 1 arg"},
		{"umlkit json without command", []string{"umlkit", "mconsole", "--json", "nosuch"}, 1, "", "no mconsole socket"},
		{"tools lists it", []string{"umlkit", "tools"}, 0, "uml_mconsole", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runArgs(t, Tools(), tc.argv...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
				t.Errorf("%q = %q, %q, %d; want %q, %q, %d", tc.argv, out, errOut, code, tc.out, tc.err, tc.code)
			}
		})
	}
}

func TestFixFilenames(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s := &mcSession{}
	for _, tc := range []struct{ in, want string }{
		{"config ubd1=a.cow,b.img", "config ubd1=" + dir + "/a.cow," + dir + "/b.img"},
		{"config ubd1=b.img", "config ubd1=" + dir + "/b.img"},
		{"config ubd1=" + dir + "/x.img", "config ubd1=" + dir + "/x.img"},
		{"config   ubdb=./c.img", "config   ubdb=" + dir + "/c.img"},
		{"config ubd1", "config ubd1"},
		{"config eth0=tuntap,tap0", "config eth0=tuntap,tap0"},
		{"version", "version"},
	} {
		if got := s.fixFilenames(tc.in); got != tc.want {
			t.Errorf("fixFilenames(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
