package preflight

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/machine/cmdline"
	"github.com/umlkit/umlkit/internal/umltest"
)

// envLockHelper makes the test binary a process that holds a write lock
// on a file, the way a running kernel does, until its stdin closes.
const envLockHelper = "PREFLIGHT_TEST_LOCK"

func TestMain(m *testing.M) {
	if path := os.Getenv(envLockHelper); path != "" {
		holdLock(path)
		return
	}
	umltest.Main(m)
}

func holdLock(path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("locked")
	bufio.NewReader(os.Stdin).ReadString('\n')
	os.Exit(0)
}

// lockFile starts a helper process that write-locks path; it returns the
// helper's pid and unlocks when the test ends.
func lockFile(t *testing.T, path string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envLockHelper+"="+path)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("lock helper: %q", line)
	}
	return cmd.Process.Pid
}

// env is a working directory and a uml_dir for one test.
type env struct {
	dir, umlDir string
	opts        Options
}

func newEnv(t *testing.T) *env {
	e := &env{dir: t.TempDir(), umlDir: umltest.ShortDir(t) + "/"}
	e.opts = Options{Dir: e.dir, Home: e.dir}
	return e
}

func (e *env) file(t *testing.T, name string, size int) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) check(t *testing.T, args ...string) *Report {
	t.Helper()
	_, r := CheckArgs(context.Background(), append(args, "uml_dir="+e.umlDir), e.opts)
	for _, p := range r.Problems {
		t.Logf("%s %s: %s", p.Severity, p.Check, p.Error())
	}
	return r
}

// only asserts that r has exactly one problem, wrapping want, and that its
// message contains each of texts.
func only(t *testing.T, r *Report, want error, texts ...string) *Problem {
	t.Helper()
	if len(r.Problems) != 1 {
		t.Fatalf("got %d problems %v, want one wrapping %v", len(r.Problems), r.Problems, want)
	}
	p := r.Problems[0]
	if !errors.Is(p, want) {
		t.Fatalf("problem %v does not wrap %v", p, want)
	}
	for _, s := range texts {
		if !strings.Contains(p.Error(), s) {
			t.Errorf("problem %q does not say %q", p.Error(), s)
		}
	}
	return p
}

func TestClean(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 1<<20)
	if r := e.check(t, "ubd0=uml1.cow,root_fs", "mem=64M", "umid=uml1"); len(r.Problems) != 0 || !r.OK() {
		t.Errorf("problems for a good command line: %v", r.Problems)
	}
}

func TestDefaultRootMissing(t *testing.T) {
	e := newEnv(t)
	r := e.check(t, "mem=64M")
	only(t, r, ErrMissing, "no ubd0=", filepath.Join(e.dir, "root_fs"), "panic", "ubd0=IMAGE")
	if r.OK() {
		t.Error("OK() with a missing root disk")
	}
}

func TestDiskMissing(t *testing.T) {
	e := newEnv(t)
	only(t, e.check(t, "ubd0=nothere.img"), ErrMissing, "root disk", "nothere.img")
	e.file(t, "root.img", 4096)
	only(t, e.check(t, "ubd0=root.img", "ubd1=data.img"), ErrMissing, "disk ubd1", "data.img")
	only(t, e.check(t, "ubd0=x.cow,nothere.img"), ErrMissing, "backing file", "nothere.img")
	only(t, e.check(t, "ubd0=nodir/x.cow,root.img"), ErrMissing, "cannot create COW file", "mkdir -p")
}

func TestSyntaxProblems(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 4096)
	r := e.check(t, "ubd16=x", "mem=64MB", "eth0=pcap", "con0=x-terminal-emulator", "vec0:transport=vde")
	if len(r.Problems) != 5 {
		t.Fatalf("got %d problems, want 5", len(r.Problems))
	}
	for i, want := range []error{cmdline.ErrOutOfRange, cmdline.ErrSyntax, cmdline.ErrUnknownTransport, cmdline.ErrUnknownChannel, cmdline.ErrUnknownTransport} {
		var ae *cmdline.ArgError
		if p := r.Problems[i]; !errors.Is(p, want) || !errors.As(p, &ae) || p.Fix == "" || p.Check != "syntax" {
			t.Errorf("problem %d = %v, want a syntax problem wrapping %v with a fix", i, p, want)
		}
	}
}

// A ubd0= with a mistake is one problem, not also a missing ./root_fs.
func TestBadRootArg(t *testing.T) {
	e := newEnv(t)
	only(t, e.check(t, "ubd0=,root.img"), cmdline.ErrSyntax, "no file")
}

func TestLowMemory(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 4096)
	r := e.check(t, "mem=32M")
	p := only(t, r, ErrLowMemory, "deadlocked on memory", "mem=64M")
	if p.Severity != Warning || !r.OK() {
		t.Errorf("low memory: severity %s, OK %v; want a warning that does not stop the boot", p.Severity, r.OK())
	}
}

func TestEmptyAndForeignCOW(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 1<<20)
	e.file(t, "empty.cow", 0)
	only(t, e.check(t, "ubd0=empty.cow,root_fs"), ErrEmptyCOW, "is empty", "rm "+filepath.Join(e.dir, "empty.cow"))
	e.file(t, "short.cow", 100)
	os.WriteFile(filepath.Join(e.dir, "short.cow"), []byte("OOOM\x00\x00\x00\x03"), 0o644)
	only(t, e.check(t, "ubd0=short.cow,root_fs"), ErrEmptyCOW, "only 8 bytes")
	e.file(t, "plain.img", 8192)
	only(t, e.check(t, "ubd0=plain.img,root_fs"), ErrNotCOW, "not a COW file")
}

// mkcow makes a COW file with the real uml_mkcow.
func mkcow(t *testing.T, dir, cow, backing string) {
	t.Helper()
	cmd := exec.Command("uml_mkcow", cow, backing)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		if umltest.Required() {
			t.Fatalf("uml_mkcow: %v %s (install uml-utilities)", err, out)
		}
		t.Skipf("uml_mkcow: %v (install uml-utilities)", err)
	}
}

func TestStaleCOW(t *testing.T) {
	e := newEnv(t)
	img := e.file(t, "root_fs", 1<<20)
	mkcow(t, e.dir, "a.cow", "root_fs")
	if r := e.check(t, "ubd0=a.cow,root_fs"); len(r.Problems) != 0 {
		t.Fatalf("fresh COW file: %v", r.Problems)
	}
	// The COW file alone finds its backing file through the header.
	if r := e.check(t, "ubd0=a.cow"); len(r.Problems) != 0 {
		t.Fatalf("COW file alone: %v", r.Problems)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(img, later, later); err != nil {
		t.Fatal(err)
	}
	only(t, e.check(t, "ubd0=a.cow,root_fs"), ErrBackingChanged, "mtime mismatch", "umlkit cow rebase")
	only(t, e.check(t, "ubd0=a.cow"), ErrBackingChanged, "mtime mismatch")
	if err := os.Truncate(img, 2<<20); err != nil {
		t.Fatal(err)
	}
	only(t, e.check(t, "ubd0=a.cow,root_fs"), ErrBackingChanged, "size mismatch", "2097152", "1048576")
}

// A COW file's backing file may be given under another path (the image
// moved): the kernel switches to it when size and mtime match.
func TestMovedBacking(t *testing.T) {
	e := newEnv(t)
	img := e.file(t, "root_fs", 1<<20)
	mkcow(t, e.dir, "a.cow", "root_fs")
	st, _ := os.Stat(img)
	moved := filepath.Join(e.dir, "moved.img")
	if err := os.Rename(img, moved); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(moved, st.ModTime(), st.ModTime())
	if r := e.check(t, "ubd0=a.cow,moved.img"); len(r.Problems) != 0 {
		t.Errorf("moved backing file with the same size and mtime: %v", r.Problems)
	}
	only(t, e.check(t, "ubd0=a.cow"), ErrMissing, "not there", "umlkit cow rebase")
}

func TestLocked(t *testing.T) {
	e := newEnv(t)
	img := e.file(t, "root.img", 1<<20)
	pid := lockFile(t, img)
	// A pid file naming the lock holder, as a running kernel leaves.
	os.MkdirAll(filepath.Join(e.umlDir, "first"), 0o755)
	os.WriteFile(filepath.Join(e.umlDir, "first", "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644)

	p := only(t, e.check(t, "ubd0=root.img"), ErrLocked, "instance first", fmt.Sprintf("pid %d", pid), "F_SETLK", "ubd0=NAME.cow,"+img)
	if p.PID != pid || p.Umid != "first" {
		t.Errorf("problem PID, Umid = %d, %q; want %d, first", p.PID, p.Umid, pid)
	}
	// Through a COW file the image is only read-locked, which a writer
	// still blocks.
	only(t, e.check(t, "ubd0=x.cow,root.img"), ErrLocked, "cannot be the backing file", "stop instance first")
	// With the c flag the kernel takes no lock.
	if r := e.check(t, "ubd0c=root.img"); len(r.Problems) != 0 {
		t.Errorf("c flag: %v", r.Problems)
	}
}

func TestDiskTwice(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root.img", 1<<20)
	mkcow(t, e.dir, "a.cow", "root.img")
	only(t, e.check(t, "ubd0=a.cow,root.img", "ubd1=a.cow"), ErrLocked, "ubd0 and ubd1 both open", "a.cow")
	only(t, e.check(t, "ubd0=a.cow,root.img", "ubd1=root.img"), ErrLocked, "ubd0 and ubd1 both open", "root.img")
	// Reading the image twice is fine.
	if r := e.check(t, "ubd0=a.cow,root.img", "ubd1r=root.img"); len(r.Problems) != 0 {
		t.Errorf("read-only twice: %v", r.Problems)
	}
}

func TestUmidInUse(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 4096)
	os.MkdirAll(filepath.Join(e.umlDir, "busy"), 0o755)
	os.WriteFile(filepath.Join(e.umlDir, "busy", "pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	p := only(t, e.check(t, "umid=busy"), ErrUmidInUse, "busy", "random umid", "pick another umid=")
	if p.PID != os.Getpid() {
		t.Errorf("PID = %d, want %d", p.PID, os.Getpid())
	}
	// A pid file left by a dead instance is taken over by the kernel.
	dead := exec.Command("true")
	dead.Run()
	os.MkdirAll(filepath.Join(e.umlDir, "stale"), 0o755)
	os.WriteFile(filepath.Join(e.umlDir, "stale", "pid"), []byte(strconv.Itoa(dead.Process.Pid)+"\n"), 0o644)
	if r := e.check(t, "umid=stale"); len(r.Problems) != 0 {
		t.Errorf("dead pid file: %v", r.Problems)
	}
}

func TestUMLDir(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 4096)
	// The kernel makes the last component itself.
	if _, r := CheckArgs(context.Background(), []string{"uml_dir=" + filepath.Join(e.dir, "new")}, e.opts); len(r.Problems) != 0 {
		t.Errorf("uml_dir with an existing parent: %v", r.Problems)
	}
	_, r := CheckArgs(context.Background(), []string{"uml_dir=" + filepath.Join(e.dir, "a", "b")}, e.opts)
	only(t, r, ErrUMLDir, "crash", "mkdir -p "+filepath.Join(e.dir, "a", "b")+"/")
	// The default is ~/.uml/ under Home.
	if got := e.opts.UMLDir(cmdline.MustParse()); got != e.dir+"/.uml/" {
		t.Errorf("default UMLDir = %q, want %q", got, e.dir+"/.uml/")
	}
	long := e.dir + "/" + strings.Repeat("d", 100)
	os.Mkdir(long, 0o755)
	_, r = CheckArgs(context.Background(), []string{"uml_dir=" + long, "umid=u1"}, e.opts)
	only(t, r, ErrSocketPath, "mconsole", "shorter uml_dir")
}

func listen(t *testing.T, network, path string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestSwitchSockets(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 4096)
	s := umltest.ShortDir(t)
	only(t, e.check(t, "vec0:transport=bess,dst="+s+"/none.sock"), ErrNoListener, "no such socket", "start the switch")
	only(t, e.check(t, "eth0=daemon,,unix,"+s+"/none.ctl"), ErrNoListener, "no such socket")

	listen(t, "unixpacket", s+"/bess.sock")
	listen(t, "unix", s+"/ctl")
	if r := e.check(t, "vec0:transport=bess,dst="+s+"/bess.sock", "eth0=daemon,,unix,"+s+"/ctl"); len(r.Problems) != 0 {
		t.Errorf("listening sockets: %v", r.Problems)
	}
	only(t, e.check(t, "vec0:transport=bess,dst="+s+"/ctl"), ErrNoListener, "another type", "SOCK_SEQPACKET", "ethN=daemon")

	// A socket file whose listener is gone.
	l, _ := net.Listen("unixpacket", s+"/stale.sock")
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	only(t, e.check(t, "vec0:transport=bess,dst="+s+"/stale.sock"), ErrNoListener, "stale socket")

	long := "/tmp/" + strings.Repeat("s", 110)
	only(t, e.check(t, "vec0:transport=bess,dst="+long), ErrSocketPath, "over the 107")
}

func TestNotifySocket(t *testing.T) {
	e := newEnv(t)
	e.file(t, "root_fs", 4096)
	s := umltest.ShortDir(t)
	r := e.check(t, "mconsole=notify:"+s+"/notify")
	if p := only(t, r, ErrNoListener, "readiness"); p.Severity != Warning {
		t.Errorf("notify severity %s, want warning", p.Severity)
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s + "/notify", Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := e.check(t, "mconsole=notify:"+s+"/notify"); len(r.Problems) != 0 {
		t.Errorf("bound notify socket: %v", r.Problems)
	}
}

// BenchmarkCheckSeed measures what the checks add before a boot, for the
// seed's command line with an existing COW file.
func BenchmarkCheckSeed(b *testing.B) {
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "root_fs"), make([]byte, 1<<20), 0o644)
	cmd := exec.Command("uml_mkcow", "root_fs1.cow", "root_fs")
	cmd.Dir = dir
	if err := cmd.Run(); err != nil {
		b.Skipf("uml_mkcow: %v", err)
	}
	args := []string{"ubd0=root_fs1.cow,root_fs", "mem=64M", "umid=uml1", "uml_dir=" + dir}
	opts := Options{Dir: dir}
	for b.Loop() {
		if _, r := CheckArgs(context.Background(), args, opts); len(r.Problems) != 0 {
			b.Fatal(r.Problems)
		}
	}
}
