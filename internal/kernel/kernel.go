// Package kernel finds the User-Mode Linux kernel binary on the host, asks it
// what it is (version, network transports), and builds the host command that
// runs it with umlkit's process conventions.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// EnvKernel names the environment variable that overrides where the kernel is.
const EnvKernel = "UMLKIT_KERNEL"

// DefaultPath is where Debian's user-mode-linux package installs the kernel.
const DefaultPath = "/usr/bin/linux"

// Package is the Debian package that provides the kernel.
const Package = "user-mode-linux"

// ErrNotFound is returned by Find when no kernel binary is on the host.
var ErrNotFound = errors.New("no User-Mode Linux kernel found")

// Kernel is a UML kernel binary on the host.
type Kernel struct {
	// Path is the executable's path.
	Path string
	// Source says how it was found: "$UMLKIT_KERNEL", "PATH" or "default".
	Source string
}

// Find locates the kernel: $UMLKIT_KERNEL if set, else "linux" on PATH, else
// DefaultPath. The error wraps ErrNotFound and says what to install.
func Find() (*Kernel, error) {
	if p := os.Getenv(EnvKernel); p != "" {
		if err := executable(p); err != nil {
			return nil, fmt.Errorf("%s=%s: %w", EnvKernel, p, err)
		}
		return &Kernel{Path: p, Source: "$" + EnvKernel}, nil
	}
	if p, err := exec.LookPath("linux"); err == nil {
		return &Kernel{Path: p, Source: "PATH"}, nil
	}
	if executable(DefaultPath) == nil {
		return &Kernel{Path: DefaultPath, Source: "default"}, nil
	}
	return nil, fmt.Errorf("%w on PATH or at %s: install it with: apt-get install %s (or set %s)",
		ErrNotFound, DefaultPath, Package, EnvKernel)
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// Version returns what `linux --version` prints, such as "6.1.176".
func (k *Kernel) Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, k.Path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", k.Path, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Config is the part of the kernel's build configuration that umlkit needs.
type Config struct {
	// Options maps CONFIG_ names to their values ("y", "m", a string).
	Options map[string]string
}

// Config runs `linux --showconfig` and parses it.
func (k *Kernel) Config(ctx context.Context) (*Config, error) {
	out, err := exec.CommandContext(ctx, k.Path, "--showconfig").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --showconfig: %w", k.Path, err)
	}
	return ParseConfig(out), nil
}

// ParseConfig parses kernel .config text; comments and blank lines are skipped.
func ParseConfig(b []byte) *Config {
	c := &Config{Options: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "CONFIG_") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		c.Options[k] = strings.Trim(v, `"`)
	}
	return c
}

// Enabled reports whether CONFIG_<name> is built in or a module.
func (c *Config) Enabled(name string) bool {
	v := c.Options["CONFIG_"+name]
	return v == "y" || v == "m"
}

// transports maps a transport's name to the option that builds it in.
var transports = []struct{ name, option string }{
	{"tuntap", "UML_NET_TUNTAP"},
	{"daemon", "UML_NET_DAEMON"},
	{"vde", "UML_NET_VDE"},
	{"mcast", "UML_NET_MCAST"},
	{"slirp", "UML_NET_SLIRP"},
	{"pcap", "UML_NET_PCAP"},
	{"vector", "UML_NET_VECTOR"},
}

// Transports lists the network transports built into the kernel: the eth
// transports by name, and "vector" for the vecN transports (bess, tap, raw,
// gre, l2tpv3, fd).
func (c *Config) Transports() []string {
	var out []string
	for _, t := range transports {
		if c.Enabled(t.option) {
			out = append(out, t.name)
		}
	}
	return out
}

// HasTransport reports whether the named transport is built in.
func (c *Config) HasTransport(name string) bool {
	for _, t := range c.Transports() {
		if t == name {
			return true
		}
	}
	return false
}
