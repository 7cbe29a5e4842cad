package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseConfig(t *testing.T) {
	cfg := ParseConfig([]byte(`#
# Automatically generated file; DO NOT EDIT.
CONFIG_UML_NET=y
CONFIG_UML_NET_TUNTAP=y
CONFIG_UML_NET_DAEMON=y
CONFIG_UML_NET_DAEMON_DEFAULT_SOCK="/var/run/uml-utilities/uml_switch.ctl"
CONFIG_UML_NET_VECTOR=y
# CONFIG_UML_NET_PCAP is not set
CONFIG_UML_NET_SLIRP=m
`))
	if got, want := cfg.Transports(), []string{"tuntap", "daemon", "slirp", "vector"}; !cmp.Equal(got, want) {
		t.Errorf("Transports() = %v, want %v", got, want)
	}
	if got := cfg.Options["CONFIG_UML_NET_DAEMON_DEFAULT_SOCK"]; got != "/var/run/uml-utilities/uml_switch.ctl" {
		t.Errorf("DEFAULT_SOCK = %q", got)
	}
	if cfg.HasTransport("pcap") {
		t.Error("HasTransport(pcap) = true for a kernel without it")
	}
}

func TestFindFromEnv(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "linux")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 6.1.999\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvKernel, fake)
	k, err := Find()
	if err != nil || k.Path != fake || k.Source != "$"+EnvKernel {
		t.Fatalf("Find() = %+v, %v; want %s from $%s", k, err, fake, EnvKernel)
	}
	if v, err := k.Version(context.Background()); err != nil || v != "6.1.999" {
		t.Errorf("Version() = %q, %v; want 6.1.999", v, err)
	}
	t.Setenv(EnvKernel, filepath.Join(dir, "missing"))
	if _, err := Find(); err == nil || !strings.Contains(err.Error(), EnvKernel) {
		t.Errorf("Find() with a missing $%s = %v, want an error naming it", EnvKernel, err)
	}
}

func TestFindNothing(t *testing.T) {
	if _, err := os.Stat(DefaultPath); err == nil {
		t.Skip(DefaultPath + " exists on this host")
	}
	t.Setenv(EnvKernel, "")
	t.Setenv("PATH", t.TempDir())
	_, err := Find()
	if err == nil || !strings.Contains(err.Error(), "apt-get install "+Package) {
		t.Fatalf("Find() = %v, want an error saying apt-get install %s", err, Package)
	}
}

func TestWithPreload(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"A=1"}, "LD_PRELOAD=/s.so"},
		{[]string{"LD_PRELOAD=/other.so", "A=1"}, "LD_PRELOAD=/s.so:/other.so"},
		{[]string{"LD_PRELOAD="}, "LD_PRELOAD=/s.so"},
	} {
		got := withPreload(tc.env, "/s.so")
		n := 0
		for _, kv := range got {
			if strings.HasPrefix(kv, "LD_PRELOAD=") {
				n++
			}
		}
		if !slices.Contains(got, tc.want) || n != 1 {
			t.Errorf("withPreload(%q) = %q, want exactly one %q", tc.env, got, tc.want)
		}
	}
}

// The embedded shim is a shared object that defines ptrace, and installs
// to the same path every time.
func TestShim(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(xstateShim))
	if err != nil {
		t.Fatalf("embedded shim is not ELF: %v", err)
	}
	if f.Type != elf.ET_DYN || f.Machine != elf.EM_X86_64 {
		t.Errorf("shim type %v machine %v, want ET_DYN x86-64", f.Type, f.Machine)
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(syms, func(s elf.Symbol) bool { return s.Name == "ptrace" && s.Section != elf.SHN_UNDEF }) {
		t.Error("shim does not define ptrace")
	}
	dir := t.TempDir()
	p1, err := InstallShim(dir)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := InstallShim(dir)
	if err != nil || p1 != p2 {
		t.Fatalf("InstallShim twice = %s, %s (%v); want the same path", p1, p2, err)
	}
	if b, _ := os.ReadFile(p1); !bytes.Equal(b, xstateShim) {
		t.Error("installed shim differs from the embedded one")
	}
}

// A kernel started by Command has the fixed memory layout: no
// address-randomization gap is added to its physical memory, so mem=64M
// gives the same memory at every boot. With UMLKIT_KERNEL_ASLR=1 the
// layout is the host's default again (the shim's constructor leaves it).
func TestFixedLayout(t *testing.T) {
	k, err := Find()
	if err != nil {
		t.Fatalf("no kernel: %v (make setup installs user-mode-linux)", err)
	}
	boot := func(env ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// No root disk: the kernel reports its memory early, then stops
		// at the root mount.
		cmd, err := k.Command(ctx, "mem=64M", "umid=layout-"+strconv.Itoa(os.Getpid()), "uml_dir="+t.TempDir(), "con=null", "con0=null,fd:1", "root=/dev/ubda")
		if err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(cmd.Env, env...)
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	total := regexp.MustCompile(`Memory: \d+K/(\d+)K available`)
	for i := range 3 {
		out := boot()
		m := total.FindStringSubmatch(out)
		if m == nil || m[1] != "65536" || strings.Contains(out, "exec-shield gap") {
			t.Fatalf("boot %d: want Memory: .../65536K and no exec-shield gap; the kernel said:\n%s", i, out)
		}
	}
	if out := boot("UMLKIT_KERNEL_ASLR=1"); total.FindStringSubmatch(out) == nil {
		t.Fatalf("with UMLKIT_KERNEL_ASLR=1 the kernel did not start:\n%s", out)
	}
}
