package cow

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Open file description locks conflict with the POSIX fcntl locks the
// kernel takes, belong to our open file rather than to our process, and
// report a POSIX holder's pid.
const (
	fOFDGetlk = 36
	fOFDSetlk = 37
)

// lockFile takes a non-blocking whole-file OFD lock on f (a write lock if
// write, else a read lock). It is released when f is closed. A conflict
// gives an *InUseError naming the holder.
func lockFile(f *os.File, path string, write bool) error {
	lk := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: 0}
	if write {
		lk.Type = syscall.F_WRLCK
	}
	err := syscall.FcntlFlock(f.Fd(), fOFDSetlk, &lk)
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
		pid, _ := holder(f, write)
		return inUse(path, pid)
	}
	if errors.Is(err, syscall.EINVAL) {
		// Kernels before 3.15 have no OFD locks; fall back to probing.
		pid, perr := holder(f, write)
		if perr == nil && pid != 0 {
			return inUse(path, pid)
		}
		return nil
	}
	return fmt.Errorf("lock %s: %w", path, err)
}

// holder returns the pid holding a lock that conflicts with a read lock
// (or a write lock, if write), 0 if none, -1 if the holder is another
// open file description whose process the kernel does not name.
func holder(f *os.File, write bool) (int, error) {
	lk := syscall.Flock_t{Type: syscall.F_RDLCK}
	if write {
		lk.Type = syscall.F_WRLCK
	}
	err := syscall.FcntlFlock(f.Fd(), fOFDGetlk, &lk)
	if errors.Is(err, syscall.EINVAL) {
		lk = syscall.Flock_t{Type: lk.Type}
		err = syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk)
	}
	if err != nil {
		return 0, err
	}
	if lk.Type == syscall.F_UNLCK {
		return 0, nil
	}
	if lk.Pid <= 0 {
		return -1, nil
	}
	return int(lk.Pid), nil
}

func inUse(path string, pid int) *InUseError {
	e := &InUseError{Path: path, PID: pid}
	if pid > 0 {
		e.Umid = InstanceOf(pid)
	}
	return e
}

// Probe reports whether another process holds a lock on path that would
// stop a writer (write) or a reader (!write): it returns an *InUseError
// naming the holder, or nil when the file is free.
func Probe(path string, write bool) (*InUseError, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pid, err := holder(f, write)
	if err != nil {
		return nil, fmt.Errorf("probe lock on %s: %w", path, err)
	}
	if pid == 0 {
		return nil, nil
	}
	return inUse(path, pid), nil
}

// InstanceOf returns the umid of the UML instance that pid belongs to, or
// "" when it cannot tell. It looks at the umid= argument of the process
// (and of its thread group leader and parent), then at the pid files in
// the instance's uml_dir (default ~/.uml).
func InstanceOf(pid int) string {
	pids := relatedPIDs(pid)
	umlDirs := []string{}
	for _, p := range pids {
		args := cmdline(p)
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "umid="); ok && v != "" {
				return v
			}
			if v, ok := strings.CutPrefix(a, "uml_dir="); ok && v != "" {
				umlDirs = append(umlDirs, v)
			}
		}
	}
	if h, err := os.UserHomeDir(); err == nil {
		umlDirs = append(umlDirs, filepath.Join(h, ".uml"))
	}
	for _, dir := range umlDirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*", "pid"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				continue
			}
			for _, p := range pids {
				if n == p {
					return filepath.Base(filepath.Dir(f))
				}
			}
		}
	}
	return ""
}

// relatedPIDs returns pid, its thread group leader and its parent: the
// lock may be held by a helper thread or child of the kernel process.
func relatedPIDs(pid int) []int {
	ps := []int{pid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, key := range []string{"Tgid:", "PPid:"} {
			if v, ok := strings.CutPrefix(line, key); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 1 && n != pid {
					ps = append(ps, n)
				}
			}
		}
	}
	return ps
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}
