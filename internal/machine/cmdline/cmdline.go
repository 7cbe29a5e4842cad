package cmdline

import (
	"errors"
	"fmt"
	"strings"
)

// Arg is one typed kernel argument.
type Arg interface {
	// Key names what the argument configures, so that two spellings of
	// the same device compare equal: "mem", "ubd0" (for ubd0= and ubda=),
	// "eth1", "vec0", "con", "con0", "ssl3", or, for arguments umlkit does
	// not know, the text before '='.
	Key() string
	// String renders the argument as the kernel reads it.
	String() string
}

// CommandLine is a kernel argument list, in order.
type CommandLine struct {
	Args []Arg
}

// Parse parses a `linux` argument list (without the program name). Every
// argument comes back in order: the ones umlkit knows typed, the rest as
// *Other. An argument that is wrong is kept as *Other too, and the error
// joins one *ArgError per wrong argument (see ArgErrors).
func Parse(args []string) (*CommandLine, error) {
	c := &CommandLine{Args: make([]Arg, 0, len(args))}
	var errs []error
	seen := map[string]bool{}
	for i, s := range args {
		a, b := parseArg(s)
		if b == nil {
			if k := a.Key(); unique(a) && seen[k] {
				b = &bad{reason: k + " is configured twice and the kernel ignores the second",
					fix: "remove one of them", err: ErrDuplicate}
			} else {
				seen[k] = true
			}
		}
		if b != nil {
			errs = append(errs, &ArgError{Arg: s, Pos: i, Reason: b.reason, Fix: b.fix, Err: b.err})
			a = &Other{Text: s}
		}
		c.Args = append(c.Args, a)
	}
	return c, errors.Join(errs...)
}

// unique reports whether the kernel refuses a second argument with a's key.
func unique(a Arg) bool {
	switch a.(type) {
	case *Disk, *Eth, *Vec, *Umid:
		return true
	}
	return false
}

// MustParse is Parse for literal argument lists in tests and examples; it
// panics on error.
func MustParse(args ...string) *CommandLine {
	c, err := Parse(args)
	if err != nil {
		panic(err)
	}
	return c
}

func parseArg(s string) (Arg, *bad) {
	pre := func(p string) (string, bool) { return strings.CutPrefix(s, p) }
	if v, ok := pre("mem="); ok {
		n, b := ParseSize(v)
		if b != nil {
			return nil, syntax(b.Error(), "write bytes or a size with K, M or G, such as mem=64M")
		}
		return &Mem{Bytes: n}, nil
	}
	if v, ok := pre("umid="); ok {
		return parseUmid(v)
	}
	if v, ok := pre("uml_dir="); ok {
		if v == "" {
			return nil, syntax("uml_dir is empty", "give a directory, such as uml_dir=/run/uml/, or leave it out for ~/.uml/")
		}
		return &UMLDir{Dir: v}, nil
	}
	if v, ok := pre("root="); ok {
		return &Root{Dev: v}, nil
	}
	if v, ok := pre("init="); ok {
		return &Init{Path: v}, nil
	}
	if v, ok := pre("hostfs="); ok {
		return parseHostFS(v)
	}
	if v, ok := pre("mconsole="); ok {
		p, ok := strings.CutPrefix(v, "notify:")
		if !ok || p == "" {
			return nil, syntax("the only mconsole option is notify:PATH", "write mconsole=notify:/path/to/socket")
		}
		return &Notify{Path: p}, nil
	}
	switch s {
	case "quiet", "noreboot":
		return &Flag{Name: s}, nil
	}
	if strings.HasPrefix(s, "ubd=") {
		// ubd=sync (every disk O_SYNC) and the obsolete fake major.
		return &Other{Text: s}, nil
	}
	if v, ok := pre("ubd"); ok {
		return parseDisk(v)
	}
	if v, ok := pre("eth"); ok {
		return parseEth(v)
	}
	if v, ok := pre("vec"); ok {
		return parseVec(v)
	}
	if strings.HasPrefix(s, "console=") || s == "ssl-non-raw" {
		return &Other{Text: s}, nil
	}
	if v, ok := pre("con"); ok {
		return parseLine(false, v)
	}
	if v, ok := pre("ssl"); ok {
		return parseLine(true, v)
	}
	return &Other{Text: s}, nil
}

// Strings renders the argument list.
func (c *CommandLine) Strings() []string {
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = a.String()
	}
	return out
}

// String renders the list as one line, arguments separated by spaces.
func (c *CommandLine) String() string { return strings.Join(c.Strings(), " ") }

// Get returns the first argument with key, or nil.
func (c *CommandLine) Get(key string) Arg {
	for _, a := range c.Args {
		if a.Key() == key {
			return a
		}
	}
	return nil
}

// Set replaces the first argument with a's key, or appends a.
func (c *CommandLine) Set(a Arg) {
	for i, b := range c.Args {
		if b.Key() == a.Key() {
			c.Args[i] = a
			return
		}
	}
	c.Args = append(c.Args, a)
}

// Remove drops every argument with key and reports whether there was one.
func (c *CommandLine) Remove(key string) bool {
	out := c.Args[:0]
	for _, a := range c.Args {
		if a.Key() != key {
			out = append(out, a)
		}
	}
	removed := len(out) != len(c.Args)
	clear(c.Args[len(out):])
	c.Args = out
	return removed
}

// Mem returns the memory size in bytes, and false when mem= is not given.
// The kernel uses the last mem=.
func (c *CommandLine) Mem() (uint64, bool) {
	var m *Mem
	for _, a := range c.Args {
		if x, ok := a.(*Mem); ok {
			m = x
		}
	}
	if m == nil {
		return 0, false
	}
	return m.Bytes, true
}

// Umid returns the instance id, and false when umid= is not given (the
// kernel then picks a random one).
func (c *CommandLine) Umid() (string, bool) {
	if u, ok := c.Get("umid").(*Umid); ok {
		return u.Name, true
	}
	return "", false
}

// UMLDir returns the uml_dir value as given, and false when it is not
// given (the kernel then uses ~/.uml/). The kernel uses the last one.
func (c *CommandLine) UMLDir() (string, bool) {
	var d *UMLDir
	for _, a := range c.Args {
		if x, ok := a.(*UMLDir); ok {
			d = x
		}
	}
	if d == nil {
		return "", false
	}
	return d.Dir, true
}

// Disks returns the ubd disks in argument order.
func (c *CommandLine) Disks() []*Disk { return all[*Disk](c) }

// Disk returns ubd disk n, or nil when it is not configured.
func (c *CommandLine) Disk(n int) *Disk {
	for _, d := range c.Disks() {
		if d.Index == n {
			return d
		}
	}
	return nil
}

// Eths returns the ethN= network devices in argument order.
func (c *CommandLine) Eths() []*Eth { return all[*Eth](c) }

// Vecs returns the vecN: vector network devices in argument order.
func (c *CommandLine) Vecs() []*Vec { return all[*Vec](c) }

// Lines returns the console and serial line arguments in order.
func (c *CommandLine) Lines() []*Line { return all[*Line](c) }

// Notify returns the mconsole notify socket path, or "".
func (c *CommandLine) Notify() string {
	if n, ok := c.Get("mconsole").(*Notify); ok {
		return n.Path
	}
	return ""
}

func all[T Arg](c *CommandLine) []T {
	var out []T
	for _, a := range c.Args {
		if x, ok := a.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

// Mem is mem=SIZE, the guest's physical memory.
type Mem struct{ Bytes uint64 }

func (*Mem) Key() string      { return "mem" }
func (m *Mem) String() string { return "mem=" + FormatSize(m.Bytes) }

// Umid is umid=NAME, the instance id (its directory under uml_dir).
type Umid struct{ Name string }

// MaxUmid is the longest umid the kernel takes.
const MaxUmid = 63

func (*Umid) Key() string      { return "umid" }
func (u *Umid) String() string { return "umid=" + u.Name }

func parseUmid(v string) (Arg, *bad) {
	switch {
	case v == "":
		return nil, syntax("umid is empty", "give a name such as umid=uml1, or leave it out for a random one")
	case len(v) > MaxUmid:
		return nil, syntax(fmt.Sprintf("umid is %d bytes long and the kernel takes at most %d", len(v), MaxUmid), "use a shorter name")
	case strings.Contains(v, "/"):
		return nil, syntax("umid contains '/'", "use a plain name such as uml1; put the directory in uml_dir=")
	}
	return &Umid{Name: v}, nil
}

// UMLDir is uml_dir=DIR, where instance directories (mconsole socket, pid
// file) are made. The kernel appends a '/' when it is missing.
type UMLDir struct{ Dir string }

func (*UMLDir) Key() string      { return "uml_dir" }
func (d *UMLDir) String() string { return "uml_dir=" + d.Dir }

// Root is root=DEV, the guest's root device.
type Root struct{ Dev string }

func (*Root) Key() string      { return "root" }
func (r *Root) String() string { return "root=" + r.Dev }

// Init is init=PATH, the guest's first process.
type Init struct{ Path string }

func (*Init) Key() string      { return "init" }
func (i *Init) String() string { return "init=" + i.Path }

// HostFS is hostfs=ROOT[,append]: the host directory that guest hostfs
// mounts are confined to.
type HostFS struct {
	Root    string
	Options []string // "append"
}

func (*HostFS) Key() string { return "hostfs" }
func (h *HostFS) String() string {
	return "hostfs=" + strings.Join(append([]string{h.Root}, h.Options...), ",")
}

func parseHostFS(v string) (Arg, *bad) {
	f := strings.Split(v, ",")
	h := &HostFS{Root: f[0]}
	for _, o := range f[1:] {
		switch o {
		case "":
		case "append":
			h.Options = append(h.Options, o)
		default:
			return nil, syntax(fmt.Sprintf("unknown hostfs option %q", o), "the only option is append: hostfs=DIR,append")
		}
	}
	return h, nil
}

// Notify is mconsole=notify:PATH, the host datagram socket the kernel
// reports readiness, panics and guest messages to.
type Notify struct{ Path string }

func (*Notify) Key() string      { return "mconsole" }
func (n *Notify) String() string { return "mconsole=notify:" + n.Path }

// Flag is a bare word the kernel knows: quiet or noreboot.
type Flag struct{ Name string }

func (f *Flag) Key() string    { return f.Name }
func (f *Flag) String() string { return f.Name }

// Other is an argument umlkit passes through untouched (hostname=,
// console=, ubd=sync, anything for the guest's init).
type Other struct{ Text string }

func (o *Other) Key() string {
	k, _, _ := strings.Cut(o.Text, "=")
	return k
}
func (o *Other) String() string { return o.Text }
