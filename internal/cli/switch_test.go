package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/umlkit/umlkit/internal/syncio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umlkit/umlkit/vswitch"
)

func TestSwitchCommand(t *testing.T) {
	dir, err := os.MkdirTemp("", "swc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncio.Buffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"umlkit", "switch", "--dir", dir, "--no-keeper"}, IO{In: strings.NewReader(""), Out: &out, Err: &logs}, nil)
	}()
	bess := filepath.Join(dir, "bess")
	var conns []*net.UnixConn
	for i := 0; i < 2; i++ {
		var c *net.UnixConn
		for range 200 {
			if c, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: bess, Net: "unixpacket"}); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("dial %s: %v (output %q, logs %q)", bess, err, out.String(), logs.String())
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for range 250 {
		if st, err := (&vswitch.Client{Path: filepath.Join(dir, "mgmt")}).Stats(); err == nil && st.Ports == 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 0}, make([]byte, 46)...)
	conns[0].Write(frame)
	conns[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conns[1].Read(make([]byte, 100)); err != nil || n != len(frame) {
		t.Fatalf("second port read %d, %v; want the broadcast", n, err)
	}
	for _, s := range []string{"bess", "ctl", "mgmt"} {
		if fi, err := os.Stat(filepath.Join(dir, s)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket %s: %v, %v; want mode 0600", s, fi, err)
		}
	}

	so, se, code := runArgs(t, nil, "umlkit", "switch", "ports", "--dir", dir, "--json")
	var ps []vswitch.PortInfo
	if err := json.Unmarshal([]byte(so), &ps); err != nil || code != 0 || len(ps) != 2 || ps[0].RxFrames != 1 || ps[1].TxFrames != 1 {
		t.Fatalf("switch ports --json = %q, %q, %d; want two ports, one frame each way", so, se, code)
	}
	so, _, code = runArgs(t, nil, "umlkit", "switch", "ports", "--dir", dir)
	if code != 0 || !strings.Contains(so, "PORT") || !strings.Contains(so, "bess") {
		t.Errorf("switch ports = %q, %d; want a table", so, code)
	}
	so, _, code = runArgs(t, nil, "umlkit", "switch", "macs", "--dir", dir, "--json")
	var ms []vswitch.MACEntry
	if err := json.Unmarshal([]byte(so), &ms); err != nil || code != 0 || len(ms) != 1 || ms[0].MAC != "02:00:00:00:00:01" || ms[0].Port != 1 {
		t.Errorf("switch macs --json = %q, %d; want 02:00:00:00:00:01 on port 1", so, code)
	}
	if _, se, code = runArgs(t, nil, "umlkit", "switch", "vlan", "2", "7", "--dir", dir); code != 0 {
		t.Errorf("switch vlan 2 7: %d %q", code, se)
	}
	if _, se, code = runArgs(t, nil, "umlkit", "switch", "vlan", "9", "7", "--dir", dir); code != 1 || !strings.Contains(se, "port 9") {
		t.Errorf("switch vlan 9 7 = %d %q; want an error naming port 9", code, se)
	}
	if _, se, code = runArgs(t, nil, "umlkit", "switch", "hub", "on", "--dir", dir); code != 0 {
		t.Errorf("switch hub on: %d %q", code, se)
	}
	so, _, _ = runArgs(t, nil, "umlkit", "switch", "stats", "--dir", dir, "--json")
	var st vswitch.Stats
	if err := json.Unmarshal([]byte(so), &st); err != nil || !st.Hub || st.Ports != 2 || st.RxFrames != 1 {
		t.Errorf("switch stats --json = %q; want hub mode, 2 ports, 1 frame", so)
	}
	if _, se, code = runArgs(t, nil, "umlkit", "switch", "disconnect", "1", "--dir", dir); code != 0 {
		t.Errorf("switch disconnect 1: %d %q", code, se)
	}
	conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[0].Read(make([]byte, 100)); err == nil {
		t.Error("port 1 still open after disconnect")
	}

	// A second switch on the same sockets refuses to start.
	_, se, code = runArgs(t, nil, "umlkit", "switch", "--dir", dir, "--no-keeper")
	if code != 1 || !strings.Contains(se, "in use") {
		t.Errorf("second switch = %d %q; want a refusal", code, se)
	}

	cancel()
	if code := <-done; code != 0 {
		t.Errorf("switch exited %d; logs:\n%s", code, logs.String())
	}
	if !strings.Contains(logs.String(), "port connected") {
		t.Errorf("logs lack port events:\n%s", logs.String())
	}
	for _, s := range []string{"bess", "ctl", "mgmt"} {
		if _, err := os.Stat(filepath.Join(dir, s)); err == nil {
			t.Errorf("socket %s left behind", s)
		}
	}
	_, se, code = runArgs(t, nil, "umlkit", "switch", "ports", "--dir", dir)
	if code != 1 || !strings.Contains(se, "is `umlkit switch` running?") {
		t.Errorf("ports of a stopped switch = %d %q", code, se)
	}
}

// Invoked as uml_switch, umlkit takes its flags and serves the daemon
// protocol on -unix CTL.
func TestUMLSwitchTool(t *testing.T) {
	dir, err := os.MkdirTemp("", "usw")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctl := filepath.Join(dir, "ctl")
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncio.Buffer
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"/usr/local/bin/uml_switch", "-hub", "-unix", ctl}, IO{In: strings.NewReader(""), Out: &out, Err: &logs})
	}()
	var st vswitch.Stats
	for range 250 {
		if st, err = (&vswitch.Client{Path: ctl + ".mgmt"}).Stats(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || !st.Hub {
		t.Fatalf("stats of uml_switch -hub: %+v, %v (logs %s)", st, err, logs.String())
	}
	if c, err := net.Dial("unix", ctl); err != nil {
		t.Errorf("dial %s: %v", ctl, err)
	} else {
		c.Close()
	}
	cancel()
	if code := <-done; code != 0 || out.String() != "uml_switch attached to unix socket '"+ctl+"'\n" {
		t.Errorf("uml_switch = %d, %q", code, out.String())
	}
	_, se, code := runArgs(t, Tools(), "uml_switch", "-compat-v0")
	if code != 1 || !strings.Contains(se, "not supported") {
		t.Errorf("uml_switch -compat-v0 = %d %q", code, se)
	}
	if _, _, code := runArgs(t, Tools(), "uml_switch", "-unix"); code != 1 {
		t.Errorf("uml_switch -unix without a path = %d, want 1", code)
	}
}

// umlkit switch capture -w FILE writes pcap that tcpdump reads.
func TestSwitchCapture(t *testing.T) {
	dir, err := os.MkdirTemp("", "swc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncio.Buffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"umlkit", "switch", "--dir", dir, "--no-keeper"}, IO{In: strings.NewReader(""), Out: io.Discard, Err: &logs}, nil)
	}()
	mgmt := &vswitch.Client{Path: filepath.Join(dir, "mgmt")}
	for range 250 {
		if _, err = mgmt.Stats(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: filepath.Join(dir, "bess"), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pcap := filepath.Join(dir, "cap.pcap")
	cctx, stop := context.WithCancel(context.Background())
	capDone := make(chan int)
	go func() {
		_, se, code := runCtx(cctx, "umlkit", "switch", "capture", "--dir", dir, "-w", pcap)
		if code != 0 {
			t.Errorf("switch capture: %d %s", code, se)
		}
		capDone <- code
	}()
	frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6}, make([]byte, 46)...)
	for i := 0; ; i++ {
		c.Write(frame)
		if fi, err := os.Stat(pcap); err == nil && fi.Size() >= 24+16+60 {
			break
		}
		if i == 500 {
			t.Fatal("no frame reached the capture file")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	<-capDone
	out, err := exec.Command("tcpdump", "-e", "-n", "-r", pcap).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff") {
		t.Errorf("tcpdump -r %s: %v\n%s", pcap, err, out)
	}
	cancel()
	<-done
}

func runCtx(ctx context.Context, argv ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := run(ctx, argv, IO{In: strings.NewReader(""), Out: &out, Err: &errb}, nil)
	return out.String(), errb.String(), code
}
