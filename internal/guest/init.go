// Package guest is what runs inside a UML instance: umlkit as its init
// (filesystems, hostname, interface names and addresses from the kernel
// command line, a startup script, child reaping, power off on request)
// and as the exec agent on a serial line.
package guest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/umlkit/umlkit/internal/agent"
)

// ReadyMarker is printed on the console when the instance is up.
const ReadyMarker = "umlkit-ready"

// Kernel command line parameters the init understands.
const (
	ParamHostname = "hostname"       // hostname=NAME
	ParamAgent    = "umlkit.agent"   // umlkit.agent=ttyS1: serve the exec agent there
	ParamStartup  = "umlkit.startup" // umlkit.startup=/path: run with /bin/sh after boot
	ParamAddr     = "umlkit.ip"      // umlkit.ip=eth0:10.0.0.1/24 (repeatable)
	ParamGateway  = "umlkit.gw"      // umlkit.gw=10.0.0.254
	ParamShell    = "umlkit.shell"   // umlkit.shell=0: no console shell
)

// Cmdline is a parsed kernel command line: the last value of each key,
// and every value of a key in order.
type Cmdline map[string][]string

// ParseCmdline splits /proc/cmdline's text.
func ParseCmdline(s string) Cmdline {
	c := Cmdline{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		c[k] = append(c[k], v)
	}
	return c
}

// Get returns the last value of key, or def.
func (c Cmdline) Get(key, def string) string {
	if v := c[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return def
}

// Init runs umlkit as the instance's PID 1. It returns only if it cannot
// work as init; otherwise it powers the instance off.
func Init() int {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "umlkit init: not process 1; this is the init of umlkit's images")
		return 1
	}
	con := os.Stdout
	logf := func(format string, a ...any) { fmt.Fprintf(con, "umlkit init: "+format+"\n", a...) }
	mountAll(logf)
	b, _ := os.ReadFile("/proc/cmdline")
	cl := ParseCmdline(string(b))
	name := cl.Get(ParamHostname, "uml")
	if err := unix.Sethostname([]byte(name)); err != nil {
		logf("hostname %s: %v", name, err)
	}
	if err := setupNetwork(cl); err != nil {
		logf("network: %v", err)
	}
	r := newReaper()
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2, unix.SIGINT)
	if tty := cl.Get(ParamAgent, ""); tty != "" {
		go func() {
			if err := ServeAgent(context.Background(), "/dev/"+tty, r.start); err != nil {
				logf("agent on %s: %v", tty, err)
			}
		}()
	}
	if p := cl.Get(ParamStartup, ""); p != "" {
		runStartup(r, p, con, logf)
	} else if st, err := os.Stat("/etc/rc.local"); err == nil && st.Mode()&0o111 != 0 {
		runStartup(r, "/etc/rc.local", con, logf)
	}
	fmt.Fprintf(con, "%s %s\n", ReadyMarker, name)
	// Tells the supervisor the guest is up (the file exists when the
	// kernel has a notify socket).
	os.WriteFile("/proc/mconsole", []byte(ReadyMarker+" "+name), 0)
	// Ctrl-Alt-Del (mconsole cad) becomes SIGINT to init, which powers off.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	if cl.Get(ParamShell, "1") != "0" {
		go consoleShell(r, logf)
	}
	sig := <-signals
	return shutdown(sig, r, logf)
}

func mountAll(logf func(string, ...any)) {
	unix.Mount("", "/", "", unix.MS_REMOUNT, "")
	for _, m := range []struct {
		src, dst, fs string
		flags        uintptr
		data         string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, ""},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, m.flags, m.data); err != nil && err != unix.EBUSY {
			logf("mount %s: %v", m.dst, err)
		}
	}
}

// setupNetwork brings lo up, renames vector NICs (vecN) to ethN where that
// name is free, so labs see eth0.., and applies umlkit.ip and umlkit.gw.
func setupNetwork(cl Cmdline) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var vecs []netlink.Link
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "vec") {
			vecs = append(vecs, l)
		}
	}
	sort.Slice(vecs, func(i, j int) bool { return ifaceNum(vecs[i].Attrs().Name) < ifaceNum(vecs[j].Attrs().Name) })
	for _, l := range vecs {
		want := "eth" + strings.TrimPrefix(l.Attrs().Name, "vec")
		if _, err := netlink.LinkByName(want); err == nil {
			continue
		}
		if err := netlink.LinkSetName(l, want); err != nil {
			return fmt.Errorf("rename %s to %s: %w", l.Attrs().Name, want, err)
		}
	}
	for _, spec := range cl[ParamAddr] {
		dev, cidr, ok := strings.Cut(spec, ":")
		addr, err := netlink.ParseAddr(cidr)
		if !ok || err != nil {
			return fmt.Errorf("%s=%s: want DEV:ADDRESS/PREFIX", ParamAddr, spec)
		}
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s=%s: no interface %s", ParamAddr, spec, dev)
		}
		if err := netlink.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("%s=%s: %w", ParamAddr, spec, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("%s up: %w", dev, err)
		}
	}
	if gw := cl.Get(ParamGateway, ""); gw != "" {
		r, err := netlink.ParseIPNet("0.0.0.0/0")
		if err != nil {
			return err
		}
		gwIP := net.ParseIP(gw)
		if gwIP == nil {
			return fmt.Errorf("%s=%s: not an address", ParamGateway, gw)
		}
		if err := netlink.RouteReplace(&netlink.Route{Dst: r, Gw: gwIP}); err != nil {
			return fmt.Errorf("%s=%s: %w", ParamGateway, gw, err)
		}
	}
	return nil
}

func ifaceNum(name string) int {
	n, _ := strconv.Atoi(strings.TrimLeft(name, "abcdefghijklmnopqrstuvwxyz"))
	return n
}

func runStartup(r *reaper, path string, con *os.File, logf func(string, ...any)) {
	p, err := r.start([]string{"/bin/sh", path}, nil, "/", [3]*os.File{devNull(), con, con}, false)
	if err != nil {
		logf("startup %s: %v", path, err)
		return
	}
	if st := p.Wait(); st.Code != 0 {
		logf("startup %s exited %d", path, st.Code)
	}
}

func devNull() *os.File {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return nil
	}
	return f
}

// consoleShell keeps a login shell on the console.
func consoleShell(r *reaper, logf func(string, ...any)) {
	for {
		tty, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
		if err != nil {
			logf("console: %v", err)
			return
		}
		p, err := r.start([]string{"/bin/sh", "-l"}, []string{"HOME=/root", "TERM=linux"}, "/", [3]*os.File{tty, tty, tty}, true)
		tty.Close()
		if err != nil {
			logf("console shell: %v", err)
			return
		}
		p.Wait()
		time.Sleep(100 * time.Millisecond)
	}
}

// ServeAgent serves the exec agent on the serial line at path, in raw mode.
func ServeAgent(ctx context.Context, path string, spawn agent.Spawner) error {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := makeRaw(int(f.Fd())); err != nil {
		return fmt.Errorf("%s: raw mode: %w", path, err)
	}
	name, _ := os.Hostname()
	return agent.Serve(ctx, f, agent.ServeOptions{Spawn: spawn, Hostname: name})
}

// makeRaw puts a terminal in raw mode, so the agent's frames pass unchanged.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func shutdown(sig os.Signal, r *reaper, logf func(string, ...any)) int {
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch sig {
	case unix.SIGTERM:
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case unix.SIGUSR1:
		cmd = unix.LINUX_REBOOT_CMD_HALT
	}
	unix.Kill(-1, unix.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	if err := unix.Reboot(cmd); err != nil {
		logf("reboot(%#x): %v", cmd, err)
	}
	return 1
}

// reaper is PID 1's child handling: it reaps every exited process, and
// hands the statuses of the ones it started to their waiters.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan agent.ExitStatus
	early   map[int]agent.ExitStatus // exited before start registered them
}

func newReaper() *reaper {
	r := &reaper{waiters: map[int]chan agent.ExitStatus{}, early: map[int]agent.ExitStatus{}}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			r.reap()
		}
	}()
	return r
}

func (r *reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		st := agent.StatusOf(syscall.WaitStatus(ws))
		r.mu.Lock()
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- st
		} else {
			r.early[pid] = st
		}
		r.mu.Unlock()
	}
}

type reaped struct {
	pid int
	ch  chan agent.ExitStatus
	st  *agent.ExitStatus
	mu  sync.Mutex
}

func (p *reaped) Signal(s os.Signal) error { return unix.Kill(p.pid, s.(syscall.Signal)) }
func (p *reaped) Wait() agent.ExitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st == nil {
		st := <-p.ch
		p.st = &st
	}
	return *p.st
}

// start is an agent.Spawner whose processes the reaper waits for.
func (r *reaper) start(argv, env []string, dir string, files [3]*os.File, tty bool) (agent.Process, error) {
	r.mu.Lock()
	defer r.mu.Unlock() // held across the start so the reaper cannot miss the pid
	path, err := agent.LookPath(argv[0], env)
	if err != nil {
		return nil, err
	}
	env = agent.WithDefaults(env)
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{Dir: dir, Env: env,
		Files: []uintptr{files[0].Fd(), files[1].Fd(), files[2].Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: tty, Setctty: tty, Ctty: 0}})
	if err != nil {
		return nil, err
	}
	p := &reaped{pid: pid, ch: make(chan agent.ExitStatus, 1)}
	if st, ok := r.early[pid]; ok {
		delete(r.early, pid)
		p.ch <- st
	} else {
		r.waiters[pid] = p.ch
	}
	return p, nil
}
