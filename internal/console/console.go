// Package console drives a UML kernel's console stream: it reads it line by
// line, lets callers wait for a marker line, runs shell commands on the
// guest's console shell, and recognises a kernel panic.
package console

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// PanicMarker starts the line the kernel prints when it panics.
const PanicMarker = "Kernel panic - not syncing:"

// ErrClosed is returned by waits when the console stream ended (the kernel
// exited) before the awaited line came.
var ErrClosed = errors.New("console closed")

// PanicError is returned by waits when the kernel panicked first.
type PanicError struct {
	Text string // the panic message, such as "VFS: Unable to mount root fs on ..."
}

func (e *PanicError) Error() string { return "kernel panic: " + e.Text }

// Console is one kernel's console. Its methods are safe for concurrent use.
type Console struct {
	w      io.Writer
	onLine func(string)

	mu     sync.Mutex
	lines  []string
	panic  string
	closed bool
	wake   chan struct{} // closed and replaced on every change
	done   chan struct{}
}

// New reads r (the kernel's console output) in a goroutine until EOF;
// input written by Run and Send goes to w. onLine, if not nil, sees every
// line as it is read (for logging); it must not block.
func New(r io.Reader, w io.Writer, onLine func(string)) *Console {
	c := &Console{w: w, onLine: onLine, wake: make(chan struct{}), done: make(chan struct{})}
	go c.read(r)
	return c
}

func (c *Console) read(r io.Reader) {
	defer close(c.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if c.onLine != nil {
			c.onLine(line)
		}
		c.mu.Lock()
		c.lines = append(c.lines, line)
		if i := strings.Index(line, PanicMarker); i >= 0 && c.panic == "" {
			c.panic = strings.TrimSpace(line[i+len(PanicMarker):])
		}
		c.notifyLocked()
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.closed = true
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *Console) notifyLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// Done is closed when the console stream has ended.
func (c *Console) Done() <-chan struct{} { return c.done }

// Lines returns a copy of the lines read so far.
func (c *Console) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// Len returns the number of lines read so far; pass it to WaitFrom to wait
// only for lines that come later.
func (c *Console) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// Panic returns the panic message, or "" if the kernel has not panicked.
func (c *Console) Panic() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.panic
}

// WaitFor waits for a line containing marker and returns it.
func (c *Console) WaitFor(ctx context.Context, marker string) (string, error) {
	line, _, err := c.WaitFrom(ctx, 0, marker)
	return line, err
}

// WaitFrom waits for a line containing marker at index from or later, and
// returns it and its index. It fails with *PanicError if the kernel
// panics, ErrClosed if the stream ends, or ctx's error.
func (c *Console) WaitFrom(ctx context.Context, from int, marker string) (string, int, error) {
	for {
		c.mu.Lock()
		for ; from < len(c.lines); from++ {
			if strings.Contains(c.lines[from], marker) {
				line := c.lines[from]
				c.mu.Unlock()
				return line, from, nil
			}
		}
		p, closed, wake := c.panic, c.closed, c.wake
		c.mu.Unlock()
		switch {
		case p != "":
			return "", 0, &PanicError{Text: p}
		case closed:
			return "", 0, ErrClosed
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return "", 0, fmt.Errorf("waiting for %q on the console: %w", marker, ctx.Err())
		}
	}
}

// Send writes text to the console as typed input.
func (c *Console) Send(text string) error {
	_, err := io.WriteString(c.w, text)
	return err
}

var runSeq atomic.Int64

// Run types a shell command line on the guest's console shell and returns
// its output (the lines between two markers the guest prints; the echoed
// input is left out) and its exit status.
func (c *Console) Run(ctx context.Context, command string) (string, int, error) {
	n := runSeq.Add(1)
	// The guest's shell expands $((0)), so the echoed command line never
	// contains the markers themselves.
	begin, end := fmt.Sprintf("BEGIN-%d-0", n), fmt.Sprintf("END-%d-0", n)
	from := c.Len()
	if err := c.Send(fmt.Sprintf("echo BEGIN-%d-$((0)); %s; echo END-%d-$((0))$?\n", n, command, n)); err != nil {
		return "", 0, err
	}
	_, b, err := c.WaitFrom(ctx, from, begin)
	if err != nil {
		return "", 0, err
	}
	line, e, err := c.WaitFrom(ctx, b+1, end)
	if err != nil {
		return "", 0, err
	}
	at := strings.Index(line, end)
	var status int
	fmt.Sscanf(line[at+len(end):], "%d", &status)
	lines := c.Lines()
	out := lines[b+1 : e]
	if pre := line[:at]; pre != "" {
		out = append(out, pre) // output without a final newline
	}
	return strings.Join(out, "\n"), status, nil
}
