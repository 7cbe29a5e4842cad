package mconsole

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultTimeout bounds a command whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// SocketName is the file name of the mconsole socket in an instance's
// directory (<uml_dir>/<umid>/).
const SocketName = "mconsole"

// Candidates returns, in order, the socket paths tried for name: under
// each of umlDirs (<dir>/<name>/mconsole), then where uml_mconsole looks:
// $HOME/.uml/<name>/mconsole (unless name is already under $HOME/.uml),
// /tmp/uml/<name>/mconsole (unless name is already under /tmp/uml/), and
// name itself.
func Candidates(name string, umlDirs ...string) []string {
	var out []string
	for _, d := range umlDirs {
		if d != "" {
			out = append(out, filepath.Join(d, name, SocketName))
		}
	}
	if home := os.Getenv("HOME"); home != "" {
		dir := home + "/.uml"
		if !strings.HasPrefix(name, dir) {
			out = append(out, dir+"/"+name+"/"+SocketName)
		}
	}
	if !strings.HasPrefix(name, "/tmp/uml/") {
		out = append(out, "/tmp/uml/"+name+"/"+SocketName)
	}
	return append(out, name)
}

// NotFoundError is returned by Resolve and Dial when no candidate path
// holds a socket.
type NotFoundError struct {
	Name  string
	Tried []string
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("no mconsole socket for %q (tried %s); is the instance running?", e.Name, strings.Join(e.Tried, ", "))
}

// Resolve returns the mconsole socket for name, which is a umid, an
// instance directory (<uml_dir>/<umid>), or a socket path. The paths of
// Candidates are tried in order; an instance directory stands for the
// socket inside it.
func Resolve(name string, umlDirs ...string) (string, error) {
	if name == "" {
		return "", errors.New("mconsole: empty instance name")
	}
	tried := Candidates(name, umlDirs...)
	for _, p := range tried {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		if fi.IsDir() {
			p = filepath.Join(p, SocketName)
			if fi, err = os.Stat(p); err != nil {
				continue
			}
		}
		if fi.Mode()&os.ModeSocket != 0 {
			return p, nil
		}
	}
	return "", &NotFoundError{Name: name, Tried: tried}
}

// Reply is the kernel's answer to one command.
type Reply struct {
	// Err is the first packet's err field: 0 for success, 1 for an error,
	// or a negative errno (config and remove), kept as sent.
	Err int32
	// Text is the text of all packets, concatenated.
	Text string
	// Packets is how many datagrams the reply took.
	Packets int
}

// OK reports whether the kernel accepted the command.
func (r Reply) OK() bool { return r.Err == 0 }

// ExitCode is uml_mconsole's exit status for this reply: err & 0xff
// (0, 1, 240 for -EBUSY, 237 for -ENODEV, 234 for -EINVAL ...).
func (r Reply) ExitCode() int { return int(uint32(r.Err) & 0xff) }

// Error is a command the kernel refused. It wraps the errno when the
// kernel sent one, so errors.Is(err, syscall.EBUSY) works.
type Error struct {
	Socket  string
	Command string
	Code    int32  // the reply's err field
	Text    string // the kernel's message, such as "Device is currently open"
}

func (e *Error) Error() string {
	msg := e.Text
	if msg == "" {
		msg = "refused"
	}
	if e.Code < 0 {
		msg += " (" + syscall.Errno(-e.Code).Error() + ")"
	}
	return fmt.Sprintf("mconsole %s: %s: %s", e.Socket, e.Command, msg)
}

// Unwrap returns the syscall.Errno for negative codes, else nil.
func (e *Error) Unwrap() error {
	if e.Code < 0 {
		return syscall.Errno(-e.Code)
	}
	return nil
}

// Client sends commands to one instance's mconsole socket. Its methods
// are safe for concurrent use; commands run one at a time, since replies
// carry no request id.
type Client struct {
	path string

	closing atomic.Bool
	mu      sync.Mutex // serialises commands and guards conn
	conn    *net.UnixConn
	buf     []byte
}

var seq atomic.Uint64

// Dial resolves name like Resolve and opens a client for its socket.
// The client's socket is bound to a fresh abstract address (the kernel
// replies to the sender's address, so it must have one).
func Dial(name string, umlDirs ...string) (*Client, error) {
	path, err := Resolve(name, umlDirs...)
	if err != nil {
		return nil, err
	}
	return DialPath(path)
}

// DialPath opens a client for the socket at path, without looking
// anywhere else. The socket need not exist yet: commands fail until it
// does.
func DialPath(path string) (*Client, error) {
	var r [6]byte
	rand.Read(r[:])
	name := fmt.Sprintf("@umlkit-mconsole-%d-%d-%s", os.Getpid(), seq.Add(1), hex.EncodeToString(r[:]))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("mconsole %s: bind client socket: %w", path, err)
	}
	return &Client{path: path, conn: conn, buf: make([]byte, 2*MaxData)}, nil
}

// Path is the socket the client talks to.
func (c *Client) Path() string { return c.path }

// PID returns the host pid of the instance's main process, from the pid
// file next to the socket.
func (c *Client) PID() (int, error) {
	p := filepath.Join(filepath.Dir(c.path), "pid")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("mconsole %s: read pid: %w", c.path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("mconsole %s: pid file %s holds %q, not a pid", c.path, p, b)
	}
	return pid, nil
}

// Close releases the client's socket. A command in progress returns
// net.ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	if c.closing.Swap(true) {
		return nil
	}
	// Wake a command blocked in Read, then wait for it to let go.
	c.conn.SetReadDeadline(time.Unix(1, 0))
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn.Close()
}

// Command sends text (at most MaxData-1 bytes) and returns the kernel's
// whole reply. A refusal by the kernel is not an error: it is in
// Reply.Err. Errors are for the transport: no such socket (the instance
// is not running), a malformed reply, the context ending (ctx.Err() is
// wrapped), or no complete reply within DefaultTimeout when ctx has no
// deadline.
func (c *Client) Command(ctx context.Context, text string) (Reply, error) {
	req, err := AppendRequest(nil, text)
	if err != nil {
		return Reply{}, fmt.Errorf("mconsole %s: %w", c.path, err)
	}
	if err := ctx.Err(); err != nil {
		return Reply{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing.Load() {
		return Reply{}, fmt.Errorf("mconsole %s: %w", c.path, net.ErrClosed)
	}
	if err := c.connect(); err != nil {
		return Reply{}, err
	}
	c.drain()
	if _, err := c.conn.Write(req); err != nil {
		return Reply{}, fmt.Errorf("mconsole %s: send %q: %w", c.path, firstWord(text), err)
	}
	deadline, ctxDeadline := ctx.Deadline()
	if !ctxDeadline {
		deadline = time.Now().Add(DefaultTimeout)
	}
	c.conn.SetReadDeadline(deadline)
	if c.closing.Load() { // Close may have set its deadline before ours
		return Reply{}, fmt.Errorf("mconsole %s: %w", c.path, net.ErrClosed)
	}
	defer interruptOnDone(ctx, c.conn)()

	var r Reply
	var sb strings.Builder
	for {
		n, err := c.conn.Read(c.buf)
		if err != nil {
			switch {
			case c.closing.Load():
				err = net.ErrClosed
			case ctx.Err() != nil:
				err = ctx.Err()
			case ctxDeadline && errors.Is(err, os.ErrDeadlineExceeded):
				// The read deadline is ctx's; it may fire before ctx notices.
				err = context.DeadlineExceeded
			}
			if r.Packets > 0 {
				err = fmt.Errorf("reply incomplete after %d packets: %w", r.Packets, err)
			}
			return Reply{}, fmt.Errorf("mconsole %s: %s: %w", c.path, firstWord(text), err)
		}
		p, err := ParsePacket(c.buf[:n])
		if err != nil {
			return Reply{}, fmt.Errorf("mconsole %s: %s: %w", c.path, firstWord(text), err)
		}
		if r.Packets == 0 {
			r.Err = p.Err
		}
		r.Packets++
		sb.WriteString(p.Text)
		if !p.More {
			break
		}
	}
	r.Text = sb.String()
	return r, nil
}

// connect points the client's socket at the kernel's. Doing it for every
// command follows a socket that was bound again (after a reboot), and a
// connected socket is exempt from the receive queue limit for the
// kernel's replies.
func (c *Client) connect() error {
	rc, err := c.conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("mconsole %s: %w", c.path, err)
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cerr = syscall.Connect(int(fd), &syscall.SockaddrUnix{Name: c.path})
	}); err != nil {
		return fmt.Errorf("mconsole %s: %w", c.path, err)
	}
	if cerr != nil {
		if errors.Is(cerr, syscall.ENOENT) || errors.Is(cerr, syscall.ECONNREFUSED) {
			return fmt.Errorf("mconsole %s: connect: %w (is the instance running?)", c.path, cerr)
		}
		return fmt.Errorf("mconsole %s: connect: %w", c.path, cerr)
	}
	return nil
}

// drain drops datagrams left over from an earlier command that ended
// early (a timeout, or the kernel's second reply to a request it warned
// about).
func (c *Client) drain() {
	rc, err := c.conn.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), c.buf, syscall.MSG_DONTWAIT)
			if err != nil && err != syscall.EINTR {
				return true
			}
		}
	})
}

func firstWord(s string) string {
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		return s[:i]
	}
	return s
}

// do runs a command and turns a refusal into *Error.
func (c *Client) do(ctx context.Context, text string) (string, error) {
	r, err := c.Command(ctx, text)
	if err != nil {
		return "", err
	}
	if r.Err != 0 {
		return r.Text, &Error{Socket: c.path, Command: text, Code: r.Err, Text: r.Text}
	}
	return r.Text, nil
}

func checkWord(what, s string) error {
	if s == "" || strings.ContainsAny(s, " \t\n=\x00") {
		return fmt.Errorf("mconsole: bad %s %q: want one word without spaces or '='", what, s)
	}
	return nil
}

// Version returns the kernel's uname: "Linux <nodename> <release>
// <version> <machine>".
func (c *Client) Version(ctx context.Context) (string, error) { return c.do(ctx, "version") }

// Help returns the kernel's list of mconsole commands.
func (c *Client) Help(ctx context.Context) (string, error) { return c.do(ctx, "help") }

// Halt stops the instance at once, without syncing its disks. The kernel
// replies first; the process then exits with status 0.
func (c *Client) Halt(ctx context.Context) error { _, err := c.do(ctx, "halt"); return err }

// Reboot restarts the instance: the kernel re-executes itself in the same
// process (it exits instead when booted with noreboot).
func (c *Client) Reboot(ctx context.Context) error { _, err := c.do(ctx, "reboot"); return err }

// Config adds device dev (ubd1, eth0, vec0, con3, mem ...) with spec in
// command-line syntax: Config(ctx, "ubd1", "disk.cow,disk.img"). For vec
// devices spec is the part after the colon; the kernel wants vec0:spec.
// Paths are used as given, relative to the kernel's working directory.
func (c *Client) Config(ctx context.Context, dev, spec string) error {
	if err := checkWord("device", dev); err != nil {
		return err
	}
	sep := "="
	if strings.HasPrefix(dev, "vec") {
		sep = ":"
	}
	_, err := c.do(ctx, "config "+dev+sep+spec)
	return err
}

// ConfigQuery returns device dev's configuration: for ubd "file[,backing]"
// ("" when unconfigured), for con and ssl the channel, "none" when closed.
func (c *Client) ConfigQuery(ctx context.Context, dev string) (string, error) {
	if err := checkWord("device", dev); err != nil {
		return "", err
	}
	return c.do(ctx, "config "+dev)
}

// Remove unplugs device dev. A disk in use gives an *Error wrapping
// syscall.EBUSY; a device that does not exist, syscall.ENODEV.
func (c *Client) Remove(ctx context.Context, dev string) error {
	if err := checkWord("device", dev); err != nil {
		return err
	}
	_, err := c.do(ctx, "remove "+dev)
	return err
}

// Sysrq runs the SysRq action key and returns the console output it
// produced. Beware: on Debian's 6.1 kernel "t" aborts the instance.
func (c *Client) Sysrq(ctx context.Context, key string) (string, error) {
	if err := checkWord("sysrq key", key); err != nil {
		return "", err
	}
	return c.do(ctx, "sysrq "+key)
}

// Cad sends Ctrl-Alt-Del: init gets SIGINT, or the kernel restarts at
// once if init did not disable it.
func (c *Client) Cad(ctx context.Context) error { _, err := c.do(ctx, "cad"); return err }

// Stop pauses the instance: it then serves only mconsole until Go.
func (c *Client) Stop(ctx context.Context) error { _, err := c.do(ctx, "stop"); return err }

// Go resumes an instance paused by Stop.
func (c *Client) Go(ctx context.Context) error { _, err := c.do(ctx, "go"); return err }

// Log writes text into the kernel log (at KERN_WARNING), ending it with a
// newline when it has none.
func (c *Client) Log(ctx context.Context, text string) error {
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	_, err := c.do(ctx, "log "+text)
	return err
}

// Proc returns the guest's /proc/<file>, read by the kernel itself, so it
// works when the guest's userspace is stuck. Files that need a process
// context (self/..., kallsyms) fail.
func (c *Client) Proc(ctx context.Context, file string) (string, error) {
	if err := checkWord("proc file", file); err != nil {
		return "", err
	}
	s, err := c.do(ctx, "proc "+file)
	// The kernel sends a lone "\n" before the file.
	return strings.TrimPrefix(s, "\n"), err
}

// Stack returns the kernel stack of the guest task pid.
func (c *Client) Stack(ctx context.Context, pid int) (string, error) {
	return c.do(ctx, "stack "+strconv.Itoa(pid))
}
