package kernel

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/umlkit/umlkit/internal/hostdirs"
)

// The shim is built from xstate/shim.c by `make shim`; see that file for why
// it exists.
//
//go:embed xstate/shim_amd64.so
var xstateShim []byte

// ShimNeeded reports whether kernels on this host run with the xstate shim.
// It is used on every x86-64 Linux host: the shim passes requests through
// untouched where the kernel's buffer already fits the host.
func ShimNeeded() bool { return runtime.GOOS == "linux" && runtime.GOARCH == "amd64" }

// InstallShim writes the xstate shim under dir (once per content) and
// returns its path. The directory must allow executable mappings.
func InstallShim(dir string) (string, error) {
	sum := sha256.Sum256(xstateShim)
	p := filepath.Join(dir, "xstate-"+hex.EncodeToString(sum[:6])+".so")
	if b, err := os.ReadFile(p); err == nil && string(b) == string(xstateShim) {
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("install xstate shim: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".xstate-*.so")
	if err != nil {
		return "", fmt.Errorf("install xstate shim: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(xstateShim); err != nil {
		tmp.Close()
		return "", fmt.Errorf("install xstate shim %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", fmt.Errorf("install xstate shim %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("install xstate shim %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", fmt.Errorf("install xstate shim: %w", err)
	}
	return p, nil
}

// LibDir is where umlkit keeps files the kernel process loads.
func LibDir() string { return filepath.Join(hostdirs.Cache(), "lib") }
