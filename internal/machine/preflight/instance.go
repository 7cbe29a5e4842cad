package preflight

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/umlkit/umlkit/internal/machine/cmdline"
)

// maxSocketPath is the longest path a Unix socket can be bound or
// connected to (sun_path minus its NUL).
const maxSocketPath = 107

// randomUmidLen is the length of the umid the kernel picks when none is
// given.
const randomUmidLen = 6

func checkInstance(r *Report, c *cmdline.CommandLine, opts Options) {
	dir := opts.UMLDir(c)
	arg := "uml_dir=" + dir
	if d, ok := c.UMLDir(); ok {
		arg = "uml_dir=" + d
	}
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		r.add(&Problem{Check: "uml-dir", Arg: arg, Err: ErrUMLDir,
			Message: fmt.Sprintf("uml_dir %s is not a directory", dir),
			Fix:     "give uml_dir= a directory"})
		return
	case errors.Is(err, os.ErrNotExist):
		// The kernel makes uml_dir itself, but only the last component;
		// when that fails it crashes ("Segfault with no mm").
		parent := filepath.Dir(strings.TrimSuffix(dir, "/"))
		if perr := syscall.Access(parent, 2 /* W_OK */); perr != nil {
			r.add(&Problem{Check: "uml-dir", Arg: arg, Err: ErrUMLDir,
				Message: fmt.Sprintf("uml_dir %s does not exist and the kernel cannot make it (%s: %v); the kernel would crash at boot", dir, parent, perr),
				Fix:     "mkdir -p " + dir})
			return
		}
	case err != nil:
		r.add(&Problem{Check: "uml-dir", Arg: arg, Err: ErrUMLDir, Message: fmt.Sprintf("uml_dir %s: %v", dir, err)})
		return
	}

	umid, named := c.Umid()
	n := len(umid)
	if !named {
		n = randomUmidLen
	}
	if sock := len(dir) + n + len("/mconsole"); sock > maxSocketPath {
		r.add(&Problem{Check: "socket-path", Arg: arg, Err: ErrSocketPath,
			Message: fmt.Sprintf("the mconsole socket %s%s/mconsole would be %d bytes, over the %d a Unix socket path can have", dir, orRandom(umid), sock, maxSocketPath),
			Fix:     "use a shorter uml_dir= or umid="})
	}
	if !named {
		return
	}
	if pid, ok := livePID(filepath.Join(dir, umid, "pid")); ok {
		r.add(&Problem{Check: "umid-in-use", Arg: "umid=" + umid, Err: ErrUmidInUse, PID: pid, Umid: umid,
			Message: fmt.Sprintf("umid %s is in use by a running instance (pid %d, %s%s/pid): the kernel would switch to a random umid without saying so", umid, pid, dir, umid),
			Fix:     fmt.Sprintf("pick another umid=, or stop the running one first (uml_mconsole %s%s/mconsole halt)", dir, umid)})
	}
}

func orRandom(umid string) string {
	if umid == "" {
		return "XXXXXX"
	}
	return umid
}

// livePID reads a UML pid file and reports whether its process is alive,
// the way the kernel decides it (kill 0 fails only with ESRCH when dead).
func livePID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return pid, false
	}
	return pid, true
}

// owner finds the umid of the instance whose process (or one of its
// ancestors: UML's helper processes are its children) is pid, by reading
// the pid files under the uml_dirs.
func owner(pid int, dirs []string) string {
	byPID := map[int]string{}
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*", "pid"))
		for _, f := range files {
			if p, ok := livePID(f); ok {
				byPID[p] = filepath.Base(filepath.Dir(f))
			}
		}
	}
	for i := 0; i < 8 && pid > 1; i++ {
		if u, ok := byPID[pid]; ok {
			return u
		}
		pid = parentPID(pid)
	}
	return ""
}

// parentPID reads a process's parent from /proc, or returns 0.
func parentPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}
