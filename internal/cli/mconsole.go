package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/mconsole"
)

func newMconsoleCmd(stdio IO) *cobra.Command {
	var (
		umlDirs []string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "mconsole UMID|PATH [COMMAND...]",
		Short: "Talk to an instance's management console",
		Long: `Send one command to a running instance's management console (mconsole)
and print the kernel's reply as "OK text" or "ERR text", or, without a
command, read commands from standard input. Output and exit status are
uml_mconsole's: the status is the kernel's error code & 0xff (0, 1, or
240/237/234 for -EBUSY/-ENODEV/-EINVAL).

The instance is a umid (looked up in each --uml-dir, among umlkit's
instances, then in ~/.uml and /tmp/uml),
an instance directory, or the socket's path.

Kernel commands: version, help, halt, reboot, config DEV=SPEC, config DEV,
remove DEV, sysrq KEY, cad, stop, go, log TEXT, proc FILE, stack PID.
Local commands: quit, help, switch UMID|PATH, log -f FILE,
mconsole-version, int (SIGINT to the instance).`,
		Example: `  umlkit mconsole uml1 version
  umlkit mconsole uml1 config ubd1=disk.cow,disk.img
  umlkit mconsole --uml-dir /run/labs uml1 proc meminfo
  umlkit mconsole uml1            # interactive`,
		GroupID: groupInstances,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := runMconsole(cmd.Context(), args, stdio, umlDirs, asJSON)
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false) // "log -f FILE" belongs to the command
	cmd.Flags().StringArrayVar(&umlDirs, "uml-dir", nil, "look for UMID in this uml_dir first (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the reply of a single command as JSON")
	return cmd
}

func umlMconsoleTool() Tool {
	return Tool{
		Name:    "uml_mconsole",
		Summary: "talk to an instance's management console (uml-utilities)",
		Run: func(ctx context.Context, args []string, stdio IO) int {
			if len(args) < 1 {
				fmt.Fprintf(stdio.Err, "Usage : uml_mconsole socket-name [command]\n")
				return 1
			}
			s := &mcSession{ctx: ctx, io: stdio, compat: true, name: "[None]"}
			defer s.close()
			s.switchTo(args[0])
			if len(args) > 1 {
				code, _ := s.issue(strings.Join(args[1:], " "))
				return code
			}
			return s.interactive()
		},
	}
}

func runMconsole(ctx context.Context, args []string, stdio IO, umlDirs []string, asJSON bool) (int, error) {
	s := &mcSession{ctx: ctx, io: stdio, umlDirs: umlDirs}
	defer s.close()
	if err := s.switchTo(args[0]); err != nil {
		var nf *mconsole.NotFoundError
		if errors.As(err, &nf) {
			return 1, fmt.Errorf("%w\nstart it first, or give its uml_dir with --uml-dir, or the socket's path", err)
		}
		return 1, err
	}
	if asJSON {
		if len(args) < 2 {
			return 1, errors.New("--json needs a command")
		}
		return s.jsonCommand(strings.Join(args[1:], " "))
	}
	if len(args) > 1 {
		code, _ := s.issue(strings.Join(args[1:], " "))
		return code, nil
	}
	return s.interactive(), nil
}

// mcSession is uml_mconsole's behaviour: local commands, the reply
// format, exit codes. In compat mode (the uml_mconsole drop-in) it also
// reproduces its messages on standard error.
type mcSession struct {
	ctx     context.Context
	io      IO
	compat  bool
	umlDirs []string
	name    string // for the prompt
	client  *mconsole.Client
	pidFile string // for int; "" when unknown
}

func (s *mcSession) close() {
	if s.client != nil {
		s.client.Close()
	}
}

// switchTo makes name the current instance. In compat mode every missed
// candidate gets uml_mconsole's warning and the first path that exists
// wins; otherwise the socket must exist.
func (s *mcSession) switchTo(name string) error {
	var path, pidFile string
	if s.compat {
		// uml_mconsole finds the pid file only for a umid under ~/.uml.
		home := os.Getenv("HOME") + "/.uml/"
		for _, p := range mconsole.Candidates(name) {
			if _, err := os.Stat(p); err != nil {
				fmt.Fprintf(s.io.Err, "Warning: couldn't stat file: %s - %s\n", p, strerror(err))
				continue
			}
			path = p
			if strings.HasPrefix(p, home) && p == home+name+"/"+mconsole.SocketName {
				pidFile = filepath.Join(filepath.Dir(p), "pid")
			}
			break
		}
		if path == "" {
			return &mconsole.NotFoundError{Name: name, Tried: mconsole.Candidates(name)}
		}
	} else {
		// umlkit's own instances (vm start, lab up) come after --uml-dir.
		p, err := mconsole.Resolve(name, append(slices.Clone(s.umlDirs), machine.UMLDir())...)
		if err != nil {
			return err
		}
		path = p
		pidFile = filepath.Join(filepath.Dir(p), "pid")
	}
	c, err := mconsole.DialPath(path)
	if err != nil {
		return err
	}
	s.close()
	s.client = c
	s.pidFile = pidFile
	s.name = name
	if s.compat && len(s.name) > 11 {
		s.name = s.name[:11]
	}
	return nil
}

// errQuit ends the session with the status it carries.
type errQuit struct{ code int }

func (e errQuit) Error() string { return "quit" }

// issue runs one command line and returns its exit status; quit reports
// whether the session must end.
func (s *mcSession) issue(line string) (code int, quit bool) {
	line = strings.TrimRight(line, " \t\n\v\f\r")
	err := s.dispatch(line, &code)
	var q errQuit
	if errors.As(err, &q) {
		return q.code, true
	}
	return code, false
}

const localHelp = `Additional local mconsole commands:
    quit - Quit mconsole
    switch <socket-name> - Switch control to the given machine
    log -f <filename> - use contents of <filename> as UML log messages
    mconsole-version - version of this mconsole program
    int  - Interrupt UML session
`

// logChunk is how much text goes in one log request, as uml_mconsole
// splits it.
const logChunk = mconsole.MaxData - len("log ") - 2

func (s *mcSession) dispatch(line string, code *int) error {
	switch {
	case strings.HasPrefix(line, "quit"):
		return errQuit{0}
	case strings.HasPrefix(line, "help"):
		s.send(line)
		fmt.Fprint(s.io.Out, localHelp)
	case strings.HasPrefix(line, "switch"):
		arg := strings.TrimLeft(line[len("switch"):], " \t\n\v\f\r")
		if err := s.switchTo(arg); err != nil {
			if !s.compat {
				fmt.Fprintf(s.io.Err, "umlkit mconsole: %v\n", err)
			}
			*code = 1
			return nil
		}
		fmt.Fprintf(s.io.Out, "Switched to '%s'\n", arg)
	case strings.HasPrefix(line, "log"):
		return s.log(strings.TrimLeft(line[len("log"):], " \t\n\v\f\r"))
	case strings.HasPrefix(line, "mconsole-version"):
		fmt.Fprintf(s.io.Out, "uml_mconsole client version %d\n", mconsole.ProtocolVersion)
	case strings.HasPrefix(line, "int"):
		pid := 0
		if b, err := os.ReadFile(s.pidFile); s.pidFile != "" && err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if pid <= 0 {
			fmt.Fprintf(s.io.Out, "Cannot determine the PID of your UML session, not sending signal.\n")
			return nil
		}
		syscall.Kill(pid, syscall.SIGINT)
	default:
		*code = s.send(s.fixFilenames(line))
	}
	return nil
}

// log sends text, or the file after -f, to the kernel log in chunks, and
// a final newline when the text did not end with one.
func (s *mcSession) log(arg string) error {
	newline := false
	if rest, ok := strings.CutPrefix(arg, "-f"); ok {
		file := strings.TrimLeft(rest, " \t\n\v\f\r")
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(s.io.Err, "opening file: %s\n", strerror(err))
			return errQuit{1}
		}
		defer f.Close()
		buf := make([]byte, logChunk)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				s.send("log " + string(buf[:n]))
				newline = buf[n-1] == '\n'
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				fmt.Fprintf(s.io.Err, "reading file: %s\n", strerror(err))
				return errQuit{1}
			}
		}
	} else {
		for len(arg) > 0 {
			n := min(len(arg), logChunk)
			s.send("log " + arg[:n])
			newline = arg[n-1] == '\n'
			arg = arg[n:]
		}
	}
	if !newline {
		s.send("log \n")
	}
	return nil
}

// send runs a kernel command, prints "OK text" or "ERR text", and returns
// the exit status.
func (s *mcSession) send(text string) int {
	if s.client == nil {
		fmt.Fprintf(s.io.Err, "Sending command to '' : Invalid argument\n")
		return 1
	}
	if len(text) >= mconsole.MaxData {
		text = text[:mconsole.MaxData-1] // uml_mconsole truncates too
	}
	r, err := s.client.Command(s.ctx, text)
	if err != nil {
		if s.compat {
			fmt.Fprintf(s.io.Err, "Sending command to '%s' : %s\n", s.client.Path(), strerror(err))
		} else {
			fmt.Fprintf(s.io.Err, "umlkit mconsole: %v\n", err)
		}
		return 1
	}
	word := "OK"
	if !r.OK() {
		word = "ERR"
	}
	fmt.Fprintf(s.io.Out, "%s %s\n", word, r.Text)
	return r.ExitCode()
}

type mconsoleJSON struct {
	Socket  string `json:"socket"`
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Err     int32  `json:"err"`
	Errno   string `json:"errno,omitempty"`
	Text    string `json:"text"`
	Packets int    `json:"packets"`
}

func (s *mcSession) jsonCommand(line string) (int, error) {
	line = s.fixFilenames(strings.TrimRight(line, " \t\n\v\f\r"))
	r, err := s.client.Command(s.ctx, line)
	if err != nil {
		return 1, err
	}
	out := mconsoleJSON{Socket: s.client.Path(), Command: line, OK: r.OK(), Err: r.Err, Text: r.Text, Packets: r.Packets}
	if r.Err < 0 {
		out.Errno = syscall.Errno(-r.Err).Error()
	}
	enc := json.NewEncoder(s.io.Out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return 1, err
	}
	return r.ExitCode(), nil
}

// fixFilenames makes the files of "config ubdN=COW,BACKING" absolute, as
// uml_mconsole does: the kernel resolves relative paths against its own
// working directory, not the user's.
func (s *mcSession) fixFilenames(line string) string {
	rest, ok := strings.CutPrefix(line, "config")
	if !ok {
		return line
	}
	rest = strings.TrimLeft(rest, " \t\n\v\f\r")
	if !strings.HasPrefix(rest, "ubd") {
		return line
	}
	eq := strings.IndexByte(line, '=')
	if eq < 0 {
		return line
	}
	files := line[eq+1:]
	cow, backing, hasCow := strings.Cut(files, ",")
	if !hasCow {
		backing, cow = cow, ""
	}
	out := line[:eq+1]
	if hasCow {
		out += s.absolutize(cow) + ","
	}
	return out + s.absolutize(backing)
}

func (s *mcSession) absolutize(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		wd, err := syscall.Getwd()
		if err != nil {
			return p
		}
		return wd + "/" + p
	}
	dir, err := filepath.EvalSymlinks(p[:i])
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		if s.compat {
			fmt.Fprintf(s.io.Err, "absolutize : Can't cd to '%s', %s\n", p[:i], strerror(err))
		}
		return p
	}
	if dir == "/" {
		dir = ""
	}
	return dir + p[i:]
}

// interactive reads command lines until EOF or quit, as uml_mconsole
// does. In compat mode it prints the prompt and, when the input is not a
// terminal, echoes each line after it, as readline does; otherwise it
// prompts only on a terminal.
func (s *mcSession) interactive() int {
	tty := isTerminal(s.io.In)
	prompt := s.compat || tty
	sc := bufio.NewScanner(s.io.In)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for {
		if prompt {
			fmt.Fprintf(s.io.Out, "(%s) ", s.name)
		}
		if !sc.Scan() {
			if prompt {
				fmt.Fprintln(s.io.Out)
			}
			return 0
		}
		line := sc.Text()
		if s.compat && !tty {
			fmt.Fprintln(s.io.Out, line)
		}
		if !s.compat && strings.TrimSpace(line) == "" {
			continue
		}
		if code, quit := s.issue(line); quit {
			return code
		}
		if s.ctx.Err() != nil {
			return 1
		}
	}
}

// strerror renders err's errno like C's perror, else err's text.
func strerror(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		msg := en.Error()
		return strings.ToUpper(msg[:1]) + msg[1:]
	}
	return err.Error()
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	var t syscall.Termios
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&t)))
	return e == 0
}
