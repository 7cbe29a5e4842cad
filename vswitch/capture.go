package vswitch

import (
	"bufio"
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// pcap constants (the classic libpcap file format, microsecond stamps).
const (
	pcapMagic       = 0xa1b2c3d4
	pcapLinkEther   = 1
	captureQueueLen = 1024
)

// Capture copies the frames a switch receives into a pcap stream. It
// never slows forwarding: when its writer falls behind, captured frames
// are dropped and counted (Dropped), never switched ones.
type Capture struct {
	s       *Switch
	port    int
	snaplen int
	ch      chan capRec
	w       *bufio.Writer
	pool    sync.Pool
	dropped atomic.Uint64
	written atomic.Uint64
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	err     error
}

type capRec struct {
	t    time.Time
	buf  *[]byte
	orig int
}

// Capture starts writing the frames that enter port (0: every port) to w
// as pcap, each cut to snaplen bytes (0: the switch's maximum frame). The
// caller owns w; Close stops the capture and flushes.
func (s *Switch) Capture(w io.Writer, port, snaplen int) (*Capture, error) {
	if snaplen <= 0 {
		snaplen = s.cfg.MaxFrame + vlanTagLen
	}
	c := &Capture{s: s, port: port, snaplen: snaplen, ch: make(chan capRec, captureQueueLen),
		w: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	c.pool.New = func() any { b := make([]byte, snaplen); return &b }
	var hdr [24]byte
	binary.LittleEndian.PutUint32(hdr[0:], pcapMagic)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(hdr[20:], pcapLinkEther)
	if _, err := c.w.Write(hdr[:]); err != nil {
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	old := s.captures.Load()
	var l []*Capture
	if old != nil {
		l = append(l, *old...)
	}
	l = append(l, c)
	s.captures.Store(&l)
	s.mu.Unlock()
	go c.run()
	return c, nil
}

// offer copies f into the capture queue, or drops it when the queue is
// full. It runs on the forwarding path.
func (c *Capture) offer(port int, f *frame) {
	if c.port != 0 && c.port != port {
		return
	}
	if len(c.ch) == cap(c.ch) {
		c.dropped.Add(1)
		return
	}
	b := c.pool.Get().(*[]byte)
	n := copy(*b, f.buf[:f.n])
	*b = (*b)[:n]
	select {
	case c.ch <- capRec{t: time.Now(), buf: b, orig: f.n}:
	default:
		c.dropped.Add(1)
		*b = (*b)[:cap(*b)]
		c.pool.Put(b)
	}
}

func (c *Capture) run() {
	defer close(c.done)
	var rh [16]byte
	for {
		var r capRec
		select {
		case r = <-c.ch:
		case <-c.stop:
			if c.err == nil {
				c.err = c.w.Flush()
			}
			return
		}
		if c.err == nil {
			binary.LittleEndian.PutUint32(rh[0:], uint32(r.t.Unix()))
			binary.LittleEndian.PutUint32(rh[4:], uint32(r.t.Nanosecond()/1000))
			binary.LittleEndian.PutUint32(rh[8:], uint32(len(*r.buf)))
			binary.LittleEndian.PutUint32(rh[12:], uint32(r.orig))
			if _, err := c.w.Write(rh[:]); err != nil {
				c.err = err
			} else if _, err := c.w.Write(*r.buf); err != nil {
				c.err = err
			} else {
				c.written.Add(1)
			}
			if c.err == nil && len(c.ch) == 0 {
				c.err = c.w.Flush()
			}
			if c.err != nil {
				go c.Close() // the reader went away: stop capturing
			}
		}
		*r.buf = (*r.buf)[:cap(*r.buf)]
		c.pool.Put(r.buf)
	}
}

// Dropped is how many frames the capture could not keep up with.
func (c *Capture) Dropped() uint64 { return c.dropped.Load() }

// Written is how many frames were written.
func (c *Capture) Written() uint64 { return c.written.Load() }

// Done is closed when the capture has stopped: after Close, or after a
// write to its writer failed.
func (c *Capture) Done() <-chan struct{} { return c.done }

// Close stops the capture, flushes, and returns the first write error.
// It is idempotent.
func (c *Capture) Close() error {
	c.once.Do(func() {
		s := c.s
		s.mu.Lock()
		if old := s.captures.Load(); old != nil {
			var l []*Capture
			for _, x := range *old {
				if x != c {
					l = append(l, x)
				}
			}
			if len(l) == 0 {
				s.captures.Store(nil)
			} else {
				s.captures.Store(&l)
			}
		}
		s.mu.Unlock()
		close(c.stop)
	})
	<-c.done
	return c.err
}

// stopCaptures returns the running captures (for Close to stop).
func (s *Switch) stopCaptures() []*Capture {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.captures.Load(); l != nil {
		return append([]*Capture(nil), *l...)
	}
	return nil
}
