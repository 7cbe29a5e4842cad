package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
)

// Process is a command the guest side started.
type Process interface {
	// Wait blocks until the process exits.
	Wait() ExitStatus
	Signal(os.Signal) error
}

// Spawner starts argv with files as its descriptors 0, 1 and 2. With tty
// set, the process gets a new session with files[0] as its controlling
// terminal. The files are the caller's; the spawner must not close them.
type Spawner func(argv, env []string, dir string, files [3]*os.File, tty bool) (Process, error)

// ServeOptions configures Serve.
type ServeOptions struct {
	Spawn    Spawner // nil means StartProcess
	Hostname string
	// Drain bounds how long output is still forwarded after a command
	// exits while something it started keeps its output open.
	Drain time.Duration
}

// Serve is the guest side: it answers the host's requests on rw until rw
// fails or ctx ends. It sends a hello first, and again whenever the host
// asks (a host side that attached later).
func Serve(ctx context.Context, rw io.ReadWriter, opts ServeOptions) error {
	if opts.Spawn == nil {
		opts.Spawn = StartProcess
	}
	if opts.Drain == 0 {
		opts.Drain = 200 * time.Millisecond
	}
	s := &server{opts: opts, w: newWriter(rw, 0), sessions: map[uint32]*serverSession{}}
	if err := s.sendHello(); err != nil {
		return err
	}
	err := serveFrames(ctx, rw, s.w, s.handle)
	if ctx.Err() == nil {
		s.wg.Wait()
	}
	return err
}

// serveFrames is the guest-side read loop (Serve and Proxy): it hands each
// frame from r to handle, acknowledging what it read off r through w, until
// r fails or ctx ends.
func serveFrames(ctx context.Context, r io.Reader, w *writer, handle func(frame)) error {
	rd := newReader(r, func(total uint64) {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], total)
		w.send(tAck, 0, b[:])
	})
	errc := make(chan error, 1)
	go func() {
		for {
			f, err := rd.next()
			if err != nil {
				errc <- err
				return
			}
			handle(f)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type server struct {
	opts ServeOptions
	w    *writer
	wg   sync.WaitGroup

	mu       sync.Mutex
	sessions map[uint32]*serverSession
}

type serverSession struct {
	stdin *os.File
	ptmx  *os.File
	proc  Process
	ready chan struct{} // closed once proc is set (or failed to start)
}

func (s *server) sendHello() error {
	b, _ := json.Marshal(hello{Version: protocolVersion, Hostname: s.opts.Hostname})
	return s.w.send(tHello, 0, b)
}

func (s *server) sendExit(id uint32, st ExitStatus) {
	b, _ := json.Marshal(st)
	s.w.send(tExit, id, b)
}

func (s *server) session(id uint32) *serverSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

func (s *server) handle(f frame) {
	switch f.typ {
	case tHello:
		s.sendHello()
	case tStart:
		var req startRequest
		if err := json.Unmarshal(f.payload, &req); err != nil || len(req.Argv) == 0 {
			s.sendExit(f.id, ExitStatus{Code: 127, Error: fmt.Sprintf("bad start request: %v", err)})
			return
		}
		ss := &serverSession{ready: make(chan struct{})}
		s.mu.Lock()
		if _, dup := s.sessions[f.id]; dup {
			s.mu.Unlock()
			s.sendExit(f.id, ExitStatus{Code: 127, Error: "session id in use"})
			return
		}
		s.sessions[f.id] = ss
		s.mu.Unlock()
		s.wg.Add(1)
		go s.run(f.id, ss, req)
	case tStdin:
		if ss := s.session(f.id); ss != nil {
			<-ss.ready
			if ss.stdin == nil {
				return
			}
			if len(f.payload) == 0 {
				if ss.ptmx != nil {
					ss.stdin.Write([]byte{4}) // ^D: end of input on a terminal
					return
				}
				ss.stdin.Close()
				return
			}
			ss.stdin.Write(f.payload)
		}
	case tSignal:
		if ss := s.session(f.id); ss != nil && len(f.payload) == 1 {
			<-ss.ready
			if ss.proc != nil {
				ss.proc.Signal(syscall.Signal(f.payload[0]))
			}
		}
	case tResize:
		if ss := s.session(f.id); ss != nil && len(f.payload) == 4 {
			<-ss.ready
			if ss.ptmx != nil {
				pty.Setsize(ss.ptmx, &pty.Winsize{Rows: binary.BigEndian.Uint16(f.payload), Cols: binary.BigEndian.Uint16(f.payload[2:])})
			}
		}
	}
}

func (s *server) run(id uint32, ss *serverSession, req startRequest) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, id)
		s.mu.Unlock()
	}()
	var files [3]*os.File
	var pumps sync.WaitGroup
	var closeAfter []*os.File
	pump := func(typ byte, r *os.File) {
		defer pumps.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				s.w.send(typ, id, buf[:n])
			}
			if err != nil {
				return
			}
		}
	}
	startErr := func() error {
		if req.TTY {
			ptmx, tty, err := pty.Open()
			if err != nil {
				return err
			}
			if req.Rows > 0 && req.Cols > 0 {
				pty.Setsize(ptmx, &pty.Winsize{Rows: req.Rows, Cols: req.Cols})
			}
			files = [3]*os.File{tty, tty, tty}
			ss.ptmx, ss.stdin = ptmx, ptmx
			closeAfter = append(closeAfter, tty)
			pumps.Add(1)
			go pump(tStdout, ptmx)
			return nil
		}
		inR, inW, err := os.Pipe()
		if err != nil {
			return err
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			return err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			return err
		}
		files = [3]*os.File{inR, outW, errW}
		ss.stdin = inW
		closeAfter = append(closeAfter, inR, outW, errW)
		pumps.Add(2)
		go pump(tStdout, outR)
		go pump(tStderr, errR)
		defer func() {
			// Reads end once the command and all it started close
			// their ends, or when Drain runs out below.
			go func() { pumps.Wait(); outR.Close(); errR.Close() }()
		}()
		return nil
	}()
	if startErr != nil {
		close(ss.ready)
		s.sendExit(id, ExitStatus{Code: 126, Error: startErr.Error()})
		return
	}
	proc, err := s.opts.Spawn(req.Argv, WithDefaults(req.Env), req.Dir, files, req.TTY)
	for _, f := range closeAfter {
		f.Close()
	}
	if err != nil {
		close(ss.ready)
		if ss.stdin != nil {
			ss.stdin.Close()
		}
		code := 126
		if errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		s.sendExit(id, ExitStatus{Code: code, Error: err.Error()})
		return
	}
	ss.proc = proc
	close(ss.ready)
	st := proc.Wait()
	done := make(chan struct{})
	go func() { pumps.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.opts.Drain):
	}
	if ss.ptmx != nil {
		ss.ptmx.Close()
	} else {
		ss.stdin.Close()
	}
	s.sendExit(id, st)
}

// StartProcess is the default Spawner: os.StartProcess with $PATH lookup.
func StartProcess(argv, env []string, dir string, files [3]*os.File, tty bool) (Process, error) {
	path, err := LookPath(argv[0], env)
	if err != nil {
		return nil, err
	}
	attr := &os.ProcAttr{Dir: dir, Env: env, Files: files[:],
		Sys: &syscall.SysProcAttr{Setsid: tty, Setctty: tty, Ctty: 0}}
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, err
	}
	return osProcess{p}, nil
}

type osProcess struct{ p *os.Process }

func (o osProcess) Signal(s os.Signal) error { return o.p.Signal(s) }
func (o osProcess) Wait() ExitStatus {
	st, err := o.p.Wait()
	if err != nil {
		return ExitStatus{Code: 126, Error: err.Error()}
	}
	return StatusOf(st.Sys().(syscall.WaitStatus))
}

// StatusOf turns a wait status into an ExitStatus, with shell conventions
// for a signal (128+N).
func StatusOf(ws syscall.WaitStatus) ExitStatus {
	if ws.Signaled() {
		return ExitStatus{Code: 128 + int(ws.Signal()), Signal: int(ws.Signal())}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}
