package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/umlkit/umlkit/internal/syncio"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/machine"
)

// ErrBusy is returned when another umlkit holds the lab's lock.
var ErrBusy = errors.New("lab is busy")

// Options configures the operations that run a lab.
type Options struct {
	// Exe is the umlkit binary that supervises instances and runs the
	// switches; "" means this one.
	Exe string
	// Image maps a lab.conf image name ("" for none given) to a root
	// filesystem path. Nil means ResolveImage.
	Image func(ctx context.Context, name string) (string, error)
	// Timeout bounds each instance's boot; zero means 120s.
	Timeout time.Duration
	// Progress receives a line per step ("pc1: ready"); nil discards.
	Progress io.Writer
	// Logger gets diagnostics; nil discards.
	Logger *slog.Logger
}

func (o *Options) progress(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

func (o *Options) exe() (string, error) {
	if o.Exe != "" {
		return o.Exe, nil
	}
	return os.Executable()
}

// ID is a short name for the lab directory, unique per path: its
// instances are named ID-NODE.
func (l *Lab) ID() string {
	h := sha256.Sum256([]byte(l.Dir))
	return hex.EncodeToString(h[:3])
}

// Instance is the instance name of node.
func (l *Lab) Instance(node string) string { return l.ID() + "-" + node }

// StateDir is where the lab keeps its COW files, logs and state: DIR/.umlkit.
func (l *Lab) StateDir() string { return filepath.Join(l.Dir, ".umlkit") }

// RunDir is where the lab's switches keep their sockets.
func (l *Lab) RunDir() string { return filepath.Join(hostdirs.Runtime(), "labs", l.ID()) }

// COW is node's copy-on-write file.
func (l *Lab) COW(node string) string { return filepath.Join(l.StateDir(), node+".cow") }

// MAC is the address of node's eth<i>: the one lab.conf gives, else one
// derived from the lab's name, the node and the interface, so that it is
// the same on every start and wherever the lab is copied (ltest
// signatures show it).
func (l *Lab) MAC(node string, i int) string {
	if n := l.Node(node); n != nil && i < len(n.Interfaces) && n.Interfaces[i].MAC != "" {
		return n.Interfaces[i].MAC
	}
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%d", l.Name(), node, i)))
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3], h[4])
}

// lock takes the lab's lock file (DIR/.umlkit/lock). With wait it polls
// until ctx ends; without, a held lock is ErrBusy.
func (l *Lab) lock(ctx context.Context, wait bool) (func(), error) {
	if err := os.MkdirAll(l.StateDir(), 0o755); err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.Dir, err)
	}
	path := filepath.Join(l.StateDir(), "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.Dir, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !wait {
			b, _ := os.ReadFile(path)
			f.Close()
			return nil, fmt.Errorf("lab %s: %w: another umlkit (pid %s) is starting or stopping it; wait for it to finish, then run this again", l.Dir, ErrBusy, strings.TrimSpace(string(b)))
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	f.Truncate(0)
	f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return func() { f.Truncate(0); f.Close() }, nil
}

// NodeState is what the lab remembers of a node between commands.
type NodeState struct {
	// Prepared: the lab directory, tree, shared/, sysctls and startup
	// script were done (a node interrupted before is prepared on the next up).
	Prepared     bool   `json:"prepared"`
	StartupExit  *int   `json:"startup_exit,omitempty"`
	StartupError string `json:"startup_error,omitempty"`
}

type labState struct {
	Nodes map[string]NodeState `json:"nodes"`
}

func (l *Lab) statePath() string { return filepath.Join(l.StateDir(), "state.json") }

func (l *Lab) readState() labState {
	var s labState
	if b, err := os.ReadFile(l.statePath()); err == nil {
		json.Unmarshal(b, &s)
	}
	if s.Nodes == nil {
		s.Nodes = map[string]NodeState{}
	}
	return s
}

func (l *Lab) writeState(s labState) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := l.statePath() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, l.statePath())
}

// UpResult is what Up did for one node.
type UpResult struct {
	Node     string
	Started  bool   // false: it was already running
	Prepared bool   // its files and startup script were done now
	Err      error  // the instance did not start
	Startup  *int   // the startup script's exit status, when it ran
	Output   string // the startup script's output
}

// selectNodes returns the named nodes (all when names is empty).
func (l *Lab) selectNodes(names []string) (map[string]bool, error) {
	sel := map[string]bool{}
	if len(names) == 0 {
		for _, n := range l.Nodes {
			sel[n.Name] = true
		}
		return sel, nil
	}
	for _, name := range names {
		if l.Node(name) == nil {
			return nil, fmt.Errorf("lab %s has no device %s (it has %s)", l.Dir, name, strings.Join(l.names(), ", "))
		}
		sel[name] = true
	}
	return sel, nil
}

// Up starts the lab's switches and the nodes named (all when none are),
// level by level in lab.dep order, the nodes of a level in parallel; then
// each node's files and startup script. Nodes already running are left
// alone. A node that fails to start or whose startup script fails is
// reported in its result and the others go on; the error is for the lab
// as a whole (its lock, its switches, a cancelled ctx).
func Up(ctx context.Context, l *Lab, names []string, o Options) ([]UpResult, error) {
	sel, err := l.selectNodes(names)
	if err != nil {
		return nil, err
	}
	if err := l.checkBridged(sel); err != nil {
		return nil, err
	}
	if strings.ContainsAny(l.Dir, ", ") {
		return nil, fmt.Errorf("lab %s: the kernel's hostfs= cannot take a path with a comma or a space: move or rename the lab directory", l.Dir)
	}
	unlock, err := l.lock(ctx, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	exe, err := o.exe()
	if err != nil {
		return nil, err
	}
	for _, d := range l.Domains {
		used := false
		for _, e := range d.Links {
			used = used || sel[e.Node]
		}
		if !used {
			continue
		}
		if err := l.startSwitch(ctx, d, exe); err != nil {
			return nil, err
		}
	}
	resolve := o.Image
	if resolve == nil {
		resolve = func(ctx context.Context, name string) (string, error) { return ResolveImage(ctx, name, exe) }
	}
	var (
		mu      sync.Mutex
		results []UpResult
	)
	state := l.readState()
	for _, level := range l.Levels {
		var wg sync.WaitGroup
		for _, name := range level {
			if !sel[name] {
				continue
			}
			wg.Add(1)
			go func(n *Node) {
				defer wg.Done()
				mu.Lock()
				prepared := state.Nodes[n.Name].Prepared
				mu.Unlock()
				r := l.upNode(ctx, n, prepared, exe, resolve, &o)
				mu.Lock()
				results = append(results, r)
				if r.Started || r.Prepared {
					ns := NodeState{StartupExit: r.Startup, Prepared: r.Err == nil}
					if r.Err != nil {
						ns.StartupError = r.Err.Error()
					}
					state.Nodes[n.Name] = ns
				}
				mu.Unlock()
			}(l.Node(name))
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			l.writeState(state)
			return results, fmt.Errorf("lab %s: interrupted; what started is running (umlkit lab status shows it, umlkit lab down stops it): %w", l.Dir, err)
		}
	}
	if err := l.writeState(state); err != nil {
		return results, err
	}
	return results, nil
}

func (l *Lab) upNode(ctx context.Context, n *Node, prepared bool, exe string, resolve func(context.Context, string) (string, error), o *Options) UpResult {
	r := UpResult{Node: n.Name}
	inst := l.Instance(n.Name)
	if in, err := machine.Get(inst); err == nil && in.State.Live() {
		if prepared {
			return r
		}
		// Started by an up that was interrupted: wait for it, then finish.
		if err := waitRunning(ctx, inst, 2*time.Minute); err != nil {
			r.Err = fmt.Errorf("device %s: %w", n.Name, err)
			return r
		}
		return l.finishNode(ctx, n, r, o)
	}
	img, err := resolve(ctx, n.Image)
	if err != nil {
		r.Err = fmt.Errorf("device %s: %w", n.Name, err)
		return r
	}
	mem := n.Mem
	if mem == 0 {
		mem = 64
	}
	args := []string{
		"ubd0=" + l.COW(n.Name) + "," + img,
		fmt.Sprintf("mem=%dM", mem),
		"hostname=" + n.Name,
		"hostfs=" + l.Dir,
	}
	for i, ifc := range n.Interfaces {
		args = append(args, fmt.Sprintf("vec%d:transport=bess,dst=%s,mac=%s", i, l.bessPath(ifc.Domain), l.MAC(n.Name, i)))
	}
	if n.Bridged {
		// After the lab.conf NICs, so that eth0.. stay as the lab says.
		bl, fwd, err := l.setupBridge(n.Name)
		if err != nil {
			r.Err = fmt.Errorf("device %s: connect it to the host: %w", n.Name, err)
			o.progress("%s: failed: %v", n.Name, r.Err)
			return r
		}
		k := len(n.Interfaces)
		args = append(args, fmt.Sprintf("eth%d=tuntap,%s,%s", k, bl.Tap, l.MAC(n.Name, k)))
		o.progress("%s: eth%d bridged to the host through %s (host %s, node %s)", n.Name, k, bl.Tap, bl.Host, bl.Guest)
		if fwd {
			o.progress("host: net.ipv4.ip_forward turned on for bridged nodes (lab down turns it off again)")
		}
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	o.progress("%s: booting", n.Name)
	t0 := time.Now()
	if _, err := machine.Start(ctx, machine.StartOptions{Name: inst, Args: args, Dir: l.StateDir(), Exe: exe, Timeout: timeout}); err != nil {
		r.Err = fmt.Errorf("device %s: %w", n.Name, err)
		if n.Bridged {
			if in, gerr := machine.Get(inst); gerr != nil || !in.State.Live() {
				teardownBridge(l.TapName(n.Name))
			}
		}
		o.progress("%s: failed: %v", n.Name, err)
		return r
	}
	r.Started = true
	o.progress("%s: ready in %.1fs", n.Name, time.Since(t0).Seconds())
	return l.finishNode(ctx, n, r, o)
}

// finishNode prepares a running node and runs its startup script.
func (l *Lab) finishNode(ctx context.Context, n *Node, r UpResult, o *Options) UpResult {
	r.Prepared = true
	code, out, err := l.prepareNode(ctx, n)
	r.Output = out
	if err != nil {
		r.Err = fmt.Errorf("device %s: %w", n.Name, err)
		o.progress("%s: %v", n.Name, r.Err)
		return r
	}
	if n.Startup != "" {
		r.Startup = &code
		if code != 0 {
			o.progress("%s: %s exited %d", n.Name, n.Startup, code)
		} else {
			o.progress("%s: %s done", n.Name, n.Startup)
		}
	}
	os.WriteFile(filepath.Join(l.StateDir(), n.Name+".startup.log"), []byte(out), 0o644)
	return r
}

// GuestLab is where the lab directory is mounted in every node.
const GuestLab = "/hostlab"

// prepareNode mounts the lab directory in the node, copies its tree over
// /, mounts shared/, sets its sysctls and runs its startup script, whose
// exit status and output it returns.
func (l *Lab) prepareNode(ctx context.Context, n *Node) (int, string, error) {
	var sh strings.Builder
	fmt.Fprintf(&sh, "grep -q ' %s ' /proc/mounts || { mkdir -p %s && mount -t hostfs none %s; } || exit 100\n", GuestLab, GuestLab, GuestLab)
	if n.Tree != "" {
		fmt.Fprintf(&sh, "cp -a %s/%s/. / || exit 101\n", GuestLab, shq(n.Tree))
	}
	if l.Shared {
		fmt.Fprintf(&sh, "grep -q ' /shared ' /proc/mounts || { mkdir -p /shared && mount -o bind %s/shared /shared; } || exit 102\n", GuestLab)
	}
	// The lab directory itself is read-only in the guest; shared/ is not.
	fmt.Fprintf(&sh, "mount -o remount,bind,ro %s 2>/dev/null\n", GuestLab)
	if n.IPv6 != nil {
		v := "1"
		if *n.IPv6 {
			v = "0"
		}
		fmt.Fprintf(&sh, "echo %s 2>/dev/null >/proc/sys/net/ipv6/conf/all/disable_ipv6\n", v)
	}
	// Written to /proc/sys rather than with sysctl(8): minimal Debian
	// images have no procps.
	for _, s := range n.Sysctls {
		k, v, _ := strings.Cut(s, "=")
		fmt.Fprintf(&sh, "echo %s >%s || exit 103\n", shq(v), shq("/proc/sys/"+strings.ReplaceAll(k, ".", "/")))
	}
	dev := fmt.Sprintf("eth%d", len(n.Interfaces))
	if n.Bridged {
		bl, err := l.bridgeOf(n.Name)
		if err != nil {
			return 0, "", err
		}
		sh.WriteString(bridgeScript(dev, bl))
	}
	setup, err := l.guestRun(ctx, n.Name, sh.String(), nil, 60*time.Second)
	if err != nil {
		return 0, "", err
	}
	if setup.code != 0 {
		what := map[int]string{100: "mounting the lab directory through hostfs", 101: "copying " + n.Tree + "/ over /", 102: "mounting shared/", 103: "setting its sysctls", 104: "configuring " + dev + ", its link to the host"}[setup.code]
		if what == "" {
			what = "preparing it"
		}
		return 0, setup.out, fmt.Errorf("%s failed (exit %d): %s", what, setup.code, strings.TrimSpace(setup.out))
	}
	if n.Startup == "" {
		return 0, "", nil
	}
	res, err := l.guestRun(ctx, n.Name, "exec /bin/sh "+GuestLab+"/"+shq(n.Startup)+" 2>&1", n.Env, 5*time.Minute)
	if err != nil {
		return 0, "", err
	}
	return res.code, res.out, nil
}

type guestResult struct {
	code int
	out  string
}

// guestRun runs a shell script in node through the exec agent.
func (l *Lab) guestRun(ctx context.Context, node, script string, env []string, timeout time.Duration) (guestResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := machine.Agent(ctx, l.Instance(node))
	if err != nil {
		return guestResult{}, err
	}
	defer c.Close()
	var out syncio.Buffer // stdout and stderr, as the agent delivers them
	cmd := agent.Cmd{Argv: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &out}
	cmd.Env = env
	st, err := c.Run(ctx, cmd)
	if err != nil {
		return guestResult{}, fmt.Errorf("run in %s: %w", node, err)
	}
	if st.Error != "" {
		return guestResult{code: st.Code, out: st.Error}, nil
	}
	return guestResult{code: st.Code, out: out.String()}, nil
}

// shq quotes s for the shell.
func shq(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-/=:", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Exec runs a shell command line in node and returns its exit status and
// combined output.
func Exec(ctx context.Context, l *Lab, node, command string, timeout time.Duration) (int, string, error) {
	if l.Node(node) == nil {
		return 0, "", fmt.Errorf("lab %s has no device %s (it has %s)", l.Dir, node, strings.Join(l.names(), ", "))
	}
	r, err := l.guestRun(ctx, node, command, l.Node(node).Env, timeout)
	return r.code, r.out, err
}

// Down runs the shutdown scripts of the running nodes named (all when none
// are), stops them (in reverse lab.dep order), and, when the whole lab is
// down, its switches. With wipe it also removes the COW files. Stopping a
// lab that is not running is not an error.
func Down(ctx context.Context, l *Lab, names []string, wipe bool, o Options) error {
	return l.stop(ctx, names, wipe, false, o)
}

// Crash kills the nodes at once, like Netkit's lcrash: no shutdown scripts,
// no clean halt.
func Crash(ctx context.Context, l *Lab, names []string, wipe bool, o Options) error {
	return l.stop(ctx, names, wipe, true, o)
}

func (l *Lab) stop(ctx context.Context, names []string, wipe, crash bool, o Options) error {
	sel, err := l.selectNodes(names)
	if err != nil {
		return err
	}
	unlock, err := l.lock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	var mu sync.Mutex
	live := func(name string) bool {
		in, err := machine.Get(l.Instance(name))
		return err == nil && in.State.Live()
	}
	// Shutdown scripts run in reverse lab.dep order, a level at a time.
	for i := len(l.Levels) - 1; i >= 0 && !crash; i-- {
		var wg sync.WaitGroup
		for _, name := range l.Levels[i] {
			n := l.Node(name)
			if !sel[name] || !live(name) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				script := "sync; umount /shared 2>/dev/null; umount " + GuestLab + " 2>/dev/null; true"
				if n.Shutdown != "" {
					r, err := l.guestRun(ctx, n.Name, "/bin/sh "+GuestLab+"/"+shq(n.Shutdown)+" 2>&1", n.Env, 30*time.Second)
					if err != nil || r.code != 0 {
						o.progress("%s: %s failed (exit %d%s): %s", n.Name, n.Shutdown, r.code, errText(err), strings.TrimSpace(r.out))
					}
				}
				// hostfs writes reach the host at once; unmount so none is pending.
				l.guestRun(ctx, n.Name, script, nil, 10*time.Second)
			}()
		}
		wg.Wait()
	}
	var wg sync.WaitGroup
	for _, n := range l.Nodes {
		if !sel[n.Name] || !live(n.Name) {
			continue
		}
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			var err error
			if crash {
				err = machine.Kill(ctx, l.Instance(n.Name))
				o.progress("%s: killed", n.Name)
			} else {
				err = machine.Stop(ctx, l.Instance(n.Name), 10*time.Second)
				o.progress("%s: stopped", n.Name)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("device %s: %w", n.Name, err))
				mu.Unlock()
			}
		}(n)
	}
	wg.Wait()
	state := l.readState()
	for name := range sel {
		delete(state.Nodes, name)
		// After a clean stop the instance's record goes too (umlkit vm list
		// no longer shows it); after a crash it stays for a post-mortem
		// until lab clean.
		if !crash && !live(name) {
			os.RemoveAll(machine.PathsOf(l.Instance(name)).Dir)
		}
	}
	l.writeState(state)
	// A bridged node's TAP and NAT rule go with it, after a crash too;
	// forwarding with the lab's last bridged node.
	bridgedLive := false
	for _, n := range l.Nodes {
		if !n.Bridged {
			continue
		}
		if sel[n.Name] && !live(n.Name) {
			if err := teardownBridge(l.TapName(n.Name)); err != nil {
				errs = append(errs, fmt.Errorf("device %s: %w", n.Name, err))
			}
		}
		bridgedLive = bridgedLive || live(n.Name)
	}
	anyLive := false
	for _, n := range l.Nodes {
		if in, err := machine.Get(l.Instance(n.Name)); err == nil && in.State.Live() {
			anyLive = true
		}
	}
	if !anyLive {
		var wg sync.WaitGroup
		for _, d := range l.Domains {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := l.stopSwitch(d); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		os.RemoveAll(l.RunDir())
		if err := l.sweepBridges(live); err != nil {
			errs = append(errs, err)
		}
	}
	if !bridgedLive && l.usesBridges() {
		msg, err := l.releaseForwarding()
		if msg != "" {
			o.progress("%s", msg)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if wipe {
		for name := range sel {
			if in, err := machine.Get(l.Instance(name)); err == nil && in.State.Live() {
				continue
			}
			os.Remove(l.COW(name))
			os.RemoveAll(machine.PathsOf(l.Instance(name)).Dir)
		}
	}
	return errors.Join(errs...)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return ", " + err.Error()
}

// Clean removes what running the lab left behind, like Netkit's lclean:
// COW files, logs, state, the instances' records and _test/results. It
// refuses while a node runs.
func Clean(ctx context.Context, l *Lab) error {
	unlock, err := l.lock(ctx, true)
	if err != nil {
		return err
	}
	var live []string
	for _, n := range l.Nodes {
		if in, err := machine.Get(l.Instance(n.Name)); err == nil && in.State.Live() {
			live = append(live, n.Name)
		}
	}
	if len(live) > 0 {
		unlock()
		return fmt.Errorf("lab %s: %s still running: stop them first with umlkit lab down (or lab crash)", l.Dir, strings.Join(live, ", "))
	}
	for _, n := range l.Nodes {
		os.RemoveAll(machine.PathsOf(l.Instance(n.Name)).Dir)
	}
	for _, d := range l.Domains {
		l.stopSwitch(d)
	}
	os.RemoveAll(l.RunDir())
	os.RemoveAll(filepath.Join(l.Dir, "_test", "results"))
	bridgeErr := l.sweepBridges(func(string) bool { return false })
	var fwdErr error
	if l.usesBridges() {
		_, fwdErr = l.releaseForwarding()
	}
	unlock()
	return errors.Join(bridgeErr, fwdErr, os.RemoveAll(l.StateDir()))
}

// NodeStatus is a node as Status reports it.
type NodeStatus struct {
	Node       string            `json:"node"`
	Instance   string            `json:"instance"`
	State      string            `json:"state"` // machine status, or "stopped"
	PID        int               `json:"pid,omitempty"`
	Domains    []string          `json:"domains"`           // eth<i> on Domains[i]
	Bridged    string            `json:"bridged,omitempty"` // host TAP of eth<len(Domains)>
	Addresses  map[string]string `json:"addresses,omitempty"`
	Startup    string            `json:"startup,omitempty"` // "ok", "exit N", "" when none ran
	Panic      string            `json:"panic,omitempty"`
	Error      string            `json:"error,omitempty"`
	StartupLog string            `json:"-"`
}

// Status reports every node; with addresses it asks each running guest
// for its IPv4 addresses.
func Status(ctx context.Context, l *Lab, addresses bool) []NodeStatus {
	state := l.readState()
	out := make([]NodeStatus, len(l.Nodes))
	var wg sync.WaitGroup
	for i, n := range l.Nodes {
		wg.Add(1)
		go func(i int, n *Node) {
			defer wg.Done()
			s := NodeStatus{Node: n.Name, Instance: l.Instance(n.Name), State: "stopped", Domains: []string{}}
			for _, ifc := range n.Interfaces {
				s.Domains = append(s.Domains, ifc.Domain)
			}
			if n.Bridged {
				s.Bridged = l.TapName(n.Name)
			}
			if in, err := machine.Get(s.Instance); err == nil {
				s.State, s.PID, s.Panic, s.Error = string(in.State.Status), in.State.PID, in.State.Panic, in.State.Error
				if in.State.Live() {
					ns := state.Nodes[n.Name]
					switch {
					case ns.StartupError != "":
						s.Startup = "error"
						s.Error = ns.StartupError
					case ns.StartupExit != nil && *ns.StartupExit == 0:
						s.Startup = "ok"
					case ns.StartupExit != nil:
						s.Startup = fmt.Sprintf("exit %d", *ns.StartupExit)
					}
					if addresses && in.State.Status == machine.Running {
						if r, err := l.guestRun(ctx, n.Name, "ip -4 addr show", nil, 5*time.Second); err == nil && r.code == 0 {
							s.Addresses = parseAddrs(r.out)
						}
					}
				}
			}
			out[i] = s
		}(i, n)
	}
	wg.Wait()
	return out
}

// parseAddrs reads `ip -4 addr show` output into device: addresses.
func parseAddrs(text string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "inet" && !strings.HasPrefix(f[1], "127.") {
			dev := f[len(f)-1]
			if m[dev] != "" {
				m[dev] += ","
			}
			m[dev] += f[1]
		}
	}
	return m
}

// FormatStatus writes a status table.
func FormatStatus(w io.Writer, sts []NodeStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "NODE\tSTATE\tDOMAINS\tADDRESSES\tSTARTUP")
	for _, s := range sts {
		var doms []string
		for i, d := range s.Domains {
			doms = append(doms, fmt.Sprintf("eth%d:%s", i, d))
		}
		if s.Bridged != "" {
			doms = append(doms, fmt.Sprintf("eth%d:host(%s)", len(s.Domains), s.Bridged))
		}
		var addrs []string
		for _, k := range sortedKeys(s.Addresses) {
			addrs = append(addrs, k+"="+s.Addresses[k])
		}
		startup := s.Startup
		if s.Panic != "" {
			startup = "panic: " + s.Panic
		} else if s.Error != "" {
			startup = strings.TrimSpace(startup + " " + s.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Node, s.State, dash(strings.Join(doms, " ")), dash(strings.Join(addrs, " ")), dash(startup))
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// waitRunning waits until the instance's guest is ready.
func waitRunning(ctx context.Context, inst string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		in, err := machine.Get(inst)
		if err != nil {
			return err
		}
		switch {
		case in.State.Status == machine.Running:
			return nil
		case !in.State.Live():
			return fmt.Errorf("instance %s %s during boot: umlkit vm logs %s shows why", inst, in.State.Status, inst)
		case time.Now().After(deadline):
			return fmt.Errorf("instance %s not ready within %v: umlkit vm logs %s shows the console", inst, timeout, inst)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
