package machine

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// killHolders sends SIGKILL to every process but this one that has path
// open. The kernel's console helper (its SIGWINCH thread) starts a session
// of its own, so it outlives a killed kernel and keeps the console pty
// open; this finds it.
func killHolders(path string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	self := os.Getpid()
	killed := map[int]bool{}
	for _, fd := range procs {
		target, err := os.Readlink(fd)
		if err != nil || target != path {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(fd))))
		if err != nil || pid == self || killed[pid] {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed[pid] = true
		}
	}
	return len(killed)
}
