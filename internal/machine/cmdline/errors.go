package cmdline

import (
	"errors"
	"fmt"
)

// Sentinels carried by *ArgError.Err, for callers that branch on the kind
// of mistake.
var (
	// ErrSyntax is a malformed argument: a missing '=', a bad number, a
	// field that does not parse.
	ErrSyntax = errors.New("syntax error")
	// ErrOutOfRange is a device index the kernel does not have (ubd16,
	// con16, ssl64).
	ErrOutOfRange = errors.New("device index out of range")
	// ErrUnknownTransport is an ethN= or vecN: transport this kernel does
	// not have.
	ErrUnknownTransport = errors.New("unknown network transport")
	// ErrUnknownChannel is a console or serial line channel the kernel
	// does not know.
	ErrUnknownChannel = errors.New("unknown channel")
	// ErrDuplicate is a device configured twice; the kernel keeps the
	// first and ignores the second.
	ErrDuplicate = errors.New("device configured twice")
)

// ArgError is a kernel argument that umlkit refuses, shaped like
// net.OpError: which argument, what is wrong, what to do.
type ArgError struct {
	Arg    string // the argument as given
	Pos    int    // its index in the argument list
	Reason string // what is wrong
	Fix    string // what to write instead; may be empty
	Err    error  // one of the sentinels above
}

func (e *ArgError) Error() string {
	s := fmt.Sprintf("kernel argument %q: %s", e.Arg, e.Reason)
	if e.Fix != "" {
		s += "; " + e.Fix
	}
	return s
}

func (e *ArgError) Unwrap() error { return e.Err }

// ArgErrors returns every *ArgError in err, which Parse builds with
// errors.Join, in argument order.
func ArgErrors(err error) []*ArgError {
	if err == nil {
		return nil
	}
	var out []*ArgError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, ArgErrors(e)...)
		}
		return out
	}
	var ae *ArgError
	if errors.As(err, &ae) {
		out = append(out, ae)
	}
	return out
}

// bad is the error a field parser returns before Parse knows the argument.
type bad struct {
	reason, fix string
	err         error
}

func syntax(reason, fix string) *bad { return &bad{reason, fix, ErrSyntax} }
