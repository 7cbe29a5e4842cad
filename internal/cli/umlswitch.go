package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/umlkit/umlkit/vswitch"
)

// umlSwitchDefaultCtl is where Debian's UML kernel looks for the switch
// when ethN=daemon names no control socket.
const umlSwitchDefaultCtl = "/var/run/uml-utilities/uml_switch.ctl"

func umlSwitchTool() Tool {
	return Tool{
		Name:    "uml_switch",
		Summary: "the uml_switch daemon (flags -unix CTL, -hub, -tap IF, -daemon), served by umlkit's switch",
		Run:     runUMLSwitch,
	}
}

// runUMLSwitch takes uml_switch's flags (single dash, in any order) and
// runs umlkit's switch on the daemon protocol only, like uml_switch.
func runUMLSwitch(ctx context.Context, args []string, stdio IO) int {
	var o switchOptions
	o.classic = true
	o.paths.unix = umlSwitchDefaultCtl
	o.mode = "0600"
	o.vlan = 1
	daemon := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "-unix", "--unix":
			if i+1 >= len(args) {
				return usageUMLSwitch(stdio, "-unix needs a control socket path")
			}
			i++
			o.paths.unix = args[i]
		case "-tap", "--tap":
			if i+1 >= len(args) {
				return usageUMLSwitch(stdio, "-tap needs an interface name")
			}
			i++
			o.taps = append(o.taps, args[i])
		case "-hub", "--hub":
			o.hub = true
		case "-daemon", "--daemon":
			daemon = true
		case "-compat-v0", "--compat-v0":
			return usageUMLSwitch(stdio, "-compat-v0 (protocol versions 0-2) is not supported; UML kernels since 2.6 speak version 3")
		case "-h", "-help", "--help":
			usageUMLSwitch(stdio, "")
			return 0
		default:
			return usageUMLSwitch(stdio, fmt.Sprintf("unknown option %q", a))
		}
	}
	o.paths.mgmt = o.paths.unix + ".mgmt"
	if daemon {
		return daemonize(ctx, args, o.paths.unix, stdio)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f, ok := stdio.In.(*os.File); ok && isTerminal(f) {
		// Like uml_switch: end of input on a terminal stops the switch.
		go func() {
			io.Copy(io.Discard, f)
			cancel()
		}()
	}
	o.maxPorts = 0
	o.queue = 0
	if err := runSwitch(ctx, o, stdio); err != nil {
		fmt.Fprintf(stdio.Err, "uml_switch: %v\n", err)
		return 1
	}
	return 0
}

func usageUMLSwitch(stdio IO, problem string) int {
	if problem != "" {
		fmt.Fprintf(stdio.Err, "uml_switch: %s\n", problem)
	}
	fmt.Fprintf(stdio.Err, "Usage: uml_switch [ -unix control-socket ] [ -hub ] [ -tap tap-device ] [ -daemon ]\n  (umlkit's switch; `umlkit switch --help` has more)\n")
	if problem != "" {
		return 1
	}
	return 0
}

// daemonize starts the switch again in the background, in its own
// session, and returns once its control socket answers.
func daemonize(ctx context.Context, args []string, ctl string, stdio IO) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stdio.Err, "uml_switch: %v\n", err)
		return 1
	}
	var rest []string
	for _, a := range args {
		if a != "-daemon" && a != "--daemon" {
			rest = append(rest, a)
		}
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		fmt.Fprintf(stdio.Err, "uml_switch: %v\n", err)
		return 1
	}
	defer devnull.Close()
	cmd := exec.Command(exe, rest...)
	cmd.Args[0] = "uml_switch"
	cmd.Stdin = devnull
	cmd.Stdout, cmd.Stderr = stdio.Out, stdio.Err
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stdio.Err, "uml_switch: %v\n", err)
		return 1
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	for {
		if _, err := (&vswitch.Client{Path: ctl + ".mgmt"}).Stats(); err == nil {
			return 0
		}
		select {
		case <-exited:
			fmt.Fprintf(stdio.Err, "uml_switch: the background switch exited: %v\n", errors.New(cmd.ProcessState.String()))
			return 1
		case <-ctx.Done():
			return 1
		case <-time.After(20 * time.Millisecond):
		}
	}
}
