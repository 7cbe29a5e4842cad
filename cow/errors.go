package cow

import (
	"errors"
	"fmt"
	"time"
)

// ErrNotCOW is wrapped by the *FormatError returned for a file that does not
// start with the COW magic. The kernel uses such a file as a plain disk.
var ErrNotCOW = errors.New("not a COW file (no COW magic)")

// ErrBackingChanged is wrapped by the *BackingError returned when the
// backing file's size or mtime no longer matches the COW header. The kernel
// refuses to open such a COW file.
var ErrBackingChanged = errors.New("backing file changed since the COW file was made")

// ErrInUse is wrapped by the *InUseError returned when another process
// (normally a running UML instance) holds a conflicting lock on a file.
var ErrInUse = errors.New("file is in use")

// FormatError describes a malformed COW file: where and what.
type FormatError struct {
	Path   string // the file, when known
	Offset int64  // byte offset of the problem
	Reason string
	Err    error // an underlying cause such as ErrNotCOW or io.ErrUnexpectedEOF, or nil
}

func (e *FormatError) Error() string {
	p := e.Path
	if p == "" {
		p = "cow header"
	}
	return fmt.Sprintf("%s: offset %d: %s", p, e.Offset, e.Reason)
}

// Unwrap returns the underlying cause.
func (e *FormatError) Unwrap() error { return e.Err }

// BackingError reports a backing file that no longer matches its COW
// header. It wraps ErrBackingChanged.
type BackingError struct {
	COW, Backing             string
	HeaderSize, ActualSize   int64
	HeaderMtime, ActualMtime int64 // seconds since the epoch
}

func (e *BackingError) Error() string {
	if e.HeaderSize != e.ActualSize {
		return fmt.Sprintf("backing file %s of %s changed size: the COW header says %d bytes, the file has %d; "+
			"the COW file belongs to a different image: point it at the right one with `umlkit cow rebase %s BACKING`",
			e.Backing, e.COW, e.HeaderSize, e.ActualSize, e.COW)
	}
	return fmt.Sprintf("backing file %s of %s was modified after the COW file was made: the COW header records mtime %d (%s), the file has %d (%s); "+
		"if only its time changed (touch, a copy without -p) run `umlkit cow rebase --refresh-mtime %s`; if its content changed, the COW file no longer matches it",
		e.Backing, e.COW, e.HeaderMtime, fmtTime(e.HeaderMtime), e.ActualMtime, fmtTime(e.ActualMtime), e.COW)
}

func fmtTime(s int64) string { return time.Unix(s, 0).UTC().Format(time.RFC3339) }

// Unwrap returns ErrBackingChanged.
func (e *BackingError) Unwrap() error { return ErrBackingChanged }

// InUseError reports the process holding a lock on Path. It wraps ErrInUse.
type InUseError struct {
	Path string
	PID  int    // the lock holder's pid; 0 or -1 when the kernel did not say
	Umid string // the holder's UML instance id, when found
}

func (e *InUseError) Error() string {
	who := "another process"
	switch {
	case e.Umid != "" && e.PID > 0:
		who = fmt.Sprintf("instance %s (pid %d)", e.Umid, e.PID)
	case e.PID > 0:
		who = fmt.Sprintf("pid %d", e.PID)
	}
	fix := "stop it first"
	if e.Umid != "" {
		fix = fmt.Sprintf("power it off first (uml_mconsole %s halt)", e.Umid)
	}
	return fmt.Sprintf("%s is in use by %s: %s", e.Path, who, fix)
}

// Unwrap returns ErrInUse.
func (e *InUseError) Unwrap() error { return ErrInUse }
