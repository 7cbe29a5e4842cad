// Package hostdirs says where umlkit keeps its files on the host: sockets
// and other runtime state, persistent data (images), and caches.
package hostdirs

import (
	"fmt"
	"os"
	"path/filepath"
)

// Environment variables that override the defaults.
const (
	EnvRuntime = "UMLKIT_RUNTIME_DIR"
	EnvData    = "UMLKIT_DATA_DIR"
)

// MaxSocketPath is the longest path a Unix socket can be bound to
// (sizeof(sun_path) minus the terminating NUL).
const MaxSocketPath = 107

// SocketNameRoom is how many bytes below the runtime dir umlkit needs for
// its socket paths (an instance or switch name and a file name).
const SocketNameRoom = 64

// Runtime returns the directory for sockets and runtime state:
// $UMLKIT_RUNTIME_DIR, else $XDG_RUNTIME_DIR/umlkit, else /run/umlkit for
// root, else /tmp/umlkit-UID. It is not created.
func Runtime() string {
	if d := os.Getenv(EnvRuntime); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "umlkit")
	}
	if os.Geteuid() == 0 {
		return "/run/umlkit"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("umlkit-%d", os.Getuid()))
}

// Data returns the directory for persistent data such as images:
// $UMLKIT_DATA_DIR, else $XDG_DATA_HOME/umlkit, else ~/.local/share/umlkit.
func Data() string {
	if d := os.Getenv(EnvData); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "umlkit")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "umlkit")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("umlkit-data-%d", os.Getuid()))
}

// Cache returns the directory for files umlkit can recreate at will.
func Cache() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "umlkit")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("umlkit-cache-%d", os.Getuid()))
}

// CheckSocketDir reports whether sockets under dir fit in a Unix socket
// address with SocketNameRoom bytes to spare.
func CheckSocketDir(dir string) error {
	if n := len(dir) + 1 + SocketNameRoom; n > MaxSocketPath {
		return fmt.Errorf("%s is too long for socket paths (%d bytes; sockets under it need %d, the limit is %d): set %s to a shorter directory",
			dir, len(dir), n, MaxSocketPath, EnvRuntime)
	}
	return nil
}
