package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/kernel"
	"github.com/umlkit/umlkit/mconsole"
)

// GuestReady is what a guest writes to /proc/mconsole when it is up
// (umlkit's images do, from their init).
const GuestReady = "umlkit-ready"

// scrollback is how much recent console output a newly attached console
// client gets first.
const scrollback = 8 << 10

// Supervise runs the instance name, whose spec Start wrote, until its
// kernel exits: it owns the kernel's console (a pty, copied to console.log
// and to attached clients), receives the kernel's notifications, and keeps
// state.json current. It is the body of the supervisor process; ctx ending
// asks the kernel to stop.
func Supervise(ctx context.Context, name string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := PathsOf(name)
	var spec Spec
	if err := readJSON(p.Spec(), &spec); err != nil {
		return fmt.Errorf("instance %s: read spec: %w", name, err)
	}
	sw := &stateWriter{path: p.State(), st: State{Status: Starting, Supervisor: os.Getpid()}}
	sw.update(func(*State) {})
	fail := func(err error) error {
		sw.update(func(s *State) { s.Status, s.Error, s.Ended = Crashed, err.Error(), time.Now() })
		return err
	}
	k, err := kernel.Find()
	if err != nil {
		return fail(err)
	}
	nl, err := mconsole.Listen(p.Notify())
	if err != nil {
		return fail(err)
	}
	defer nl.Close()
	ptmx, tty, err := pty.Open()
	if err != nil {
		return fail(fmt.Errorf("console pty: %w", err))
	}
	ttyName := tty.Name()
	defer ptmx.Close()
	hub := newConsoleHub(ptmx)
	logf, err := os.OpenFile(p.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	hub.log = logf
	cl, err := net.ListenUnix("unix", &net.UnixAddr{Name: p.Console(), Net: "unix"})
	if err != nil {
		return fail(fmt.Errorf("console socket: %w", err))
	}
	os.Chmod(p.Console(), 0o600)
	defer os.Remove(p.Console())
	defer cl.Close()

	args := append(append([]string(nil), spec.Args...), "mconsole=notify:"+p.Notify())
	var agentConn *os.File
	var extra []*os.File
	if spec.Agent {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		agentConn = os.NewFile(uintptr(fds[0]), "agent")
		guestEnd := os.NewFile(uintptr(fds[1]), "agent-guest")
		defer agentConn.Close()
		args = append(args, fmt.Sprintf("ssl%d=fd:3", AgentLine), fmt.Sprintf("umlkit.agent=ttyS%d", AgentLine))
		extra = []*os.File{guestEnd}
	}
	cmd, err := k.Command(context.Background(), args...)
	if err != nil {
		return fail(err)
	}
	cmd.Dir = spec.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.ExtraFiles = extra
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", k.Path, err))
	}
	closeAgent := func() {}
	tty.Close()
	log.Info("kernel started", "vm", name, "pid", cmd.Process.Pid)
	sw.update(func(s *State) { s.PID, s.Started = cmd.Process.Pid, time.Now() })

	for _, f := range extra {
		f.Close()
	}
	var wg sync.WaitGroup
	if agentConn != nil {
		al, err := net.ListenUnix("unix", &net.UnixAddr{Name: p.Agent(), Net: "unix"})
		if err != nil {
			log.Warn("agent socket", "vm", name, "err", err)
		} else {
			os.Chmod(p.Agent(), 0o600)
			defer os.Remove(p.Agent())
			ag := &agentRelay{line: agentConn, log: log, name: name, conns: map[net.Conn]bool{}}
			wg.Add(1)
			go func() { defer wg.Done(); ag.serve(al) }()
			defer al.Close()
			closeAgent = func() { al.Close(); ag.close() }
		}
	}
	wg.Add(2)
	go func() { defer wg.Done(); hub.pump() }()
	go func() { defer wg.Done(); hub.serve(cl) }()
	nctx, stopNotify := context.WithCancel(context.Background())
	go func() {
		for {
			ev, err := nl.Receive(nctx)
			if err != nil {
				return
			}
			switch e := ev.(type) {
			case mconsole.Ready:
				sw.update(func(s *State) {
					if s.Status == Starting {
						s.Status = Booting
					}
				})
			case mconsole.UserNotify:
				if strings.HasPrefix(string(e.Data), GuestReady) {
					sw.update(func(s *State) {
						if s.Live() {
							s.Status, s.Ready = Running, time.Now()
						}
					})
				}
			case mconsole.Panic:
				log.Warn("kernel panic", "vm", name, "panic", e.Message)
				sw.update(func(s *State) { s.Panic = e.Message })
			}
		}
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case werr = <-waited:
		case <-time.After(kernel.StopGrace):
			kernel.KillGroup(cmd)
			werr = <-waited
		}
	}
	kernel.KillGroup(cmd)
	if n := killHolders(ttyName); n > 0 {
		log.Info("killed processes the kernel left on its console", "vm", name, "count", n)
	}
	stopNotify()
	closeAgent()
	cl.Close()
	ptmx.Close()
	wg.Wait()
	sw.update(func(s *State) {
		s.Ended = time.Now()
		s.Status = Exited
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				s.Status = Crashed
				s.Error = "killed by " + ws.Signal().String()
			}
			s.ExitCode = ee.ExitCode()
		}
		if s.Panic != "" {
			s.Status = Crashed
		}
	})
	log.Info("kernel exited", "vm", name, "err", werr)
	return nil
}

// stateWriter keeps state.json current; updates come from several
// goroutines.
type stateWriter struct {
	mu   sync.Mutex
	path string
	st   State
}

func (w *stateWriter) update(f func(*State)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.st)
	writeJSON(w.path, w.st)
}

// consoleHub copies the kernel's console to the log and to every attached
// client, and clients' input to the console.
type consoleHub struct {
	pty io.ReadWriter
	log io.Writer

	mu      sync.Mutex
	clients map[net.Conn]bool
	recent  []byte
}

func newConsoleHub(pty io.ReadWriter) *consoleHub {
	return &consoleHub{pty: pty, clients: map[net.Conn]bool{}}
}

func (h *consoleHub) pump() {
	buf := make([]byte, 16<<10)
	for {
		n, err := h.pty.Read(buf)
		if n > 0 {
			b := buf[:n]
			h.log.Write(b)
			h.mu.Lock()
			h.recent = append(h.recent, b...)
			if len(h.recent) > scrollback {
				h.recent = h.recent[len(h.recent)-scrollback:]
			}
			for c := range h.clients {
				c.SetWriteDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Write(b); err != nil {
					c.Close()
					delete(h.clients, c)
				}
			}
			h.mu.Unlock()
		}
		if err != nil {
			h.mu.Lock()
			for c := range h.clients {
				c.Close()
			}
			h.mu.Unlock()
			return
		}
	}
}

func (h *consoleHub) serve(l *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		c.Write(h.recent)
		h.clients[c] = true
		h.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(h.pty, c)
			h.mu.Lock()
			delete(h.clients, c)
			h.mu.Unlock()
			c.Close()
		}()
	}
}

// agentRelay serves the agent socket: every connection is proxied to the
// guest's agent on the serial line, through one client made on first use.
type agentRelay struct {
	line *os.File
	log  *slog.Logger
	name string

	mu     sync.Mutex
	up     *agent.Client
	conns  map[net.Conn]bool
	closed bool
}

// close ends the line and every proxied connection.
func (a *agentRelay) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	a.line.Close()
	for c := range a.conns {
		c.Close()
	}
}

func (a *agentRelay) client() (*agent.Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.up != nil {
		return a.up, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, a.line)
	if err != nil {
		return nil, err
	}
	a.up = c
	return c, nil
}

func (a *agentRelay) serve(l *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			conn.Close()
			return
		}
		a.conns[conn] = true
		a.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				a.mu.Lock()
				delete(a.conns, conn)
				a.mu.Unlock()
				conn.Close()
			}()
			up, err := a.client()
			if err != nil {
				a.log.Warn("guest agent", "vm", a.name, "err", err)
				return
			}
			agent.Proxy(context.Background(), conn, up)
		}()
	}
}
