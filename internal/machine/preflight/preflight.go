// Package preflight checks a User-Mode Linux kernel command line against
// the host before boot, and turns what would be a kernel panic or a silent
// surprise into a problem that says what is wrong and what to do: a
// missing root disk, a disk locked by a running instance, a COW file whose
// backing file changed or that is empty, a umid already in use, a uml_dir
// the kernel cannot create, too little memory, a socket path that is too
// long or has nothing listening.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/umlkit/umlkit/internal/machine/cmdline"
)

// Sentinels carried by Problem.Err, for callers that branch on them.
var (
	// ErrMissing: a disk or backing file does not exist.
	ErrMissing = errors.New("file does not exist")
	// ErrLocked: a disk file is locked by a running instance.
	ErrLocked = errors.New("disk in use by a running instance")
	// ErrBackingChanged: a COW file's backing file changed size or mtime
	// since the COW file was made.
	ErrBackingChanged = errors.New("backing file changed")
	// ErrEmptyCOW: an existing COW file is empty or shorter than its header.
	ErrEmptyCOW = errors.New("COW file is empty")
	// ErrNotCOW: the COW position of ubdN=COW,BACKING holds a file that
	// is not a COW file.
	ErrNotCOW = errors.New("not a COW file")
	// ErrUmidInUse: the umid's pid file names a live process.
	ErrUmidInUse = errors.New("umid in use")
	// ErrUMLDir: the kernel cannot create or use uml_dir.
	ErrUMLDir = errors.New("unusable uml_dir")
	// ErrLowMemory: mem= is below the safe minimum.
	ErrLowMemory = errors.New("too little memory")
	// ErrSocketPath: a socket path does not fit in sun_path.
	ErrSocketPath = errors.New("socket path too long")
	// ErrNoListener: nothing listens on a switch socket.
	ErrNoListener = errors.New("nothing listening")
	// ErrHostNet: a TAP device or /dev/net/tun the kernel needs is missing.
	ErrHostNet = errors.New("host network device missing")
)

// Severity says whether a problem stops the boot.
type Severity string

const (
	// Error: the kernel would panic, fail a device, or do something the
	// user did not ask for.
	Error Severity = "error"
	// Warning: the kernel boots, but something is likely to go wrong.
	Warning Severity = "warning"
)

// Problem is one finding: what is wrong and what to do.
type Problem struct {
	Check    string   `json:"check"`         // short id, such as "disk-locked"
	Arg      string   `json:"arg,omitempty"` // the kernel argument concerned
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix,omitempty"`
	PID      int      `json:"pid,omitempty"`  // the other instance's pid, for locks and umids
	Umid     string   `json:"umid,omitempty"` // the other instance's umid, when known
	Err      error    `json:"-"`              // a sentinel above, or a *cmdline.ArgError
}

func (p *Problem) Error() string {
	if p.Fix == "" {
		return p.Message
	}
	return p.Message + "; " + p.Fix
}

func (p *Problem) Unwrap() error { return p.Err }

// Report is the result of the checks, in command-line order.
type Report struct {
	Problems []*Problem `json:"problems"`
}

// OK reports whether no problem stops the boot (warnings may remain).
func (r *Report) OK() bool { return r.Err() == nil }

// Err joins the error-severity problems, or returns nil.
func (r *Report) Err() error {
	var errs []error
	for _, p := range r.Problems {
		if p.Severity == Error {
			errs = append(errs, p)
		}
	}
	return errors.Join(errs...)
}

func (r *Report) add(p *Problem) {
	if p.Severity == "" {
		p.Severity = Error
	}
	r.Problems = append(r.Problems, p)
}

// MinMem is the smallest mem= that is safe with Debian's 6.1 kernel once
// networking is up.
const MinMem = 64 << 20

// Options says where the instance will run.
type Options struct {
	// Dir is the kernel's working directory, which relative disk paths
	// and the default ./root_fs are relative to; "" means the current one.
	Dir string
	// Home is $HOME, for the default uml_dir ~/.uml/; "" means the
	// user's home directory.
	Home string
	// UMLDirs are more uml_dirs to search for the instance that holds a
	// lock (the command line's own uml_dir is always searched).
	UMLDirs []string
	// Run is the command the fixes suggest for starting an instance;
	// "" means "umlkit vm run".
	Run string
}

func (o Options) run() string {
	if o.Run == "" {
		return "umlkit vm run"
	}
	return o.Run
}

// abs resolves p against the kernel's working directory.
func (o Options) abs(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	dir := o.Dir
	if dir == "" {
		dir, _ = os.Getwd()
	}
	return filepath.Join(dir, p)
}

// UMLDir returns the directory instance directories are made in, with a
// trailing '/': uml_dir= when given (with ~/ expanded, as the kernel
// does), else ~/.uml/.
func (o Options) UMLDir(c *cmdline.CommandLine) string {
	d, ok := c.UMLDir()
	if !ok {
		d = "~/.uml/"
	}
	if rest, ok := strings.CutPrefix(d, "~/"); ok {
		home := o.Home
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		d = filepath.Join(home, rest)
	}
	d = o.abs(d)
	if !strings.HasSuffix(d, "/") {
		d += "/"
	}
	return d
}

// CheckArgs parses args and checks them. Arguments that do not parse are
// problems of check "syntax", whose Err is the *cmdline.ArgError.
func CheckArgs(ctx context.Context, args []string, opts Options) (*cmdline.CommandLine, *Report) {
	c, err := cmdline.Parse(args)
	r := &Report{}
	for _, e := range cmdline.ArgErrors(err) {
		r.add(&Problem{Check: "syntax", Arg: e.Arg, Message: fmt.Sprintf("kernel argument %q: %s", e.Arg, e.Reason), Fix: e.Fix, Err: e})
	}
	r.Problems = append(r.Problems, Check(ctx, c, opts).Problems...)
	return c, r
}

// Check runs every check on c. It only reads the host: it opens no file
// for writing and takes no lock. ctx bounds the socket probes.
func Check(ctx context.Context, c *cmdline.CommandLine, opts Options) *Report {
	r := &Report{}
	checkMem(r, c)
	checkInstance(r, c, opts)
	checkDisks(r, c, opts)
	checkNet(ctx, r, c, opts)
	return r
}

func checkMem(r *Report, c *cmdline.CommandLine) {
	m, ok := c.Mem()
	if !ok || m >= MinMem {
		return
	}
	r.add(&Problem{Check: "mem-low", Arg: "mem=" + cmdline.FormatSize(m), Severity: Warning, Err: ErrLowMemory,
		Message: fmt.Sprintf("mem=%s is below %s: with this kernel an instance can stop with \"System is deadlocked on memory\" once networking is up",
			cmdline.FormatSize(m), cmdline.FormatSize(MinMem)),
		Fix: "use mem=64M or more"})
}
