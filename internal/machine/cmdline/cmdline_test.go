package cmdline

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// readLines returns the command lines of testdata/cmdlines.txt: comment
// lines are skipped, an empty line is an empty command line.
func readLines(t testing.TB) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "cmdlines.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		if l == "" {
			out = append(out, nil)
			continue
		}
		out = append(out, strings.Split(l, " "))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// describe prints an argument's type and fields (not its rendering), for
// the golden file.
func describe(a Arg) string {
	v := reflect.ValueOf(a).Elem().Interface()
	if e, ok := a.(*Eth); ok {
		return fmt.Sprintf("Eth{Index:%d %T%+v}", e.Index, e.Transport, reflect.ValueOf(e.Transport).Elem().Interface())
	}
	return fmt.Sprintf("%T%+v", v, v)
}

// TestGolden parses real command lines: each renders back byte for byte,
// and its structure matches testdata/cmdlines.golden.
func TestGolden(t *testing.T) {
	var b strings.Builder
	for _, args := range readLines(t) {
		c, err := Parse(args)
		if err != nil {
			t.Errorf("Parse(%q) error: %v", args, err)
			continue
		}
		if diff := cmp.Diff(args, c.Strings(), cmp.Comparer(func(a, b []string) bool {
			return strings.Join(a, " ") == strings.Join(b, " ")
		})); diff != "" {
			t.Errorf("Parse(%q).Strings() differs (-in +out):\n%s", args, diff)
		}
		fmt.Fprintf(&b, "%s\n", strings.Join(args, " "))
		for _, a := range c.Args {
			fmt.Fprintf(&b, "\t%-8s %s\n", a.Key(), describe(a))
		}
	}
	golden := filepath.Join("testdata", "cmdlines.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("parsed structure differs from %s (-want +got):\n%s", golden, diff)
	}
}

func TestSeed(t *testing.T) {
	c, err := Parse(strings.Fields("ubd0=root_fs1.cow,root_fs mem=64M umid=uml1"))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Disk(0)
	if d == nil || d.File != "root_fs1.cow" || d.Backing != "root_fs" || !d.COW() || d.Name() != "ubda" {
		t.Errorf("Disk(0) = %+v, want COW root_fs1.cow over root_fs", d)
	}
	if m, ok := c.Mem(); !ok || m != 64<<20 {
		t.Errorf("Mem() = %d, %v, want %d", m, ok, 64<<20)
	}
	if u, ok := c.Umid(); !ok || u != "uml1" {
		t.Errorf("Umid() = %q, %v, want uml1", u, ok)
	}
	if _, ok := c.UMLDir(); ok {
		t.Error("UMLDir() reported a uml_dir that was not given")
	}
}

func TestParseFields(t *testing.T) {
	c := MustParse("ubdb=x.cow:x.img", "eth3=daemon,,unix,/s/ctl", "vec2:transport=bess,dst=/s/b,depth=8",
		"con1=fd:0,fd:1", "ssl=pts", "mem=0x10M", "mem=2g", "uml_dir=/d", "mconsole=notify:/n", "ubd7d=raw.img")
	d := c.Disk(1)
	if d == nil || !d.Letter || d.File != "x.cow" || d.Backing != "x.img" || d.Sep != ':' || d.Key() != "ubd1" {
		t.Errorf("Disk(1) = %+v", d)
	}
	if d := c.Disk(7); d == nil || !d.NoCOW || d.COW() {
		t.Errorf("Disk(7) = %+v, want a d-flagged raw disk", d)
	}
	if e := c.Eths(); len(e) != 1 || e[0].Index != 3 || e[0].Transport.(*Daemon).CtlPath() != "/s/ctl" {
		t.Errorf("Eths() = %+v", e)
	}
	if d := (&Daemon{}).CtlPath(); d != DefaultDaemonCtl {
		t.Errorf("default CtlPath = %q", d)
	}
	v := c.Vecs()
	if len(v) != 1 || v[0].Transport() != "bess" {
		t.Fatalf("Vecs() = %+v", v)
	}
	if dst, _ := v[0].Get("dst"); dst != "/s/b" {
		t.Errorf("vec dst = %q", dst)
	}
	l := c.Lines()
	if len(l) != 2 || !l[0].Pair || l[0].In != (Channel{"fd", "0"}) || l[0].Out != (Channel{"fd", "1"}) || l[1].Index != -1 || !l[1].Serial {
		t.Errorf("Lines() = %+v", l)
	}
	if m, _ := c.Mem(); m != 2<<30 {
		t.Errorf("Mem() = %d, want the last mem= (2G)", m)
	}
	if c.Notify() != "/n" {
		t.Errorf("Notify() = %q", c.Notify())
	}
}

func TestSetRemove(t *testing.T) {
	c := MustParse("ubda=a.img", "mem=32M", "hostname=x")
	c.Set(&Disk{Index: 0, File: "b.cow", Backing: "b.img"})
	c.Set(&Mem{Bytes: 64 << 20})
	c.Set(&Umid{Name: "n1"})
	want := "ubd0=b.cow,b.img mem=64M hostname=x umid=n1"
	if got := c.String(); got != want {
		t.Errorf("after Set: %q, want %q", got, want)
	}
	if !c.Remove("hostname") || c.Remove("hostname") {
		t.Error("Remove(hostname) should remove once")
	}
	if got := c.String(); got != "ubd0=b.cow,b.img mem=64M umid=n1" {
		t.Errorf("after Remove: %q", got)
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"64M", 64 << 20}, {"64m", 64 << 20}, {"1G", 1 << 30}, {"512k", 512 << 10}, {"1000", 1000},
		{"0x10M", 16 << 20}, {"0x1E", 0x1e}, {"0", 0}, {"16E", 16 << 60 * 0}, {"1T", 1 << 40},
	} {
		if tc.in == "16E" {
			if _, err := ParseSize(tc.in); err == nil {
				t.Errorf("ParseSize(16E) = nil error, want overflow")
			}
			continue
		}
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "M", "64MB", "064M", "-1", "1.5G", "0x", "sixty", "99999999999999999999"} {
		if n, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", bad, n)
		}
	}
	for _, n := range []uint64{0, 1, 1023, 1024, 1536 << 10, 64 << 20, 1 << 30, 3 << 60, 1<<64 - 1} {
		if got, err := ParseSize(FormatSize(n)); err != nil || got != n {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), got, err)
		}
	}
}

// TestErrors checks that each mistake is refused with the right sentinel,
// names the argument and says what to do.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		arg  string
		want error
		text string // part of the message
	}{
		{"ubd out of range", "ubd16=x", ErrOutOfRange, "ubd0 to ubd15"},
		{"ubd letter out of range", "ubdq=x", ErrOutOfRange, "ubda to ubdp"},
		{"ubd bad flag", "ubd0x=x", ErrSyntax, "flag letter"},
		{"ubd missing =", "ubd0", ErrSyntax, "missing '='"},
		{"ubd flags without =", "ubd0rs", ErrSyntax, "missing '='"},
		{"ubd too many flags", "ubd0rrrrrrr=x", ErrSyntax, "too many flags"},
		{"ubd no number", "ubd_x=1", ErrSyntax, "no disk number"},
		{"ubd octal", "ubd010=x", ErrSyntax, "octal"},
		{"ubd no file", "ubd0=,b", ErrSyntax, "no file"},
		{"ubd d and cow", "ubd0d=a.cow,a.img", ErrSyntax, "drop the d flag"},
		{"ubd four fields", "ubd0=a,b,c,d", ErrSyntax, "rename"},
		{"mem suffix junk", "mem=64MB", ErrSyntax, "mem=64M"},
		{"mem octal", "mem=064M", ErrSyntax, "octal"},
		{"mem empty", "mem=", ErrSyntax, "no number"},
		{"umid empty", "umid=", ErrSyntax, "umid=uml1"},
		{"umid long", "umid=" + strings.Repeat("u", 64), ErrSyntax, "at most 63"},
		{"umid slash", "umid=a/b", ErrSyntax, "uml_dir"},
		{"uml_dir empty", "uml_dir=", ErrSyntax, "~/.uml/"},
		{"eth unknown", "eth0=pcap,eth0", ErrUnknownTransport, "tuntap, daemon, vde"},
		{"eth vector name", "eth0=bess,/x", ErrUnknownTransport, "vecN:transport"},
		{"eth no =", "eth0", ErrSyntax, "expected '='"},
		{"eth no number", "ethX=daemon", ErrSyntax, "no device number"},
		{"eth bad mac", "eth0=daemon,zz:00:00:00:00:00", ErrSyntax, "not a MAC"},
		{"eth multicast mac", "eth0=tuntap,tap0,01:00:5e:00:00:01", ErrSyntax, "multicast"},
		{"eth short mac", "eth0=tuntap,tap0,02:00:00:00:01", ErrSyntax, "not a MAC"},
		{"daemon type", "eth0=daemon,,udp,/x", ErrSyntax, "only type is unix"},
		{"daemon data socket", "eth0=daemon,,unix,/ctl,/data", ErrSyntax, "fifth field"},
		{"tuntap extra", "eth0=tuntap,tap0,,1.2.3.4,junk", ErrSyntax, "at most 3"},
		{"tuntap bad ip", "eth0=tuntap,,,300.1.1.1", ErrSyntax, "IPv4"},
		{"tuntap long dev", "eth0=tuntap,averyveryverylongtap", ErrSyntax, "interface name"},
		{"mcast not multicast", "eth0=mcast,,10.0.0.1", ErrSyntax, "multicast"},
		{"mcast ttl", "eth0=mcast,,,,300", ErrSyntax, "ttl"},
		{"ucast port", "eth0=ucast,,10.0.0.1,70000", ErrSyntax, "local port"},
		{"vde mode", "eth0=vde,/x,,,,0799", ErrSyntax, "octal"},
		{"ethertap no dev", "eth0=ethertap", ErrSyntax, "device name"},
		{"vec unknown", "vec0:transport=vde,dst=/x", ErrUnknownTransport, "bess, tap"},
		{"vec no transport", "vec0:dst=/x", ErrSyntax, "transport="},
		{"vec no colon", "vec0=transport=bess", ErrSyntax, "':'"},
		{"vec bess no dst", "vec0:transport=bess", ErrSyntax, "dst="},
		{"vec gre no src", "vec0:transport=gre,dst=1.2.3.4", ErrSyntax, "src="},
		{"vec raw no ifname", "vec0:transport=raw", ErrSyntax, "ifname="},
		{"vec not kv", "vec0:transport=tap,gro", ErrSyntax, "KEY=VALUE"},
		{"vec bad depth", "vec0:transport=tap,depth=lots", ErrSyntax, "depth"},
		{"con unknown", "con0=x-terminal-emulator", ErrUnknownChannel, "pts"},
		{"con junk after", "con0=ptsx", ErrUnknownChannel, "plain pts"},
		{"con fd no number", "con0=fd", ErrSyntax, "fd:N"},
		{"con port bad", "con0=port:99999", ErrSyntax, "65535"},
		{"con tty no dev", "con1=tty", ErrSyntax, "tty:/dev"},
		{"con none in pair", "con0=none,fd:1", ErrUnknownChannel, "none alone"},
		{"con out of range", "con16=pts", ErrOutOfRange, "con0 to con15"},
		{"ssl out of range", "ssl64=pts", ErrOutOfRange, "ssl0 to ssl63"},
		{"con no =", "con1", ErrSyntax, "expected '='"},
		{"con bad number", "conx=pts", ErrSyntax, "no device number"},
		{"hostfs option", "hostfs=/x,prepend", ErrSyntax, "append"},
		{"mconsole option", "mconsole=foo", ErrSyntax, "notify:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"mem=64M", tc.arg}
			c, err := Parse(args)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Parse(%q) error = %v, want %v", args, err, tc.want)
			}
			es := ArgErrors(err)
			if len(es) != 1 || es[0].Arg != tc.arg || es[0].Pos != 1 || es[0].Fix == "" {
				t.Fatalf("ArgErrors = %+v, want one error for %q at 1 with a fix", es, tc.arg)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.text) || !strings.Contains(msg, tc.arg) {
				t.Errorf("error %q should name %q and say %q", msg, tc.arg, tc.text)
			}
			if o, ok := c.Args[1].(*Other); !ok || o.Text != tc.arg {
				t.Errorf("bad argument kept as %#v, want *Other with its text", c.Args[1])
			}
		})
	}
}

func TestDuplicates(t *testing.T) {
	c, err := Parse([]string{"ubd0=a", "ubda=b", "eth0=daemon", "eth0=mcast", "umid=x", "umid=y", "mem=1G", "mem=2G"})
	es := ArgErrors(err)
	if len(es) != 3 || !errors.Is(err, ErrDuplicate) {
		t.Fatalf("Parse error = %v, want three duplicates", err)
	}
	for i, want := range []int{1, 3, 5} {
		if es[i].Pos != want {
			t.Errorf("duplicate %d at %d, want %d", i, es[i].Pos, want)
		}
	}
	if c.Disk(0).File != "a" {
		t.Errorf("Disk(0) = %+v, want the first (the kernel keeps it)", c.Disk(0))
	}
}

// roundTrip checks the fuzz property: a rendered line parses back to the
// same structure and the same errors.
func roundTrip(t *testing.T, args []string) {
	c1, err1 := Parse(args)
	out := c1.Strings()
	c2, err2 := Parse(out)
	if diff := cmp.Diff(c1, c2); diff != "" {
		t.Fatalf("Parse(%q) then render %q parses differently (-first +second):\n%s", args, out, diff)
	}
	if len(ArgErrors(err1)) != len(ArgErrors(err2)) {
		t.Fatalf("Parse(%q) errors %v, after render %v", args, err1, err2)
	}
	if err1 == nil && strings.Join(out, " ") != strings.Join(c2.Strings(), " ") {
		t.Fatalf("render is not stable: %q then %q", out, c2.Strings())
	}
}

func FuzzParse(f *testing.F) {
	for _, args := range readLines(f) {
		f.Add(strings.Join(args, " "))
	}
	for _, s := range []string{"ubd0=a:b,c", "ubd1=x:", "ubd1=x:,s", "ubd0rr=a,", "mem=0x1e", "eth0=slirp,", "eth0=slirp,,a,", "con0=fd:0,", "hostfs=,,append", "vec0:transport=tap,a=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		roundTrip(t, strings.Split(line, " "))
	})
}

func BenchmarkParseRender(b *testing.B) {
	args := strings.Fields("ubd0=/srv/pc1.cow,/srv/root_fs mem=64M umid=pc1 uml_dir=/run/uml/ con=null ssl=null con0=fd:0,fd:1 vec0:transport=bess,dst=/run/sw/lan,mac=02:00:00:00:00:01 eth1=daemon,,unix,/run/sw/ctl hostname=pc1 quiet")
	for b.Loop() {
		c, err := Parse(args)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Strings()
	}
}
