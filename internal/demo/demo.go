// Package demo walks through the scenario umlkit was started from: a root
// filesystem, two UML instances sharing it through copy-on-write files,
// each showing who it is, then a clean shutdown.
package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/umlkit/umlkit/internal/console"
	"github.com/umlkit/umlkit/internal/image"
	"github.com/umlkit/umlkit/internal/kernel"
	"github.com/umlkit/umlkit/internal/syncio"
)

// Options configures Run.
type Options struct {
	// Dir is the working directory (root_fs and the COW files go there);
	// empty means a temporary directory removed at the end.
	Dir string
	// Instances is how many instances share the image; zero means 2.
	Instances int
	// Timeout bounds each instance's boot and each command; zero means 60s.
	Timeout time.Duration
}

// Run performs the demo, reporting each step to out.
func Run(ctx context.Context, opts Options, out io.Writer) error {
	out = syncio.NewWriter(out) // instances report concurrently
	n := opts.Instances
	if n == 0 {
		n = 2
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	k, err := kernel.Find()
	if err != nil {
		return err
	}
	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "umlkit-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	umlDir, err := os.MkdirTemp("", "uml")
	if err != nil {
		return err
	}
	defer os.RemoveAll(umlDir)

	fmt.Fprintf(out, "== 5.1 a root filesystem: building %s (busybox, ext4)\n", filepath.Join(dir, "root_fs"))
	start := time.Now()
	if err := image.BuildMinimal(ctx, filepath.Join(dir, "root_fs"), image.MinimalOptions{}); err != nil {
		return err
	}
	fmt.Fprintf(out, "   built in %v\n", time.Since(start).Round(time.Millisecond))

	fmt.Fprintf(out, "== 5.3 copy on write: %d instances share root_fs, each writes to its own .cow file\n", n)
	vms := make([]*vm, n)
	for i := range vms {
		name := fmt.Sprintf("uml%d", i+1)
		args := []string{fmt.Sprintf("ubd0=root_fs%d.cow,root_fs", i+1), "mem=64M", "umid=" + name,
			"hostname=" + name, "uml_dir=" + umlDir + "/", "con=null", "ssl=null", "con0=fd:0,fd:1"}
		fmt.Fprintf(out, "   $ linux %s\n", strings.Join(args[:4], " "))
		v, err := startVM(ctx, k, dir, name, args, out)
		if err != nil {
			return err
		}
		defer v.kill()
		vms[i] = v
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, v := range vms {
		g.Go(func() error { return v.show(gctx, timeout, out) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	fmt.Fprintln(out, "== the shared image and the COW files")
	for _, f := range append([]string{"root_fs"}, cowNames(n)...) {
		if line, err := describeFile(filepath.Join(dir, f)); err == nil {
			fmt.Fprintf(out, "   %s\n", line)
		}
	}
	fmt.Fprintln(out, "== shutting down")
	for _, v := range vms {
		g.Go(func() error { return v.poweroff(ctx, timeout, out) })
	}
	return g.Wait()
}

func cowNames(n int) []string {
	var s []string
	for i := 1; i <= n; i++ {
		s = append(s, fmt.Sprintf("root_fs%d.cow", i))
	}
	return s
}

func describeFile(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	used := int64(0)
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		used = sys.Blocks * 512
	}
	return fmt.Sprintf("%-14s size %5d KiB, on disk %5d KiB", filepath.Base(p), st.Size()>>10, used>>10), nil
}

type vm struct {
	name    string
	con     *console.Console
	exited  chan struct{}
	exitErr error
	kill    func()
}

func startVM(ctx context.Context, k *kernel.Kernel, dir, name string, args []string, out io.Writer) (*vm, error) {
	cmd, err := k.Command(ctx, args...)
	if err != nil {
		return nil, err
	}
	cmd.Dir = dir
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	v := &vm{name: name, exited: make(chan struct{})}
	v.con = console.New(stdout, in, func(line string) {
		if strings.HasPrefix(line, "Creating ") && strings.Contains(line, "as COW file") {
			fmt.Fprintf(out, "   %s: %s\n", name, line)
		}
	})
	go func() {
		<-v.con.Done()
		v.exitErr = cmd.Wait()
		close(v.exited)
	}()
	v.kill = func() {
		in.Close()
		kernel.KillGroup(cmd)
		<-v.exited
	}
	return v, nil
}

// show waits for the instance and prints who it is, as one block.
func (v *vm) show(ctx context.Context, timeout time.Duration, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out strings.Builder
	defer func() { io.WriteString(w, out.String()) }()
	start := time.Now()
	if _, err := v.con.WaitFor(ctx, "umlkit-ready"); err != nil {
		return fmt.Errorf("instance %s did not boot: %w", v.name, err)
	}
	fmt.Fprintf(&out, "   %s: up in %v\n", v.name, time.Since(start).Round(time.Millisecond))
	for _, c := range []string{"uname -a", "hostname"} {
		res, status, err := v.con.Run(ctx, c)
		if err != nil {
			return fmt.Errorf("instance %s: %s: %w", v.name, c, err)
		}
		if status != 0 {
			return fmt.Errorf("instance %s: %s exited %d: %s", v.name, c, status, res)
		}
		fmt.Fprintf(&out, "   %s$ %s\n   %s\n", v.name, c, res)
	}
	return nil
}

func (v *vm) poweroff(ctx context.Context, timeout time.Duration, out io.Writer) error {
	if err := v.con.Send("poweroff -f\n"); err != nil {
		return fmt.Errorf("instance %s: %w", v.name, err)
	}
	select {
	case <-v.exited:
	case <-time.After(timeout):
		return fmt.Errorf("instance %s did not power off within %v", v.name, timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	if p := v.con.Panic(); p != "" {
		return fmt.Errorf("instance %s: kernel panic: %s", v.name, p)
	}
	if v.exitErr != nil {
		return fmt.Errorf("instance %s: %w", v.name, v.exitErr)
	}
	fmt.Fprintf(out, "   %s: powered off (exit status 0)\n", v.name)
	return nil
}
