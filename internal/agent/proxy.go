package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"sync"
	"syscall"
)

// Proxy serves the agent protocol on conn (a host-side client, such as
// umlkit vm exec talking to an instance's supervisor) by running each
// command through upstream, the supervisor's client on the serial line.
// It returns when conn fails or ctx ends; commands it started that are
// still running are killed.
func Proxy(ctx context.Context, conn io.ReadWriter, upstream *Client) error {
	p := &proxy{up: upstream, w: newWriter(conn, 0), sessions: map[uint32]*proxySession{}}
	if err := p.sendHello(); err != nil {
		return err
	}
	err := serveFrames(ctx, conn, p.w, p.handle)
	p.mu.Lock()
	for _, s := range p.sessions {
		s.stdin.CloseWithError(io.ErrClosedPipe)
		if s.up != nil {
			s.up.Signal(syscall.SIGKILL)
		}
	}
	p.mu.Unlock()
	return err
}

type proxy struct {
	up *Client
	w  *writer

	mu       sync.Mutex
	sessions map[uint32]*proxySession
}

type proxySession struct {
	stdin *io.PipeWriter
	up    *Session
}

func (p *proxy) sendHello() error {
	b, _ := json.Marshal(hello{Version: protocolVersion, Hostname: p.up.Hostname()})
	return p.w.send(tHello, 0, b)
}

// frameWriter turns writes into frames of one type and session.
type frameWriter struct {
	w   *writer
	typ byte
	id  uint32
}

func (f frameWriter) Write(b []byte) (int, error) {
	if err := f.w.send(f.typ, f.id, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (p *proxy) handle(f frame) {
	p.mu.Lock()
	s := p.sessions[f.id]
	p.mu.Unlock()
	switch f.typ {
	case tHello:
		p.sendHello()
	case tStart:
		var req startRequest
		if s != nil || json.Unmarshal(f.payload, &req) != nil || len(req.Argv) == 0 {
			b, _ := json.Marshal(ExitStatus{Code: 127, Error: "bad start request"})
			p.w.send(tExit, f.id, b)
			return
		}
		pr, pw := io.Pipe()
		s = &proxySession{stdin: pw}
		p.mu.Lock()
		p.sessions[f.id] = s
		p.mu.Unlock()
		up, err := p.up.Start(Cmd{Argv: req.Argv, Env: req.Env, Dir: req.Dir, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols,
			Stdin: pr, Stdout: frameWriter{p.w, tStdout, f.id}, Stderr: frameWriter{p.w, tStderr, f.id}})
		if err != nil {
			p.finish(f.id, ExitStatus{Code: 255, Error: err.Error()})
			return
		}
		p.mu.Lock()
		s.up = up
		p.mu.Unlock()
		go func() {
			st, err := up.Wait()
			if err != nil && st.Error == "" {
				st.Error = err.Error()
			}
			p.finish(f.id, st)
		}()
	case tStdin:
		if s == nil {
			return
		}
		if len(f.payload) == 0 {
			s.stdin.Close()
			return
		}
		s.stdin.Write(f.payload)
	case tSignal:
		if s != nil && s.up != nil && len(f.payload) == 1 {
			s.up.Signal(syscall.Signal(f.payload[0]))
		}
	case tResize:
		if s != nil && s.up != nil && len(f.payload) == 4 {
			s.up.Resize(binary.BigEndian.Uint16(f.payload), binary.BigEndian.Uint16(f.payload[2:]))
		}
	}
}

func (p *proxy) finish(id uint32, st ExitStatus) {
	p.mu.Lock()
	s := p.sessions[id]
	delete(p.sessions, id)
	p.mu.Unlock()
	if s != nil {
		s.stdin.Close()
	}
	b, _ := json.Marshal(st)
	p.w.send(tExit, id, b)
}
