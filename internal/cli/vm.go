package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/image/store"
	"github.com/umlkit/umlkit/internal/kernel"
	"github.com/umlkit/umlkit/internal/machine"
	"github.com/umlkit/umlkit/internal/machine/cmdline"
)

func newVMCmd(stdio IO) *cobra.Command {
	vm := &cobra.Command{
		Use:     "vm",
		Short:   "Run, supervise and control UML instances",
		GroupID: groupInstances,
	}
	vm.AddCommand(
		newVMRunCmd(stdio, false),
		newVMRunCmd(stdio, true),
		newVMSuperviseCmd(stdio),
		newVMListCmd(stdio),
		newVMStopCmd(stdio, false),
		newVMStopCmd(stdio, true),
		newVMConsoleCmd(stdio),
		newVMLogsCmd(stdio),
		newVMConfigCmd(stdio, false),
		newVMConfigCmd(stdio, true),
		newVMExecCmd(stdio, false),
		newVMExecCmd(stdio, true),
		newVMCheckCmd(stdio),
	)
	return vm
}

// vmFlags are the friendly flags of vm run and vm start.
type vmFlags struct {
	name, image, cow, mem string
	nets, taps            []string
	hostIP                string
	wait                  string
	noAgent               bool
	timeout               time.Duration
}

func (f *vmFlags) add(cmd *cobra.Command, start bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "instance `NAME` (also its umid); or umid= among the arguments")
	fl.StringVar(&f.image, "image", "", "root filesystem `IMAGE`, shared read-only through a COW file")
	fl.StringVar(&f.cow, "cow", "", "the instance's COW `FILE` over --image (default NAME.cow here)")
	fl.StringVar(&f.mem, "mem", "", "memory, such as 64M (mem=)")
	fl.StringArrayVar(&f.nets, "net", nil, "a NIC on the switch at BESS `SOCKET` (repeatable: eth0, eth1, ...)")
	fl.StringArrayVar(&f.taps, "tap", nil, "a NIC on the host TAP device `NAME` (ethN=tuntap,NAME; umlkit tap create makes one)")
	fl.StringVar(&f.hostIP, "host-ip", "", "a NIC on a TAP the uml_net helper makes at boot, host side `ADDRESS` (ethN=tuntap,,,ADDRESS)")
	if start {
		fl.StringVar(&f.wait, "wait", "guest", "wait until the `guest` says it is ready, or only the `kernel`")
		fl.DurationVar(&f.timeout, "timeout", 60*time.Second, "limit for the boot")
	}
	if start {
		fl.BoolVar(&f.noAgent, "no-agent", false, "no serial line for the exec agent (umlkit vm exec)")
	}
	fl.SetInterspersed(false)
}

// kernelArgs turns the flags and the literal arguments into kernel
// arguments and the instance name.
func (f *vmFlags) kernelArgs(args []string) (string, []string, error) {
	out := append([]string(nil), args...)
	name := f.name
	c, err := cmdline.Parse(args)
	if err != nil {
		return "", nil, err
	}
	if u, ok := c.Umid(); ok {
		if name != "" && name != u {
			return "", nil, fmt.Errorf("--name %s and umid=%s disagree: give one", name, u)
		}
		name = u
	}
	if name == "" {
		return "", nil, fmt.Errorf("name the instance: --name NAME (or umid=NAME, as with ./linux)")
	}
	if f.image != "" {
		if c.Disk(0) != nil {
			return "", nil, fmt.Errorf("--image and ubd0= both give the root disk: keep one")
		}
		cow := f.cow
		if cow == "" {
			cow = name + ".cow"
		}
		img, err := store.Resolve(f.image)
		if err != nil {
			return "", nil, err
		}
		out = append(out, "ubd0="+cow+","+img)
	} else if f.cow != "" {
		return "", nil, fmt.Errorf("--cow needs --image (the backing file)")
	}
	if f.mem != "" {
		out = append(out, "mem="+f.mem)
	}
	n := len(c.Eths()) + len(c.Vecs())
	for _, s := range f.nets {
		out = append(out, fmt.Sprintf("vec%d:transport=bess,dst=%s", n, s))
		n++
	}
	for _, t := range f.taps {
		out = append(out, fmt.Sprintf("eth%d=tuntap,%s", n, t))
		n++
	}
	if f.hostIP != "" {
		out = append(out, fmt.Sprintf("eth%d=tuntap,,,%s", n, f.hostIP))
	}
	return name, out, nil
}

func newVMRunCmd(stdio IO, start bool) *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "run [flags] [KERNEL-ARGS...]",
		Short: "Run an instance in the foreground, console on this terminal, like ./linux",
		Long: `Run an instance in the foreground with its console on this terminal, like
./linux, after checking the command line (a missing or locked root disk, a
stale COW file, a umid in use, ... come back as errors with their fix, not
as kernel panics). The seed's syntax works as written:

  umlkit vm run ubd0=root_fs1.cow,root_fs mem=64M umid=uml1`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, kargs, err := f.kernelArgs(args)
			if err != nil {
				return err
			}
			dir, _ := os.Getwd()
			c, err := machine.Prepare(cmd.Context(), name, kargs, dir, false)
			if err != nil {
				return err
			}
			k, err := kernel.Find()
			if err != nil {
				return err
			}
			kc, err := k.Command(context.Background(), c.Strings()...)
			if err != nil {
				return err
			}
			kc.Stdin, kc.Stdout, kc.Stderr = stdio.In, stdio.Out, stdio.Err
			if err := kc.Start(); err != nil {
				return err
			}
			// Ctrl-C belongs to the guest's console; a SIGTERM to umlkit
			// stops the kernel cleanly.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGTERM)
			defer signal.Stop(sigs)
			go func() {
				for s := range sigs {
					kc.Process.Signal(s)
				}
			}()
			werr := kc.Wait()
			kernel.KillGroup(kc)
			if werr != nil {
				return &ExitError{Code: kc.ProcessState.ExitCode() & 0xff}
			}
			return nil
		},
	}
	if start {
		cmd.Use = "start [flags] [KERNEL-ARGS...]"
		cmd.Short = "Start an instance in the background, supervised, and wait until it is ready"
		cmd.Long = `Start an instance in the background under a small supervisor that outlives
this command and keeps its console (umlkit vm console NAME attaches, umlkit vm
logs NAME shows it). The command line is checked first; then it waits until
the guest says it is ready (umlkit's images do) or the kernel panics, which
comes back as an error with the panic message.`
		cmd.Example = "  umlkit vm start ubd0=root_fs1.cow,root_fs mem=64M umid=uml1\n  umlkit vm start --name r1 --image root_fs --net /run/umlkit/switch/lan.bess"
		cmd.RunE = func(cmd *cobra.Command, args []string) error {
			name, kargs, err := f.kernelArgs(args)
			if err != nil {
				return err
			}
			if f.wait != "guest" && f.wait != "kernel" {
				return fmt.Errorf("--wait %q: want guest or kernel", f.wait)
			}
			in, err := machine.Start(cmd.Context(), machine.StartOptions{Name: name, Args: kargs, Timeout: f.timeout, WaitKernel: f.wait == "kernel", NoAgent: f.noAgent})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "%s %s (pid %d); console: umlkit vm console %s\n", name, in.State.Status, in.State.PID, name)
			return nil
		}
	}
	f.add(cmd, start)
	return cmd
}

func newVMSuperviseCmd(stdio IO) *cobra.Command {
	return &cobra.Command{
		Use:    "supervise NAME",
		Short:  "The supervisor of an instance (umlkit vm start runs it)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return machine.Supervise(cmd.Context(), args[0], nil)
		},
	}
}

func newVMListCmd(stdio IO) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List instances: name, pid, state, uptime, memory, disks, NICs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ins, err := machine.List()
			if err != nil {
				return err
			}
			type row struct {
				Name   string    `json:"name"`
				PID    int       `json:"pid"`
				State  string    `json:"state"`
				Uptime string    `json:"uptime,omitempty"`
				Mem    string    `json:"mem,omitempty"`
				Disks  []string  `json:"disks"`
				NICs   []string  `json:"nics"`
				Panic  string    `json:"panic,omitempty"`
				Since  time.Time `json:"started"`
			}
			rows := []row{}
			for _, in := range ins {
				r := row{Name: in.Spec.Name, PID: in.State.PID, State: string(in.State.Status), Panic: in.State.Panic, Since: in.State.Started, Disks: []string{}, NICs: []string{}}
				if in.State.Live() && !in.State.Started.IsZero() {
					r.Uptime = time.Since(in.State.Started).Round(time.Second).String()
				}
				if c, err := cmdline.Parse(in.Spec.Args); err == nil {
					if m, ok := c.Mem(); ok {
						r.Mem = cmdline.FormatSize(m)
					}
					for _, d := range c.Disks() {
						r.Disks = append(r.Disks, d.String())
					}
					for _, e := range c.Eths() {
						r.NICs = append(r.NICs, e.String())
					}
					for _, v := range c.Vecs() {
						r.NICs = append(r.NICs, v.String())
					}
				}
				rows = append(rows, r)
			}
			if asJSON {
				return writeJSON(stdio.Out, rows)
			}
			w := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tPID\tSTATE\tUPTIME\tMEM\tDISKS\tNICS")
			for _, r := range rows {
				state := r.State
				if r.Panic != "" {
					state += " (panic: " + r.Panic + ")"
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.PID, state, r.Uptime, r.Mem, strings.Join(r.Disks, " "), strings.Join(r.NICs, " "))
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMStopCmd(stdio IO, kill bool) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME...",
		Short: "Stop instances: sync and halt through mconsole, then SIGTERM, then SIGKILL",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, n := range args {
				var err error
				if kill {
					err = machine.Kill(cmd.Context(), n)
				} else {
					err = machine.Stop(cmd.Context(), n, timeout)
				}
				if err != nil {
					return err
				}
				in, _ := machine.Get(n)
				if in != nil {
					fmt.Fprintf(stdio.Out, "%s %s\n", n, in.State.Status)
				}
			}
			return nil
		},
	}
	if kill {
		cmd.Use = "kill NAME..."
		cmd.Short = "Kill instances at once (SIGKILL to the kernel's process group)"
	} else {
		cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "time before escalating to SIGKILL")
	}
	return cmd
}

func newVMConsoleCmd(stdio IO) *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to an instance's console (Ctrl-] detaches)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return attachConsole(cmd.Context(), stdio, args[0])
		},
	}
}

// attachConsole attaches this terminal (raw while attached) to the
// console of the instance name.
func attachConsole(ctx context.Context, stdio IO, name string) error {
	if f, ok := stdio.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if old, err := term.MakeRaw(int(f.Fd())); err == nil {
			defer term.Restore(int(f.Fd()), old)
		}
		fmt.Fprintf(stdio.Err, "attached to %s; Ctrl-] detaches\r\n", name)
	}
	return machine.Attach(ctx, name, stdio.In, stdio.Out)
}

func newVMLogsCmd(stdio IO) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print an instance's console log (-f follows it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := machine.Get(args[0]); err != nil {
				return err
			}
			f, err := os.Open(machine.PathsOf(args[0]).Log())
			if err != nil {
				return err
			}
			defer f.Close()
			r := bufio.NewReader(f)
			for {
				if _, err := io.Copy(stdio.Out, r); err != nil {
					return err
				}
				if !follow {
					return nil
				}
				in, err := machine.Get(args[0])
				if err != nil || !in.State.Live() {
					io.Copy(stdio.Out, r)
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing what comes")
	return cmd
}

func newVMConfigCmd(stdio IO, remove bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "config NAME DEV=SPEC",
		Short:   "Hot-plug a disk or NIC into a running instance (mconsole config)",
		Example: "  umlkit vm config uml1 ubd1=data.cow,data.img\n  umlkit vm config uml1 vec1:transport=bess,dst=/run/umlkit/switch/lan.bess",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			mc, err := machine.Mconsole(args[0])
			if err != nil {
				return err
			}
			defer mc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if remove {
				if err := mc.Remove(ctx, args[1]); err != nil {
					return fmt.Errorf("instance %s: remove %s: %w", args[0], args[1], err)
				}
				fmt.Fprintf(stdio.Out, "removed %s from %s\n", args[1], args[0])
				return nil
			}
			dev, spec, ok := strings.Cut(args[1], "=")
			if strings.HasPrefix(args[1], "vec") {
				dev, spec, ok = strings.Cut(args[1], ":")
			}
			if !ok {
				return fmt.Errorf("%q: want DEV=SPEC (ubd1=disk.img) or vecN:transport=...", args[1])
			}
			if err := mc.Config(ctx, dev, spec); err != nil {
				return fmt.Errorf("instance %s: config %s: %w", args[0], args[1], err)
			}
			fmt.Fprintf(stdio.Out, "configured %s on %s\n", args[1], args[0])
			return nil
		},
	}
	if remove {
		cmd.Use = "remove NAME DEV"
		cmd.Short = "Hot-unplug a disk or NIC from a running instance (mconsole remove)"
		cmd.Example = "  umlkit vm remove uml1 ubd1"
	}
	return cmd
}

func newVMExecCmd(stdio IO, shell bool) *cobra.Command {
	var tty, noTTY bool
	var env []string
	var dir string
	cmd := &cobra.Command{
		Use:     "exec NAME [flags] -- CMD [ARGS...]",
		Short:   "Run a command inside an instance (no guest network needed); its exit status is umlkit's",
		Example: "  umlkit vm exec r1 -- ip route\n  umlkit vm exec r1 -t -- top",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			argv := args[1:]
			useTTY := tty
			if shell {
				argv = []string{"/bin/sh", "-l"}
				useTTY = !noTTY && isTerminal(stdio.In)
			}
			return runInGuest(cmd.Context(), stdio, args[0], argv, env, dir, useTTY)
		},
	}
	if shell {
		cmd.Use = "shell NAME"
		cmd.Short = "A shell inside an instance, on a terminal"
		cmd.Example = "  umlkit vm shell r1"
		cmd.Args = cobra.ExactArgs(1)
		cmd.Flags().BoolVarP(&noTTY, "no-tty", "T", false, "no terminal, even when this is one")
	} else {
		cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run on a terminal (stdout and stderr merged)")
		cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "`KEY=VALUE` for the command's environment (repeatable)")
		cmd.Flags().StringVarP(&dir, "workdir", "w", "", "working `DIR` in the guest")
	}
	return cmd
}

func runInGuest(ctx context.Context, stdio IO, name string, argv, env []string, dir string, tty bool) error {
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := machine.Agent(actx, name)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	cmd := agent.Cmd{Argv: argv, Env: env, Dir: dir, TTY: tty, Stdin: stdio.In, Stdout: stdio.Out, Stderr: stdio.Err}
	var s *agent.Session
	if tty {
		if f, ok := stdio.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			if w, h, err := term.GetSize(int(f.Fd())); err == nil {
				cmd.Rows, cmd.Cols = uint16(h), uint16(w)
			}
			old, err := term.MakeRaw(int(f.Fd()))
			if err == nil {
				defer term.Restore(int(f.Fd()), old)
			}
			cmd.Env = append(cmd.Env, "TERM="+os.Getenv("TERM"))
			winch := make(chan os.Signal, 1)
			signal.Notify(winch, syscall.SIGWINCH)
			defer signal.Stop(winch)
			go func() {
				for range winch {
					if w, h, err := term.GetSize(int(f.Fd())); err == nil && s != nil {
						s.Resize(uint16(h), uint16(w))
					}
				}
			}()
		}
	}
	s, err = c.Start(cmd)
	if err != nil {
		return err
	}
	st, err := s.Wait()
	if err != nil {
		return fmt.Errorf("instance %s: %w", name, err)
	}
	if st.Error != "" {
		fmt.Fprintf(stdio.Err, "umlkit: %s: %s\n", name, st.Error)
	}
	if st.Code != 0 {
		return &ExitError{Code: st.Code}
	}
	return nil
}
