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
)

// BenchmarkSwitch runs the load generator through umlkit's switch (daemon
// protocol and BESS), uml_switch and vde_switch, and through a direct
// socket pair with no switch (the host's limit), for 2 and 16 ports and
// 64, 512 and 1500-byte frames. Each run measures forwarded frames/s,
// Mbit/s and loss with every port sending to its partner flat out for
// b.N x 100ms, then round trips (p50, p99) between two ports.
func BenchmarkSwitch(b *testing.B) {
	for _, target := range []string{"direct", "umlkit-bess", "umlkit-daemon", "vde_switch", "uml_switch"} {
		for _, nports := range []int{2, 16} {
			for _, size := range []int{64, 512, 1500} {
				b.Run(fmt.Sprintf("%s/%dports/%dB", target, nports, size), func(b *testing.B) {
					ports := connect(b, target, nports)
					tp, err := loadgen.Throughput(ports, size, time.Duration(b.N)*100*time.Millisecond)
					if err != nil {
						b.Fatal(err)
					}
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
				})
			}
		}
	}
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
// returns nports ports on it; everything stops when the benchmark ends.
func connect(b *testing.B, target string, nports int) []*loadgen.Port {
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
	switch target {
	case "direct":
		for len(ports) < nports {
			x, y, err := loadgen.Pair()
			if err != nil {
				b.Fatal(err)
			}
			ports = append(ports, x, y)
		}
		return ports
	case "umlkit-bess", "umlkit-daemon":
		start(b, umlkit(b), "switch", "--dir", dir, "--no-keeper")
		if target == "umlkit-bess" {
			ready = filepath.Join(dir, "bess")
			dial = func() (*loadgen.Port, error) { return loadgen.DialBESS(ready) }
		} else {
			ready = filepath.Join(dir, "ctl")
			dial = func() (*loadgen.Port, error) { return loadgen.DialDaemon(ready) }
		}
	case "uml_switch":
		ready = filepath.Join(dir, "ctl")
		start(b, "uml_switch", "-unix", ready)
		dial = func() (*loadgen.Port, error) { return loadgen.DialDaemon(ready) }
	case "vde_switch":
		ready = filepath.Join(dir, "vde", "ctl")
		start(b, "vde_switch", "-s", filepath.Join(dir, "vde"), "-n", "64")
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
	return ports
}

// start runs a switch process until the benchmark ends. Its stdin is a
// pipe left open: uml_switch and vde_switch read commands from stdin and
// stop at its end.
func start(b *testing.B, name string, args ...string) {
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
}
