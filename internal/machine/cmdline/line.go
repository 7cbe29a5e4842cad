package cmdline

import (
	"fmt"
	"strconv"
	"strings"
)

// Number of consoles (con0-con15, guest tty0-tty15) and serial lines
// (ssl0-ssl63, guest ttyS0-ttyS63) the kernel has.
const (
	MaxConsoles    = 16
	MaxSerialLines = 64
)

// Line is conN=, sslN=, con= or ssl=: where a console or serial line's
// input and output go.
type Line struct {
	Serial bool // ssl rather than con
	Index  int  // the line number, or -1 for con=/ssl= (every line)

	None bool    // "none": the line is disabled
	In   Channel // the channel, or the input channel of a pair
	Out  Channel // the output channel of an in,out pair
	Pair bool    // written as IN,OUT
}

// Channel is one end of a line: null, fd:N, pty, pts, port:N, xterm or
// tty:DEV.
type Channel struct {
	Type string // "null", "fd", "pty", "pts", "port", "xterm", "tty"
	Arg  string // N for fd and port, DEV for tty
}

func (c Channel) String() string {
	if c.Arg != "" || c.Type == "fd" || c.Type == "port" || c.Type == "tty" {
		return c.Type + ":" + c.Arg
	}
	return c.Type
}

// ChannelTypes lists the channel types of the 6.1 kernel.
var ChannelTypes = []string{"null", "fd", "pty", "pts", "port", "xterm", "tty"}

func (l *Line) prefix() string {
	if l.Serial {
		return "ssl"
	}
	return "con"
}

func (l *Line) Key() string {
	if l.Index < 0 {
		return l.prefix()
	}
	return l.prefix() + strconv.Itoa(l.Index)
}

func (l *Line) String() string {
	v := "none"
	switch {
	case l.None:
	case l.Pair:
		v = l.In.String() + "," + l.Out.String()
	default:
		v = l.In.String()
	}
	return l.Key() + "=" + v
}

// parseLine parses what follows "con" or "ssl".
func parseLine(serial bool, s string) (Arg, *bad) {
	l := &Line{Serial: serial, Index: -1}
	name, max := l.prefix(), MaxConsoles
	if serial {
		max = MaxSerialLines
	}
	v, ok := strings.CutPrefix(s, "=")
	if !ok {
		n, rest, b := parseIndex(s, name)
		if b != nil {
			return nil, b
		}
		if n >= max {
			return nil, &bad{fmt.Sprintf("%s%d does not exist", name, n),
				fmt.Sprintf("the kernel has %s0 to %s%d", name, name, max-1), ErrOutOfRange}
		}
		if v, ok = strings.CutPrefix(rest, "="); !ok {
			return nil, syntax("expected '=' after the line number", fmt.Sprintf("write %s%d=CHANNEL", name, n))
		}
		l.Index = n
	}
	if v == "none" {
		l.None = true
		return l, nil
	}
	in, out, pair := strings.Cut(v, ",")
	var b *bad
	if l.In, b = parseChannel(in); b != nil {
		return nil, b
	}
	if pair {
		if l.Out, b = parseChannel(out); b != nil {
			return nil, b
		}
		l.Pair = true
	}
	return l, nil
}

func parseChannel(s string) (Channel, *bad) {
	fix := "channels are null, fd:N, pty, pts, port:N, xterm, tty:DEV, an IN,OUT pair of them, or none for the whole line"
	for _, t := range ChannelTypes {
		rest, ok := strings.CutPrefix(s, t)
		if !ok {
			continue
		}
		arg, colon := strings.CutPrefix(rest, ":")
		switch t {
		case "fd", "port":
			if !colon || arg == "" {
				return Channel{}, syntax(fmt.Sprintf("channel %q needs a number: %s:N", s, t), fix)
			}
			max := uint64(1<<31 - 1)
			if t == "port" {
				max = 1<<16 - 1
			}
			if n, err := strconv.ParseUint(arg, 10, 32); err != nil || n > max || (len(arg) > 1 && arg[0] == '0') {
				return Channel{}, syntax(fmt.Sprintf("channel %q: %q is not a number up to %d", s, arg, max), fix)
			}
		case "tty":
			if !colon || arg == "" {
				return Channel{}, syntax(fmt.Sprintf("channel %q needs a device: tty:/dev/ttyX", s), fix)
			}
		default:
			if rest != "" {
				return Channel{}, &bad{fmt.Sprintf("channel %q: unexpected %q after %s (the kernel would read it as plain %s)", s, rest, t, t), fix, ErrUnknownChannel}
			}
		}
		return Channel{Type: t, Arg: arg}, nil
	}
	if s == "none" {
		return Channel{}, &bad{"none cannot be one end of a pair", "write none alone to disable the line, or null to discard", ErrUnknownChannel}
	}
	return Channel{}, &bad{fmt.Sprintf("unknown channel %q", s), fix, ErrUnknownChannel}
}
