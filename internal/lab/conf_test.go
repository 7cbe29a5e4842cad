package lab

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestLoadGolden reads each lab under testdata and compares its plan with
// testdata/NAME.golden (go test -run TestLoadGolden -update rewrites them).
func TestLoadGolden(t *testing.T) {
	for _, name := range []string{"twohosts", "routing", "hubfiles"} {
		t.Run(name, func(t *testing.T) {
			l, err := Load(filepath.Join("testdata", name))
			if err != nil {
				t.Fatalf("Load(%s): %v", name, err)
			}
			l.Dir = name
			b, err := json.MarshalIndent(l, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			var ws []string
			for _, w := range l.Warnings {
				ws = append(ws, w.String())
			}
			got := string(b) + "\nwarnings:\n" + strings.Join(ws, "\n") + "\n"
			got = strings.ReplaceAll(got, mustAbs(t, "testdata"), "testdata")
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestLoadGolden -update)", err)
			}
			if got != string(want) {
				t.Errorf("Load(%s) =\n%s\nwant\n%s", name, got, want)
			}
		})
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestParseConfigDialects(t *testing.T) {
	c, err := ParseConfig("lab.conf", []byte(`
pc1[0]=A
pc1[1]="B/02:AA:bb:00:00:01"   # Kathara MAC dialect
pc1[mem]=128m
pc1[ipv6]=false
pc1[sysctl]="net.ipv4.ip_forward=1"
pc1[sysctl]=net.ipv4.conf.all.rp_filter=0
pc1[env]="A=b c"
pc1[num_terms]=0
pc1[bridged]=true
LAB_AUTHOR='someone # not a comment'
`))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	n := c.Nodes[0]
	if len(n.Interfaces) != 2 || n.Interfaces[0].Domain != "A" || n.Interfaces[1].Domain != "B" || n.Interfaces[1].MAC != "02:aa:bb:00:00:01" {
		t.Errorf("interfaces = %+v, want A and B with 02:aa:bb:00:00:01", n.Interfaces)
	}
	if n.Mem != 128 || n.IPv6 == nil || *n.IPv6 || !n.Bridged || n.NumTerms == nil || *n.NumTerms != 0 {
		t.Errorf("options = %+v", n)
	}
	if strings.Join(n.Sysctls, " ") != "net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0" || strings.Join(n.Env, " ") != "A=b c" {
		t.Errorf("sysctls %q env %q", n.Sysctls, n.Env)
	}
	if c.Meta["LAB_AUTHOR"] != "someone # not a comment" {
		t.Errorf("LAB_AUTHOR = %q", c.Meta["LAB_AUTHOR"])
	}
}

func TestParseConfigWarnings(t *testing.T) {
	c, err := ParseConfig("x/lab.conf", []byte("pc1[0]=A\npc1[cpus]=2\npc1[colour]=red\nFOO=1\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range c.Warnings {
		got = append(got, w.String())
	}
	want := []string{"x/lab.conf:2: pc1[cpus]", "x/lab.conf:3: pc1[colour]: unknown option", "x/lab.conf:4: unknown setting FOO"}
	if len(got) != len(want) {
		t.Fatalf("warnings = %q, want %d", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("warning %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"garbage", "pc1[0]=A\nhello world\n", "lab.conf:2: cannot read"},
		{"twice", "pc1[0]=A\npc1[0]=B\n", "lab.conf:2: pc1[0] is set twice (also on line 1)"},
		{"gap", "pc1[0]=A\npc1[2]=B\n", "lab.conf:2: device pc1 has eth2 but no eth1: add pc1[1]=DOMAIN"},
		{"bad mac", "pc1[0]=A/zz:00\n", "lab.conf:1: pc1[0]=\"A/zz:00\": MAC address"},
		{"multicast mac", "pc1[0]=A/01:00:00:00:00:01\n", "multicast"},
		{"bad domain", "pc1[0]=\"a b\"\n", "collision domain name"},
		{"bad mem", "pc1[mem]=lots\n", "lab.conf:1: pc1[mem]=\"lots\": want a size"},
		{"tiny mem", "pc1[mem]=4\n", "too little"},
		{"bad bool", "pc1[ipv6]=maybe\n", "want true or false"},
		{"bad sysctl", "pc1[sysctl]=forward\n", "write KEY=VALUE"},
		{"bad env", "pc1[env]=1X=2\n", "write NAME=VALUE"},
		{"open quote", "pc1[0]=\"A\n", "no closing"},
		{"bad name", "p$c[0]=A\n", "device name"},
		{"iface range", "pc1[64]=A\n", "from 0 to 63"},
		{"netkit tap", "pc1[0]=tap,10.0.0.1,10.0.0.2\n", "Netkit's tap collision domain"},
		{"hub unknown", "UMLKIT_HUBS=\"a b!\"\n", "UMLKIT_HUBS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("lab.conf", []byte(tc.in))
			var pe *ParseError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseConfig(%q) = %v, want a ParseError containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"cycle", map[string]string{"lab.conf": "a[0]=X\nb[0]=X\nc[0]=X\n", "lab.dep": "a: b\nb: c\nc: a\n"}, "cycle: a -> b -> c -> a"},
		{"dep unknown", map[string]string{"lab.conf": "a[0]=X\n", "lab.dep": "a: zz\n"}, "device zz is not in the lab"},
		{"dep syntax", map[string]string{"lab.conf": "a[0]=X\n", "lab.dep": "a b c\n"}, "lab.dep:1: cannot read"},
		{"hub unused", map[string]string{"lab.conf": "a[0]=X\nUMLKIT_HUBS=Y\n"}, "UMLKIT_HUBS names Y"},
		{"empty", map[string]string{"README": "x"}, "no lab.conf and no node directories"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for f, s := range tc.files {
				os.WriteFile(filepath.Join(dir, f), []byte(s), 0o644)
			}
			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load(%v) = %v, want an error containing %q", tc.files, err, tc.want)
			}
		})
	}
}

func TestLevels(t *testing.T) {
	d := Deps{"c": {"a", "b"}, "b": {"a"}}
	got, err := d.Levels([]string{"a", "b", "c", "d"})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"a", "d"}, {"b"}, {"c"}}
	if gb, wb := mustJSON(got), mustJSON(want); gb != wb {
		t.Errorf("Levels = %s, want %s", gb, wb)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestNodeWithoutDomainWarns(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "lab.conf"), []byte("a[0]=X\nb[mem]=64\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "c"), 0o755)
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Nodes) != 3 || l.Nodes[2].Name != "c" || l.Nodes[2].Tree != "c" {
		t.Fatalf("nodes = %s, want a, b and c (from its directory)", mustJSON(l.Nodes))
	}
	var n int
	for _, w := range l.Warnings {
		if strings.Contains(w.Reason, "in no collision domain") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("warnings = %v, want two about nodes in no domain", l.Warnings)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"pc1[0]=A\n", "pc1[1]=\"B/02:00:00:00:00:01\"\npc1[0]=A\n", "LAB_NAME='x'\n", "a[mem]=64m\na[sysctl]=k=v\n", "# c\n\n", "a[0]=A\na[0]=A\n", "a[3]=A"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("lab.conf", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			return
		}
		for _, n := range c.Nodes {
			for i, ifc := range n.Interfaces {
				if ifc.Domain == "" {
					t.Fatalf("node %s eth%d has no domain", n.Name, i)
				}
			}
		}
	})
}

func FuzzParseDeps(f *testing.F) {
	for _, s := range []string{"a: b c\n", "a b: c\n# x\n", "a:\n", "a: a\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDeps("lab.dep", data)
		if err != nil {
			return
		}
		var names []string
		seen := map[string]bool{}
		for k, v := range d {
			for _, n := range append([]string{k}, v...) {
				if !seen[n] {
					seen[n] = true
					names = append(names, n)
				}
			}
		}
		levels, err := d.Levels(names)
		if err != nil {
			return
		}
		at := map[string]int{}
		for i, l := range levels {
			for _, n := range l {
				at[n] = i
			}
		}
		for k, v := range d {
			for _, dep := range v {
				if at[dep] >= at[k] {
					t.Fatalf("%s at level %d, before its dependency %s at %d", k, at[k], dep, at[dep])
				}
			}
		}
	})
}

func TestLockRefusesASecondHolder(t *testing.T) {
	l := &Lab{Dir: t.TempDir()}
	unlock, err := l.lock(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.lock(context.Background(), false); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("second lock = %v, want ErrBusy naming pid %d", err, os.Getpid())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := l.lock(ctx, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting lock = %v, want the context's deadline", err)
	}
	unlock()
	unlock2, err := l.lock(context.Background(), false)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}
