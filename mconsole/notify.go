package mconsole

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// MaxSocketPath is the longest path a Unix socket can be bound to.
const MaxSocketPath = 107

// ErrInUse is returned by Listen when another process is listening on the
// path already.
var ErrInUse = errors.New("socket in use")

// Event is what the kernel reported on the notify socket: Ready, Panic,
// Hang or UserNotify.
type Event interface {
	Type() NotifyType
}

// Ready says the instance's mconsole socket is up (early in boot, and
// again after every reboot).
type Ready struct {
	Socket string // the mconsole socket's path
}

// Panic says the kernel panicked.
type Panic struct {
	Message string // e.g. "VFS: Unable to mount root fs on unknown-block(98,0)"
}

// Hang is sent by the host's uml_watchdog, never by the kernel.
type Hang struct{}

// UserNotify carries what the guest wrote to /proc/mconsole.
type UserNotify struct {
	Data []byte
}

func (Ready) Type() NotifyType      { return NotifySocket }
func (Panic) Type() NotifyType      { return NotifyPanic }
func (Hang) Type() NotifyType       { return NotifyHang }
func (UserNotify) Type() NotifyType { return NotifyUser }

// PanicError is returned by WaitReady when the kernel panicked before its
// console was ready.
type PanicError struct {
	Message string
}

func (e *PanicError) Error() string { return "kernel panic: " + e.Message }

// EventOf turns a decoded notification into its Event.
func EventOf(n Notification) (Event, error) {
	switch n.Type {
	case NotifySocket:
		return Ready{Socket: n.Text()}, nil
	case NotifyPanic:
		return Panic{Message: n.Text()}, nil
	case NotifyHang:
		return Hang{}, nil
	case NotifyUser:
		return UserNotify{Data: n.Data}, nil
	}
	return nil, &FormatError{What: "notification", Offset: 8, Reason: fmt.Sprintf("unknown type %d", uint32(n.Type))}
}

// Listener receives an instance's notifications. Start the kernel with
// "mconsole=notify:" + l.Path() after Listen returns: the kernel does not
// wait for the socket and drops what it cannot send.
type Listener struct {
	path      string
	conn      *net.UnixConn
	closeOnce sync.Once
	closeErr  error
}

// Listen binds a datagram socket at path for the kernel's notifications.
// Like every umlkit socket it refuses a path another process listens on
// (ErrInUse), replaces a stale socket file, refuses to replace anything
// that is not a socket, and is readable by its owner only.
func Listen(path string) (*Listener, error) {
	if len(path) > MaxSocketPath {
		return nil, fmt.Errorf("notify socket %s: path is %d bytes, at most %d fit; use a shorter directory", path, len(path), MaxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("notify socket %s: exists and is not a socket; remove it or choose another path", path)
		}
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("notify socket %s: %w", path, ErrInUse)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("notify socket %s: probe: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("notify socket %s: remove stale socket: %w", path, err)
		}
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		conn.Close()
		return nil, fmt.Errorf("notify socket %s: %w", path, err)
	}
	return &Listener{path: path, conn: conn}, nil
}

// Path is the socket's path, for mconsole=notify:PATH.
func (l *Listener) Path() string { return l.path }

// Receive waits for the next notification. Call it from one goroutine at
// a time. It returns ctx's error when
// ctx ends first, net.ErrClosed after Close, and a *FormatError for a
// datagram that is not a notification (the next call reads the next one).
func (l *Listener) Receive(ctx context.Context) (Event, error) {
	l.conn.SetReadDeadline(time.Time{})
	defer interruptOnDone(ctx, l.conn)()
	buf := make([]byte, notifyHeader+MaxNotifyData+1)
	n, err := l.conn.Read(buf)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("notify socket %s: %w", l.path, err)
	}
	nt, err := ParseNotification(buf[:n])
	if err != nil {
		return nil, err
	}
	return EventOf(nt)
}

// WaitReady waits for Ready and returns the mconsole socket's path. A
// panic first gives a *PanicError with the kernel's message. Other
// events and malformed datagrams before that are skipped.
func (l *Listener) WaitReady(ctx context.Context) (string, error) {
	for {
		ev, err := l.Receive(ctx)
		var fe *FormatError
		switch {
		case errors.As(err, &fe):
			continue
		case err != nil:
			return "", err
		}
		switch ev := ev.(type) {
		case Ready:
			return ev.Socket, nil
		case Panic:
			return "", &PanicError{Message: ev.Message}
		}
	}
}

// Close closes the socket and removes its file. A blocked Receive returns
// net.ErrClosed. Close is idempotent.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.conn.Close()
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) && l.closeErr == nil {
			l.closeErr = fmt.Errorf("notify socket %s: %w", l.path, err)
		}
	})
	return l.closeErr
}

// interruptOnDone makes a blocked read on conn return when ctx ends. The
// returned function undoes that and, if it already fired, waits for it,
// so that a late deadline cannot hit the next read.
func interruptOnDone(ctx context.Context, conn *net.UnixConn) func() {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired
		}
	}
}
