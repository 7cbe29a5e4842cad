package preflight

import (
	"os"
	"syscall"
)

// probeLock reports the process holding a host lock on path that would
// stop the kernel's F_SETLK: write locks only when the kernel would open
// the file read-only, any lock when it would open it read-write. It
// returns 0 when nothing is in the way. It takes no lock itself.
func probeLock(path string, write bool) (pid int, writeLocked bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: 0, Start: 0, Len: 0}
	if write {
		lk.Type = syscall.F_WRLCK
	}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return 0, false, err
	}
	if lk.Type == syscall.F_UNLCK {
		return 0, false, nil
	}
	return int(lk.Pid), lk.Type == syscall.F_WRLCK, nil
}
