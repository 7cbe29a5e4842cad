package agent

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair runs Serve on one end of a socket pair and returns a client on
// the other. The guest side is this host, running real processes.
func pair(t *testing.T) *Client {
	t.Helper()
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { Serve(ctx, b, ServeOptions{Hostname: "guest"}); close(served) }()
	c, err := NewClient(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); b.Close(); cancel(); <-served })
	return c
}

func run(t *testing.T, c *Client, cmd Cmd) (string, string, ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Run(ctx, cmd)
	if err != nil {
		t.Fatalf("Run(%q): %v", cmd.Argv, err)
	}
	return out.String(), errb.String(), st
}

func TestRun(t *testing.T) {
	c := pair(t)
	if c.Hostname() != "guest" {
		t.Errorf("Hostname() = %q, want guest", c.Hostname())
	}
	out, errOut, st := run(t, c, Cmd{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if out != "out\n" || errOut != "err\n" || st.Code != 3 {
		t.Errorf("sh -c ... = %q, %q, %+v; want out, err, code 3", out, errOut, st)
	}
	out, _, st = run(t, c, Cmd{Argv: []string{"tr", "a-z", "A-Z"}, Stdin: strings.NewReader("hello\n")})
	if out != "HELLO\n" || st.Code != 0 {
		t.Errorf("tr with stdin = %q, %+v", out, st)
	}
	_, _, st = run(t, c, Cmd{Argv: []string{"no-such-command-here"}})
	if st.Code != 127 || !strings.Contains(st.Error, "not found") {
		t.Errorf("missing command = %+v, want code 127 and not found", st)
	}
}

func TestSignalAndConcurrency(t *testing.T) {
	c := pair(t)
	s, err := c.Start(Cmd{Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			st, err := c.Run(context.Background(), Cmd{Argv: []string{"echo", "hi"}, Stdout: &out})
			if err != nil || st.Code != 0 || out.String() != "hi\n" {
				t.Errorf("concurrent echo = %q, %+v, %v", out.String(), st, err)
			}
		}()
	}
	wg.Wait()
	s.Signal(syscall.SIGTERM)
	st, err := s.Wait()
	if err != nil || st.Signal != int(syscall.SIGTERM) || st.Code != 128+int(syscall.SIGTERM) {
		t.Errorf("sleep after SIGTERM = %+v, %v", st, err)
	}
}

func TestTTY(t *testing.T) {
	c := pair(t)
	out, _, st := run(t, c, Cmd{Argv: []string{"sh", "-c", "tty >/dev/null && stty size"}, TTY: true, Rows: 33, Cols: 101})
	if st.Code != 0 || !strings.Contains(out, "33 101") {
		t.Errorf("tty session = %q, %+v; want a terminal of 33x101", out, st)
	}
}

func TestConnectionLoss(t *testing.T) {
	a, b := net.Pipe()
	go Serve(context.Background(), b, ServeOptions{})
	c, err := NewClient(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Start(Cmd{Argv: []string{"sleep", "1"}})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := s.Wait(); err == nil {
		t.Fatal("Wait() after the stream broke = nil error, want ErrClosed")
	}
}

// A proxy in the middle (as the supervisor is) passes everything through.
func TestProxy(t *testing.T) {
	up := pair(t)
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	proxied := make(chan struct{})
	go func() { Proxy(ctx, b, up); close(proxied) }()
	t.Cleanup(func() { a.Close(); b.Close(); cancel(); <-proxied })
	c, err := NewClient(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname() != "guest" {
		t.Errorf("hostname through the proxy = %q", c.Hostname())
	}
	data := strings.Repeat("abc\x00", 5000)
	out, errOut, st := run(t, c, Cmd{Argv: []string{"sh", "-c", "cat; echo e >&2; exit 7"}, Stdin: strings.NewReader(data)})
	if out != data || errOut != "e\n" || st.Code != 7 {
		t.Errorf("through the proxy: %d bytes (equal %v), %q, %+v", len(out), out == data, errOut, st)
	}
}
