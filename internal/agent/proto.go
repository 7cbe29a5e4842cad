// Package agent runs commands inside a UML instance on the host's behalf,
// over a byte stream that needs no guest network: a serial line (sslN=fd:N
// on the host, /dev/ttySN in the guest). The guest side (Serve) starts
// processes; the host side (Client) runs them with separate stdout and
// stderr, stdin, exit codes, signals, terminal sizes, several at a time.
//
// Frames are a 2-byte magic, a type, a 4-byte session id, a 4-byte length
// and the payload (all big-endian). A reader that meets bytes that are not
// a frame skips ahead to the next magic: a serial line may carry echo or
// noise before the guest side has put it in raw mode.
package agent

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame types.
const (
	tHello  byte = 1 // guest→host, session 0: JSON hello
	tStart  byte = 2 // host→guest: JSON startRequest
	tStdin  byte = 3 // host→guest: data; empty means end of input
	tStdout byte = 4 // guest→host: data
	tStderr byte = 5 // guest→host: data
	tExit   byte = 6 // guest→host: JSON ExitStatus
	tSignal byte = 7 // host→guest: one byte, the signal number
	tResize byte = 8 // host→guest: rows, cols as two uint16
	tAck    byte = 9 // guest→host, session 0: bytes read from the line so far (uint64)
	maxType      = tAck
)

// Window is how many bytes the host side may have sent that the guest side
// has not yet read off the line. A UML serial line loses its way when more
// than the guest terminal's 4 KiB input buffer is waiting, so the host waits
// for the guest's acknowledgements (tAck) instead of filling it.
const Window = 3000

// maxStdinChunk keeps a stdin frame, escaped, well inside Window.
const maxStdinChunk = 1024

// MaxPayload is the largest payload a frame carries.
const MaxPayload = 64 << 10

var magic = [2]byte{0xA6, 0x5E}

const headerLen = 2 + 1 + 4 + 4

type frame struct {
	typ     byte
	id      uint32
	payload []byte
}

// ErrFrame is wrapped by errors about malformed frames.
var ErrFrame = errors.New("malformed agent frame")

// reader reads frames, resynchronising on the magic after garbage.
type reader struct {
	r       *bufio.Reader
	skipped int // bytes discarded while looking for a frame
}

// newReader reads frames from r; onRead, if not nil, is called with the
// running total of bytes read off r after every read.
func newReader(r io.Reader, onRead func(total uint64)) *reader {
	return &reader{r: bufio.NewReaderSize(newUnescapeReader(&countingReader{r: r, onRead: onRead}), 2*MaxPayload)}
}

type countingReader struct {
	r      io.Reader
	total  uint64
	onRead func(uint64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.total += uint64(n)
		if c.onRead != nil {
			c.onRead(c.total)
		}
	}
	return n, err
}

// next returns the next well-formed frame. The payload is a fresh slice
// the caller owns.
func (rd *reader) next() (frame, error) {
	for {
		hdr, err := rd.r.Peek(headerLen)
		if err != nil {
			if len(hdr) > 0 && errors.Is(err, io.EOF) {
				return frame{}, io.ErrUnexpectedEOF
			}
			return frame{}, err
		}
		if hdr[0] != magic[0] || hdr[1] != magic[1] || hdr[2] == 0 || hdr[2] > maxType {
			rd.r.Discard(1)
			rd.skipped++
			continue
		}
		n := binary.BigEndian.Uint32(hdr[7:11])
		if n > MaxPayload {
			rd.r.Discard(1)
			rd.skipped++
			continue
		}
		f := frame{typ: hdr[2], id: binary.BigEndian.Uint32(hdr[3:7]), payload: make([]byte, n)}
		rd.r.Discard(headerLen)
		if _, err := io.ReadFull(rd.r, f.payload); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return frame{}, fmt.Errorf("%w: payload of %d bytes: %w", ErrFrame, n, err)
		}
		return f, nil
	}
}

// writer serialises frames from many goroutines onto one stream. With
// window set, it keeps at most that many bytes unacknowledged (see ack).
type writer struct {
	wmu    sync.Mutex // serialises writes to w
	mu     sync.Mutex // guards the counters below; never held while writing
	w      io.Writer
	window uint64
	sent   uint64
	acked  uint64
	closed bool
	room   *sync.Cond
}

func newWriter(w io.Writer, window uint64) *writer {
	wr := &writer{w: w, window: window}
	wr.room = sync.NewCond(&wr.mu)
	return wr
}

// ack records that the peer has read total bytes.
func (wr *writer) ack(total uint64) {
	wr.mu.Lock()
	if total > wr.acked {
		wr.acked = total
	}
	wr.room.Broadcast()
	wr.mu.Unlock()
}

// close wakes and fails senders waiting for room.
func (wr *writer) close() {
	wr.mu.Lock()
	wr.closed = true
	wr.room.Broadcast()
	wr.mu.Unlock()
}

// reserve waits until n more bytes fit in the window and counts them sent.
func (wr *writer) reserve(n uint64) error {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	if wr.window > 0 {
		if n > wr.window {
			return ErrTooLarge
		}
		for !wr.closed && wr.sent+n-wr.acked > wr.window {
			wr.room.Wait()
		}
		if wr.closed {
			return ErrClosed
		}
	}
	wr.sent += n
	return nil
}

// ErrTooLarge is returned for a frame that cannot fit in the window.
var ErrTooLarge = errors.New("agent request too large for the line's window")

func (wr *writer) send(typ byte, id uint32, payload []byte) error {
	wr.wmu.Lock()
	defer wr.wmu.Unlock()
	for first := true; first || len(payload) > 0; first = false {
		chunk := payload
		if len(chunk) > MaxPayload {
			chunk = chunk[:MaxPayload]
		}
		payload = payload[len(chunk):]
		buf := make([]byte, headerLen+len(chunk))
		copy(buf, magic[:])
		buf[2] = typ
		binary.BigEndian.PutUint32(buf[3:7], id)
		binary.BigEndian.PutUint32(buf[7:11], uint32(len(chunk)))
		copy(buf[headerLen:], chunk)
		wire := escape(buf)
		if err := wr.reserve(uint64(len(wire))); err != nil {
			return err
		}
		if _, err := wr.w.Write(wire); err != nil {
			return err
		}
	}
	return nil
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	Code   int    `json:"code"`             // exit code; 128+N after signal N, like a shell
	Signal int    `json:"signal,omitempty"` // the signal that ended it, if any
	Error  string `json:"error,omitempty"`  // why it could not start (Code is then 127 or 126)
}

type hello struct {
	Version  int    `json:"version"`
	Hostname string `json:"hostname"`
}

type startRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
}

const protocolVersion = 1
