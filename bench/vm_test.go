package bench

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/internal/umltest"
)

func vmSetup(b *testing.B) machine.StartOptions {
	b.Helper()
	b.Setenv("UMLKIT_RUNTIME_DIR", umltest.ShortDir(b))
	return machine.StartOptions{Exe: umltest.Umlkit(b), Dir: b.TempDir(), Timeout: 120 * time.Second}
}

// BenchmarkBootDirectVsVMStart is what umlkit adds to a boot: the kernel
// run directly until the guest's ready line, against umlkit vm start
// until the guest said it is ready (checks, supervisor, notify socket).
func BenchmarkBootDirectVsVMStart(b *testing.B) {
	img := umltest.Image(b)
	opts := vmSetup(b)
	var direct, vm time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		inst := umltest.Boot(b, umltest.Options{Umid: fmt.Sprintf("d%d", i)})
		direct += time.Since(t0)
		inst.Poweroff()

		name := fmt.Sprintf("v%d", i)
		o := opts
		o.Name, o.Args = name, []string{"ubd0=" + name + ".cow," + img}
		t0 = time.Now()
		if _, err := machine.Start(context.Background(), o); err != nil {
			b.Fatal(err)
		}
		vm += time.Since(t0)
		machine.Kill(context.Background(), name)
	}
	b.ReportMetric(float64(direct.Milliseconds())/float64(b.N), "direct-ms")
	b.ReportMetric(float64(vm.Milliseconds())/float64(b.N), "vmstart-ms")
	b.ReportMetric(float64(vm)/float64(direct), "ratio")
}

// BenchmarkTwentyAtOnce starts twenty instances at once and waits until
// all are ready, against the limit: twenty times one boot's CPU time
// divided by the cores.
func BenchmarkTwentyAtOnce(b *testing.B) {
	const n = 20
	img := umltest.Image(b)
	opts := vmSetup(b)
	// One boot alone: its CPU time until ready.
	o := opts
	o.Name, o.Args = "solo", []string{"ubd0=solo.cow," + img}
	in, err := machine.Start(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	one := umltest.CPUTime(in.State.PID)
	machine.Kill(context.Background(), "solo")
	limit := time.Duration(int64(one) * n / int64(runtime.NumCPU()))
	var total time.Duration
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		t0 := time.Now()
		for j := 0; j < n; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := opts
				o.Name = fmt.Sprintf("t%d-%d", i, j)
				o.Args = []string{"ubd0=" + o.Name + ".cow," + img}
				if _, err := machine.Start(context.Background(), o); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		total += time.Since(t0)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		for j := 0; j < n; j++ {
			machine.Kill(context.Background(), fmt.Sprintf("t%d-%d", i, j))
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "all-ready-ms")
	b.ReportMetric(float64(limit.Milliseconds()), "limit-ms")
	b.ReportMetric(float64(total)/float64(b.N)/float64(limit), "x-limit")
}
