package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
)

// ErrClosed is returned for sessions cut off because the stream ended.
var ErrClosed = errors.New("agent connection closed")

// Client is the host side of an agent connection.
type Client struct {
	w     *writer
	rw    io.ReadWriter
	hello hello

	helloCh chan hello

	mu       sync.Mutex
	next     uint32
	sessions map[uint32]*Session
	err      error
	done     chan struct{}
}

// NewClient asks the guest side on rw for its hello and waits for it
// (bounded by ctx), discarding anything before it. Then it serves
// sessions until rw fails; Close stops it.
func NewClient(ctx context.Context, rw io.ReadWriter) (*Client, error) {
	c := &Client{w: newWriter(rw, Window), rw: rw, sessions: map[uint32]*Session{}, done: make(chan struct{}),
		helloCh: make(chan hello, 1)}
	go c.read(newReader(rw, nil))
	if err := c.w.send(tHello, 0, nil); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	select {
	case c.hello = <-c.helloCh:
	case <-c.done:
		return nil, fmt.Errorf("agent: waiting for the guest's hello: %w", c.err)
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("agent: no hello from the guest (is the agent running on that line?): %w", ctx.Err())
	}
	return c, nil
}

// Hostname is the guest's host name, from its hello.
func (c *Client) Hostname() string { return c.hello.Hostname }

func (c *Client) read(rd *reader) {
	var err error
	for {
		var f frame
		f, err = rd.next()
		if err != nil {
			break
		}
		switch f.typ {
		case tHello:
			var h hello
			json.Unmarshal(f.payload, &h)
			select {
			case c.helloCh <- h:
			default:
			}
			continue
		case tAck:
			if len(f.payload) == 8 {
				c.w.ack(binary.BigEndian.Uint64(f.payload))
			}
			continue
		}
		c.mu.Lock()
		s := c.sessions[f.id]
		c.mu.Unlock()
		if s == nil {
			continue // output of a session that already ended
		}
		switch f.typ {
		case tStdout:
			if s.cmd.Stdout != nil {
				s.cmd.Stdout.Write(f.payload)
			}
		case tStderr:
			if s.cmd.Stderr != nil {
				s.cmd.Stderr.Write(f.payload)
			}
		case tExit:
			var st ExitStatus
			if jerr := json.Unmarshal(f.payload, &st); jerr != nil {
				st = ExitStatus{Code: 255, Error: "bad exit frame: " + jerr.Error()}
			}
			c.finish(f.id, st, nil)
		}
	}
	c.w.close()
	c.mu.Lock()
	c.err = err
	pending := c.sessions
	c.sessions = map[uint32]*Session{}
	c.mu.Unlock()
	for _, s := range pending {
		s.end(ExitStatus{Code: 255}, fmt.Errorf("%w: %v", ErrClosed, err))
	}
	close(c.done)
}

func (c *Client) finish(id uint32, st ExitStatus, err error) {
	c.mu.Lock()
	s := c.sessions[id]
	delete(c.sessions, id)
	c.mu.Unlock()
	if s != nil {
		s.end(st, err)
	}
}

// Close ends the connection (closing rw if it is an io.Closer); running
// sessions end with ErrClosed.
func (c *Client) Close() error {
	if cl, ok := c.rw.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// Cmd is a command to run in the guest.
type Cmd struct {
	Argv   []string
	Env    []string // added to PATH=DefaultPath and HOME=/root, which it may override
	Dir    string
	TTY    bool // a terminal: stdout carries both output streams
	Rows   uint16
	Cols   uint16
	Stdin  io.Reader // nil: empty input
	Stdout io.Writer // nil: discard
	Stderr io.Writer // nil: discard
}

// Session is a started command.
type Session struct {
	c    *Client
	id   uint32
	cmd  Cmd
	once sync.Once
	st   ExitStatus
	err  error
	done chan struct{}
}

func (s *Session) end(st ExitStatus, err error) {
	s.once.Do(func() { s.st, s.err = st, err; close(s.done) })
}

// Start starts cmd in the guest.
func (c *Client) Start(cmd Cmd) (*Session, error) {
	if len(cmd.Argv) == 0 {
		return nil, errors.New("agent: empty command")
	}
	b, err := json.Marshal(startRequest{Argv: cmd.Argv, Env: cmd.Env, Dir: cmd.Dir, TTY: cmd.TTY, Rows: cmd.Rows, Cols: cmd.Cols})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %v", ErrClosed, c.err)
	}
	c.next++
	s := &Session{c: c, id: c.next, cmd: cmd, done: make(chan struct{})}
	c.sessions[s.id] = s
	c.mu.Unlock()
	if err := c.w.send(tStart, s.id, b); err != nil {
		c.finish(s.id, ExitStatus{Code: 255}, err)
		return nil, fmt.Errorf("agent: start %q: %w", cmd.Argv[0], err)
	}
	go s.feed()
	return s, nil
}

func (s *Session) feed() {
	if s.cmd.Stdin != nil {
		buf := make([]byte, maxStdinChunk)
		for {
			n, err := s.cmd.Stdin.Read(buf)
			if n > 0 {
				if s.c.w.send(tStdin, s.id, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				break
			}
			select {
			case <-s.done:
				return
			default:
			}
		}
	}
	s.c.w.send(tStdin, s.id, nil)
}

// Signal sends sig to the command.
func (s *Session) Signal(sig syscall.Signal) error {
	return s.c.w.send(tSignal, s.id, []byte{byte(sig)})
}

// Resize sets the terminal size of a TTY session.
func (s *Session) Resize(rows, cols uint16) error {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b, rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return s.c.w.send(tResize, s.id, b)
}

// Wait waits for the command to end. The error is non-nil only when the
// connection failed; a command that could not start has Error set in the
// status.
func (s *Session) Wait() (ExitStatus, error) {
	<-s.done
	return s.st, s.err
}

// Run starts cmd and waits for it. When ctx ends first, the command is
// killed.
func (c *Client) Run(ctx context.Context, cmd Cmd) (ExitStatus, error) {
	s, err := c.Start(cmd)
	if err != nil {
		return ExitStatus{}, err
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		s.Signal(syscall.SIGKILL)
		<-s.done
		return s.st, ctx.Err()
	}
	return s.Wait()
}
