package guest

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/umltest"
)

func TestMain(m *testing.M) { umltest.Main(m) }

func TestParseCmdline(t *testing.T) {
	cl := ParseCmdline("ubd0=a.cow,a mem=64M hostname=r1 umlkit.ip=eth0:10.0.0.1/24 umlkit.ip=eth1:10.0.1.1/24 quiet root=98:0\n")
	if got := cl.Get("hostname", "x"); got != "r1" {
		t.Errorf("Get(hostname) = %q, want r1", got)
	}
	if got := cl[ParamAddr]; !cmp.Equal(got, []string{"eth0:10.0.0.1/24", "eth1:10.0.1.1/24"}) {
		t.Errorf("%s = %q", ParamAddr, got)
	}
	if got := cl.Get("missing", "def"); got != "def" {
		t.Errorf("Get(missing) = %q, want def", got)
	}
	if _, ok := cl["quiet"]; !ok {
		t.Error("flag without '=' lost")
	}
}

// bessPeer listens where a vector NIC connects, so that the NIC comes up.
func bessPeer(t *testing.T) string {
	t.Helper()
	p := filepath.Join(umltest.ShortDir(t), "bess")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: p, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return p
}

// umlkit is the image's init: hostname, vec0 renamed to eth0 with the
// address from the command line, the ready marker, and the exec agent on
// ttyS1 with exit codes, separate stdout and stderr, stdin, a terminal,
// and several commands at once.
func TestInitAndAgent(t *testing.T) {
	vm := umltest.Boot(t, umltest.Options{Umid: "g1", Image: umltest.AgentImage(t), Agent: true,
		Args: []string{"hostname=g1", "vec0:transport=bess,dst=" + bessPeer(t), "umlkit.ip=eth0:10.3.0.1/24"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, vm.AgentConn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Hostname() != "g1" {
		t.Errorf("agent hostname = %q, want g1", c.Hostname())
	}
	run := func(cmd agent.Cmd) (string, string, agent.ExitStatus) {
		t.Helper()
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		st, err := c.Run(ctx, cmd)
		if err != nil {
			t.Fatalf("Run(%q): %v", cmd.Argv, err)
		}
		return out.String(), errb.String(), st
	}
	if out, _, st := run(agent.Cmd{Argv: []string{"uname", "-r"}}); st.Code != 0 || !strings.HasPrefix(out, "6.") {
		t.Errorf("uname -r = %q, %+v", out, st)
	}
	if out, errOut, st := run(agent.Cmd{Argv: []string{"sh", "-c", "echo o; echo e >&2; exit 42"}}); out != "o\n" || errOut != "e\n" || st.Code != 42 {
		t.Errorf("sh exit 42 = %q, %q, %+v", out, errOut, st)
	}
	if _, _, st := run(agent.Cmd{Argv: []string{"/no/such/program"}}); st.Code != 127 {
		t.Errorf("missing program = %+v, want 127", st)
	}
	// 128 KiB through the serial line both ways, NULs included.
	data := strings.Repeat("0123456789abcde\x00", 4096) + strings.Repeat("\x00", 64<<10)
	if out, _, st := run(agent.Cmd{Argv: []string{"cat"}, Stdin: strings.NewReader(data)}); st.Code != 0 || out != data {
		t.Errorf("cat of 128 KiB: status %+v, %d bytes back, equal=%v", st, len(out), out == data)
	}
	if out, _, st := run(agent.Cmd{Argv: []string{"ip", "-o", "-4", "addr", "show", "eth0"}}); st.Code != 0 || !strings.Contains(out, "10.3.0.1/24") {
		t.Errorf("eth0 in the guest = %q, %+v; want vec0 renamed to eth0 with 10.3.0.1/24", out, st)
	}
	if out, _, st := run(agent.Cmd{Argv: []string{"sh", "-c", "tty && stty size"}, TTY: true, Rows: 40, Cols: 120}); st.Code != 0 || !strings.Contains(out, "40 120") {
		t.Errorf("tty session = %q, %+v", out, st)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			st, err := c.Run(ctx, agent.Cmd{Argv: []string{"sh", "-c", "sleep 0.2; hostname"}, Stdout: &out})
			if err != nil || st.Code != 0 || out.String() != "g1\n" {
				t.Errorf("concurrent hostname = %q, %+v, %v", out.String(), st, err)
			}
		}()
	}
	wg.Wait()
	// poweroff (busybox, no -f) signals init, which powers the instance off.
	c.Start(agent.Cmd{Argv: []string{"poweroff"}})
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatalf("instance after poweroff: %v", err)
	}
}
