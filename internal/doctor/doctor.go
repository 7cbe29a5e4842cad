// Package doctor checks that a host can run umlkit: the UML kernel and its
// transports, the filesystems and devices the kernel needs, and the tools
// umlkit drives. Each finding says what is wrong and the command that fixes
// it.
package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/kernel"
)

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Fail Status = "fail" // something required is missing or broken
	Warn Status = "warn" // something optional is missing
)

// Check is one finding.
type Check struct {
	Name     string `json:"name"`
	Status   Status `json:"status"`
	Required bool   `json:"required"`
	Detail   string `json:"detail"`
	Fix      string `json:"fix,omitempty"`
}

// Report is the outcome of Run.
type Report struct {
	Checks []Check `json:"checks"`
}

// Healthy reports whether every required check passed.
func (r *Report) Healthy() bool {
	for _, c := range r.Checks {
		if c.Status == Fail {
			return false
		}
	}
	return true
}

// Host is what the checks look at. Its zero value is not usable; Default
// returns the real host.
type Host struct {
	FindKernel func() (*kernel.Kernel, error)
	LookPath   func(string) (string, error)
	ReadFile   func(string) ([]byte, error)
	Stat       func(string) (os.FileInfo, error)
	RuntimeDir string
	LibDir     string
	Busybox    string
}

// Default returns the real host.
func Default() Host {
	return Host{
		FindKernel: kernel.Find,
		LookPath:   exec.LookPath,
		ReadFile:   os.ReadFile,
		Stat:       os.Stat,
		RuntimeDir: hostdirs.Runtime(),
		LibDir:     kernel.LibDir(),
		Busybox:    "/bin/busybox",
	}
}

// Run performs every check.
func Run(ctx context.Context, h Host) *Report {
	r := &Report{}
	r.Checks = append(r.Checks, checkKernel(ctx, h))
	mounts, _ := h.ReadFile("/proc/self/mountinfo")
	r.Checks = append(r.Checks,
		checkMemoryDir(mounts, memoryDir(os.Getenv)),
		checkLibDir(h, mounts),
		checkTun(h),
		checkMkfs(ctx, h),
		checkBusybox(h),
		checkTool(h, "debootstrap", []string{"debootstrap"}, "debootstrap", false, "to build Debian images"),
		checkTool(h, "uml-utilities", []string{"uml_switch", "uml_mkcow", "uml_moo", "uml_mconsole"}, "uml-utilities", false, "to check interoperability with the classic tools"),
		checkTool(h, "vde2", []string{"vde_switch", "vde_plug"}, "vde2", false, "to connect VDE clients and compare switches"),
		checkRuntime(h),
		checkUmlNet(h),
	)
	return r
}

func checkKernel(ctx context.Context, h Host) Check {
	c := Check{Name: "kernel", Required: true}
	k, err := h.FindKernel()
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		c.Fix = "apt-get install " + kernel.Package
		if errors.Is(err, kernel.ErrNotFound) {
			c.Detail = "no UML kernel (linux) on PATH, in $" + kernel.EnvKernel + " or at " + kernel.DefaultPath
		}
		return c
	}
	v, err := k.Version(ctx)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		c.Fix = "apt-get install --reinstall " + kernel.Package
		return c
	}
	cfg, err := k.Config(ctx)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		c.Fix = "apt-get install --reinstall " + kernel.Package
		return c
	}
	c.Status = OK
	c.Detail = fmt.Sprintf("%s (%s) version %s; transports: %s", k.Path, k.Source, v, describeTransports(cfg))
	if !cfg.HasTransport("vector") {
		c.Status = Fail
		c.Detail += "; no vector transport (BESS), which umlkit's switch uses"
		c.Fix = "use a kernel built with CONFIG_UML_NET_VECTOR=y (Debian's " + kernel.Package + " has it)"
	}
	return c
}

func describeTransports(cfg *kernel.Config) string {
	var parts []string
	for _, t := range cfg.Transports() {
		if t == "vector" {
			t = "vector (bess, tap, raw, gre, l2tpv3, fd)"
		}
		parts = append(parts, t)
	}
	if !cfg.HasTransport("daemon") {
		parts = append(parts, "no daemon (uml_switch protocol; removed in Linux 6.16)")
	}
	return strings.Join(parts, ", ")
}

// mount is one line of /proc/self/mountinfo.
type mount struct {
	point   string
	options string
}

func parseMounts(b []byte) []mount {
	var ms []mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			continue
		}
		ms = append(ms, mount{point: unescape(f[4]), options: f[5]})
	}
	return ms
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountOf returns the mount that holds path (the longest matching point).
func mountOf(ms []mount, path string) (mount, bool) {
	var best mount
	found := false
	for _, m := range ms {
		if path == m.point || strings.HasPrefix(path, strings.TrimSuffix(m.point, "/")+"/") || m.point == "/" {
			if !found || len(m.point) > len(best.point) {
				best, found = m, true
			}
		}
	}
	return best, found
}

func noexec(m mount) bool {
	for _, o := range strings.Split(m.options, ",") {
		if o == "noexec" {
			return true
		}
	}
	return false
}

// memoryDir is where UML keeps guest memory: the first of $TMPDIR, $TMP,
// $TEMP that is set, else /dev/shm.
func memoryDir(getenv func(string) string) string {
	for _, v := range []string{"TMPDIR", "TMP", "TEMP"} {
		if d := getenv(v); d != "" {
			return d
		}
	}
	return "/dev/shm"
}

func checkMemoryDir(mounts []byte, dir string) Check {
	if dir == "/dev/shm" {
		return checkShm(mounts)
	}
	c := Check{Name: "memory dir", Required: true}
	m, ok := mountOf(parseMounts(mounts), dir)
	if ok && noexec(m) {
		c.Status = Fail
		c.Detail = fmt.Sprintf("UML keeps guest memory in %s ($TMPDIR or $TMP or $TEMP), which is on %s, mounted noexec", dir, m.point)
		c.Fix = "unset TMPDIR TMP TEMP (UML then uses /dev/shm), or point TMPDIR at a filesystem without noexec"
		return c
	}
	c.Status, c.Detail = OK, dir+" (from the environment), exec allowed"
	return c
}

func checkShm(mounts []byte) Check {
	c := Check{Name: "/dev/shm", Required: true}
	ms := parseMounts(mounts)
	m, ok := mountOf(ms, "/dev/shm")
	switch {
	case !ok || m.point != "/dev/shm":
		c.Status, c.Detail = Fail, "/dev/shm is not mounted; UML keeps guest memory there"
		c.Fix = "mkdir -p /dev/shm && mount -t tmpfs -o rw,nosuid,nodev tmpfs /dev/shm"
	case noexec(m):
		c.Status, c.Detail = Fail, "/dev/shm is mounted noexec; UML maps guest memory from it executable and fails"
		c.Fix = "mount -o remount,exec /dev/shm"
	default:
		c.Status, c.Detail = OK, "tmpfs, exec allowed"
	}
	return c
}

func checkLibDir(h Host, mounts []byte) Check {
	c := Check{Name: "xstate shim", Required: kernel.ShimNeeded()}
	if !kernel.ShimNeeded() {
		c.Status, c.Detail = OK, "not needed on this architecture"
		return c
	}
	p, err := kernel.InstallShim(h.LibDir)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		c.Fix = "make " + h.LibDir + " writable, or set XDG_CACHE_HOME to a writable directory"
		return c
	}
	if m, ok := mountOf(parseMounts(mounts), p); ok && noexec(m) {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s is on %s, mounted noexec; the kernel cannot load it", p, m.point)
		c.Fix = "set XDG_CACHE_HOME to a directory on a filesystem without noexec"
		return c
	}
	c.Status, c.Detail = OK, p+" (lets 6.1 kernels save AVX-512/AMX state on this host)"
	return c
}

func checkTun(h Host) Check {
	c := Check{Name: "/dev/net/tun", Required: false}
	st, err := h.Stat("/dev/net/tun")
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		c.Status, c.Detail = Warn, "missing; needed for TAP devices (host connectivity)"
		c.Fix = "modprobe tun || (mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun)"
		return c
	}
	c.Status, c.Detail = OK, "character device present"
	return c
}

var mkfsVersion = regexp.MustCompile(`mke2fs (\d+)\.(\d+)`)

func checkMkfs(ctx context.Context, h Host) Check {
	c := Check{Name: "e2fsprogs", Required: true, Fix: "apt-get install e2fsprogs"}
	p, err := h.LookPath("mkfs.ext4")
	if err != nil {
		c.Status, c.Detail = Fail, "mkfs.ext4 not found; umlkit builds images with it"
		return c
	}
	out, _ := exec.CommandContext(ctx, p, "-V").CombinedOutput()
	m := mkfsVersion.FindSubmatch(out)
	if m == nil {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s -V printed no version", p)
		return c
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	if major < 1 || (major == 1 && minor < 43) {
		c.Status, c.Detail = Fail, fmt.Sprintf("mke2fs %d.%d has no -d (populate from a directory; needs 1.43)", major, minor)
		return c
	}
	c.Status, c.Detail, c.Fix = OK, fmt.Sprintf("%s (mke2fs %d.%d, with -d)", p, major, minor), ""
	return c
}

func checkBusybox(h Host) Check {
	c := Check{Name: "busybox-static", Required: true, Fix: "apt-get install busybox-static"}
	b, err := h.ReadFile(h.Busybox)
	if err != nil {
		c.Status, c.Detail = Fail, h.Busybox+" not found; minimal images are built from it"
		return c
	}
	if bytes.Contains(b[:min(len(b), 1<<20)], []byte("/ld-linux")) {
		c.Status, c.Detail = Fail, h.Busybox+" is dynamically linked; images need the static one"
		return c
	}
	c.Status, c.Detail, c.Fix = OK, h.Busybox+" (static)", ""
	return c
}

func checkTool(h Host, name string, bins []string, pkg string, required bool, why string) Check {
	c := Check{Name: name, Required: required}
	var missing, found []string
	for _, b := range bins {
		if p, err := h.LookPath(b); err == nil {
			found = append(found, p)
		} else {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		c.Status = Warn
		if required {
			c.Status = Fail
		}
		c.Detail = fmt.Sprintf("%s not found (optional: %s)", strings.Join(missing, ", "), why)
		if required {
			c.Detail = fmt.Sprintf("%s not found (%s)", strings.Join(missing, ", "), why)
		}
		c.Fix = "apt-get install " + pkg
		return c
	}
	c.Status, c.Detail = OK, strings.Join(found, " ")
	return c
}

func checkRuntime(h Host) Check {
	c := Check{Name: "runtime dir", Required: true}
	dir := h.RuntimeDir
	if err := hostdirs.CheckSocketDir(dir); err != nil {
		c.Status, c.Detail = Fail, err.Error()
		c.Fix = "export " + hostdirs.EnvRuntime + "=/tmp/umlkit"
		return c
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.Status, c.Detail = Fail, fmt.Sprintf("cannot create %s: %v", dir, err)
		c.Fix = "export " + hostdirs.EnvRuntime + "=/tmp/umlkit-$(id -u)"
		return c
	}
	f, err := os.CreateTemp(dir, ".doctor-")
	if err != nil {
		c.Status, c.Detail = Fail, fmt.Sprintf("%s is not writable: %v", dir, err)
		c.Fix = "export " + hostdirs.EnvRuntime + "=/tmp/umlkit-$(id -u)"
		return c
	}
	f.Close()
	os.Remove(f.Name())
	c.Status = OK
	c.Detail = fmt.Sprintf("%s (writable; socket paths fit: %d of %d bytes used)", dir,
		len(filepath.Clean(dir))+1+hostdirs.SocketNameRoom, hostdirs.MaxSocketPath)
	return c
}

// checkUmlNet says which uml_net the kernel would run for
// ethN=tuntap,,MAC,HOST_IP (it searches PATH, then /usr/lib/uml) and how to
// make it umlkit's.
func checkUmlNet(h Host) Check {
	c := Check{Name: "uml_net helper", Required: false,
		Fix: "install -o root -g uml-net -m 4754 $(command -v umlkit) /usr/local/bin/uml_net (members of group uml-net may then use ethN=tuntap,,MAC,HOST_IP)"}
	p, err := h.LookPath("uml_net")
	if err != nil {
		if _, err := h.Stat("/usr/lib/uml/uml_net"); err == nil {
			p = "/usr/lib/uml/uml_net"
		}
	}
	if p == "" {
		c.Status, c.Detail = Warn, "none on PATH or in /usr/lib/uml (optional: TAP devices made at boot, ethN=tuntap,,MAC,HOST_IP)"
		return c
	}
	self, _ := os.Executable()
	if sameFile(p, self) {
		c.Status, c.Detail, c.Fix = OK, p+" is umlkit", ""
		return c
	}
	c.Status = OK
	c.Detail = p + " (the classic helper; to use umlkit's, which needs no ifconfig, route or arp: " + c.Fix + ")"
	c.Fix = ""
	return c
}

// sameFile reports whether a and b are the same file or have the same
// content (a setuid copy of the binary).
func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return false
	}
	if os.SameFile(sa, sb) {
		return true
	}
	if sa.Size() != sb.Size() {
		return false
	}
	ba, err1 := os.ReadFile(a)
	bb, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && bytes.Equal(ba, bb)
}
