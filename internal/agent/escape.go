package agent

import (
	"bufio"
	"io"
)

// The stream never carries a NUL byte: a UML serial line stalls the guest's
// writer on long runs of NULs. Each NUL is sent as esc, 'n' and each esc as
// esc, 'e'; everything else passes as it is.
const esc = 0x1B

// escape returns p as it goes on the wire.
func escape(p []byte) []byte {
	out := make([]byte, 0, len(p)+len(p)/8+8)
	for _, b := range p {
		switch b {
		case 0:
			out = append(out, esc, 'n')
		case esc:
			out = append(out, esc, 'e')
		default:
			out = append(out, b)
		}
	}
	return out
}

type unescapeReader struct {
	r       *bufio.Reader
	pending bool // an esc ended the previous read
}

func newUnescapeReader(r io.Reader) *unescapeReader {
	return &unescapeReader{r: bufio.NewReaderSize(r, 64<<10)}
}

func (u *unescapeReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := 0
	for n < len(p) {
		if n > 0 && u.r.Buffered() == 0 {
			break // return what we have rather than block
		}
		b, err := u.r.ReadByte()
		if err != nil {
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
		if u.pending {
			u.pending = false
			switch b {
			case 'n':
				p[n] = 0
			case 'e':
				p[n] = esc
			default:
				p[n] = b // not a valid escape: pass it on, the frame reader resyncs
			}
			n++
			continue
		}
		if b == esc {
			u.pending = true
			continue
		}
		p[n] = b
		n++
	}
	return n, nil
}
