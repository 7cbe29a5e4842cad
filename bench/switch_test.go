package bench

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/loadgen"
	"github.com/umlkit/umlkit/internal/umltest"
)

// BenchmarkSwitch runs the load generator through umlkit's switch (daemon
// protocol and BESS), uml_switch and vde_switch, and through a direct
// socket pair with no switch (the host's limit), for 2 and 16 ports and
// 64, 512 and 1500-byte frames, with two kinds of client: batched (up to
// 32 frames per sendmmsg/recvmmsg, as UML's vector transports do) and
// perframe (a system call per frame, as the kernel's daemon and vde
// transports do). Each run measures forwarded frames/s,
// Mbit/s and loss with every port sending to its partner flat out for
// b.N x 100ms, then round trips (p50, p99) between two ports. It also
// reports the CPU time each forwarded frame cost the switch process
// (sw-ns/frame) and the load generator (gen-ns/frame): on a machine with
// few cores they share, frames/s follows their sum.
func BenchmarkSwitch(b *testing.B) {
	for _, client := range []string{"batched", "perframe"} {
		for _, target := range []string{"direct", "umlkit-bess", "umlkit-daemon", "vde_switch", "uml_switch"} {
			for _, nports := range []int{2, 16} {
				for _, size := range []int{64, 512, 1500} {
					benchSwitch(b, client, target, nports, size)
				}
			}
		}
	}
}

func benchSwitch(b *testing.B, client, target string, nports, size int) {
	b.Run(fmt.Sprintf("%s/%s/%dports/%dB", target, client, nports, size), func(b *testing.B) {
		ports, pid := connect(b, target, nports)
		if client == "perframe" {
			for _, p := range ports {
				p.SetBatch(1)
			}
		}
		sw0, gen0 := umltest.CPUTime(pid), umltest.CPUTime(os.Getpid())
		tp, err := loadgen.Throughput(ports, size, time.Duration(b.N)*100*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		sw, gen := umltest.CPUTime(pid)-sw0, umltest.CPUTime(os.Getpid())-gen0
		rt, err := loadgen.RTT(ports[0], ports[1], size, 1000)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(tp.FramesPerSec/1000, "kframes/s")
		b.ReportMetric(tp.Mbps, "Mbit/s")
		b.ReportMetric(tp.Loss*100, "loss%")
		b.ReportMetric(float64(rt.P50.Nanoseconds())/1000, "p50-us")
		b.ReportMetric(float64(rt.P99.Nanoseconds())/1000, "p99-us")
		if tp.Received > 0 {
			if pid != 0 {
				b.ReportMetric(float64(sw.Nanoseconds())/float64(tp.Received), "sw-ns/frame")
			}
			b.ReportMetric(float64(gen.Nanoseconds())/float64(tp.Received), "gen-ns/frame")
		}
	})
}

var (
	buildOnce sync.Once
	umlkitBin string
	buildErr  error
)

// umlkit builds the binary once per run.
func umlkit(b *testing.B) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "umlkit-bench-")
		if err != nil {
			buildErr = err
			return
		}
		umlkitBin = filepath.Join(dir, "umlkit")
		out, err := exec.Command("go", "build", "-o", umlkitBin, "../cmd/umlkit").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	return umlkitBin
}

// connect starts target (a switch process, or nothing for direct) and
// returns nports ports on it and the switch's pid (0 for direct);
// everything stops when the benchmark ends.
func connect(b *testing.B, target string, nports int) ([]*loadgen.Port, int) {
	b.Helper()
	dir, err := os.MkdirTemp("", "swb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	var ports []*loadgen.Port
	b.Cleanup(func() {
		for _, p := range ports {
			p.Close()
		}
	})
	var dial func() (*loadgen.Port, error)
	var ready string
	var pid int
	switch target {
	case "direct":
		for len(ports) < nports {
			x, y, err := loadgen.Pair()
			if err != nil {
				b.Fatal(err)
			}
			ports = append(ports, x, y)
		}
		return ports, 0
	case "umlkit-bess", "umlkit-daemon":
		pid = start(b, umlkit(b), "switch", "--dir", dir, "--no-keeper")
		if target == "umlkit-bess" {
			ready = filepath.Join(dir, "bess")
			dial = func() (*loadgen.Port, error) { return loadgen.DialBESS(ready) }
		} else {
			ready = filepath.Join(dir, "ctl")
			dial = func() (*loadgen.Port, error) { return loadgen.DialDaemon(ready) }
		}
	case "uml_switch":
		ready = filepath.Join(dir, "ctl")
		pid = start(b, "uml_switch", "-unix", ready)
		dial = func() (*loadgen.Port, error) { return loadgen.DialDaemon(ready) }
	case "vde_switch":
		ready = filepath.Join(dir, "vde", "ctl")
		pid = start(b, "vde_switch", "-s", filepath.Join(dir, "vde"), "-n", "64")
		dial = func() (*loadgen.Port, error) { return loadgen.DialDaemon(ready) }
	}
	network := "unix"
	if target == "umlkit-bess" {
		network = "unixpacket"
	}
	for i := 0; ; i++ {
		if c, err := net.Dial(network, ready); err == nil {
			c.Close()
			break
		}
		if i == 250 {
			b.Fatalf("%s: no socket at %s", target, ready)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for len(ports) < nports {
		p, err := dial()
		if err != nil {
			b.Fatalf("%s: connect port %d: %v", target, len(ports)+1, err)
		}
		ports = append(ports, p)
	}
	time.Sleep(100 * time.Millisecond) // let the switch set up the ports
	return ports, pid
}

// start runs a switch process until the benchmark ends and returns its
// pid. Its stdin is a pipe left open: uml_switch and vde_switch read
// commands from stdin and stop at its end.
func start(b *testing.B, name string, args ...string) int {
	b.Helper()
	cmd := exec.Command(name, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v (make setup installs uml-utilities and vde2)", name, err)
	}
	b.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}
