package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/vswitch"
)

// switchPaths names a switch's sockets. By default a switch named NAME
// lives in the directory RUNTIME/switches/NAME, with ctl (the daemon
// protocol: `vde_plug DIR` finds it there), bess and mgmt.
type switchPaths struct {
	name, dir, bess, unix, mgmt string
}

func (p *switchPaths) addFlags(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&p.name, "name", "sw0", "the switch's `NAME`: its sockets are in RUNTIME/switches/NAME")
	fs.StringVar(&p.dir, "dir", "", "keep the sockets in `DIR` instead")
	fs.StringVar(&p.bess, "bess", "", "BESS socket `PATH` (vecN:transport=bess,dst=PATH; default DIR/bess)")
	fs.StringVar(&p.unix, "unix", "", "daemon-protocol control socket `CTL` (ethN=daemon,,unix,CTL; default DIR/ctl)")
	fs.StringVar(&p.mgmt, "mgmt", "", "management socket `PATH` (default DIR/mgmt, or CTL.mgmt / PATH.mgmt with --unix / --bess)")
}

// resolve fills in the defaults. With neither --bess nor --unix, the
// switch serves both in DIR; with either, only what was asked for.
func (p switchPaths) resolve() switchPaths {
	if p.dir == "" {
		p.dir = filepath.Join(hostdirs.Runtime(), "switches", p.name)
	}
	if p.mgmt == "" {
		switch {
		case p.unix != "":
			p.mgmt = p.unix + ".mgmt"
		case p.bess != "":
			p.mgmt = p.bess + ".mgmt"
		default:
			p.mgmt = filepath.Join(p.dir, "mgmt")
		}
	}
	if p.bess == "" && p.unix == "" {
		p.bess = filepath.Join(p.dir, "bess")
		p.unix = filepath.Join(p.dir, "ctl")
	}
	return p
}

type switchOptions struct {
	paths    switchPaths
	hub      bool
	mode     string
	group    string
	vlan     int
	maxPorts int
	macAge   time.Duration
	queue    int
	logJSON  bool
	verbose  bool
	taps     []string
	classic  bool // invoked as uml_switch: announce like it
	noKeeper bool
	keepIdle time.Duration
}

func newSwitchCmd(stdio IO) *cobra.Command {
	var o switchOptions
	cmd := &cobra.Command{
		Use:   "switch",
		Short: "Run an Ethernet switch for UML instances (BESS and uml_switch protocols)",
		Long: `Run an Ethernet switch in the foreground, with structured logs on stderr.

Instances connect with the vector BESS transport (any kernel):
  linux ... vec0:transport=bess,dst=DIR/bess
or the uml_switch daemon protocol (kernels up to 6.15), which vde_plug
also speaks:
  linux ... eth0=daemon,,unix,DIR/ctl        vde_plug DIR

Host TAP devices join with --tap NAME (as root), for connectivity with the
host. The switch survives its own restart: kill it (even with -9) or stop it,
start it again with the same arguments, and the instances keep their
links. Daemon ports are kept in a table (CTL.ports) and reconnected; BESS
connections are held by a small keeper process (PATH.keep) that the
switch starts and takes them back from.

With neither --bess nor --unix the switch serves both in DIR
(RUNTIME/switches/NAME); with either, only the sockets asked for. Socket
files are created mode 0600 (see --mode and --group); a stale socket
file is replaced only after dialing it finds nothing listening.

While it runs, 'umlkit switch ports|macs|stats' show its state and
'umlkit switch capture' records its traffic as pcap.`,
		GroupID: groupNetwork,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSwitch(cmd.Context(), o, stdio)
		},
	}
	f := cmd.Flags()
	o.paths.addFlags(cmd.PersistentFlags())
	f.BoolVar(&o.hub, "hub", false, "repeat every frame to every port (no learning)")
	f.StringVar(&o.mode, "mode", "0600", "permission `MODE` of the socket files (octal)")
	f.StringVar(&o.group, "group", "", "give the socket files to `GROUP` (name or number)")
	f.IntVar(&o.vlan, "vlan", 1, "untagged `VLAN` of new ports")
	f.IntVar(&o.maxPorts, "max-ports", vswitch.DefaultMaxPorts, "most ports at once")
	f.DurationVar(&o.macAge, "mac-age", vswitch.DefaultMACAge, "forget an address after this long without frames")
	f.IntVar(&o.queue, "queue", vswitch.DefaultQueueLen, "output queue of each port, in frames")
	f.StringArrayVar(&o.taps, "tap", nil, "add host TAP device `NAME` as a port, creating it if needed (repeatable)")
	f.BoolVar(&o.noKeeper, "no-keeper", false, "do not keep BESS connections and TAP devices in a keeper process across restarts")
	f.DurationVar(&o.keepIdle, "keeper-idle", 10*time.Second, "a keeper with no switch lets go of TAP devices after this long, and exits once it holds nothing")
	f.BoolVar(&o.logJSON, "log-json", false, "log JSON lines instead of text")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log debug messages too")
	cmd.AddCommand(
		newSwitchPortsCmd(stdio, &o.paths),
		newSwitchMACsCmd(stdio, &o.paths),
		newSwitchStatsCmd(stdio, &o.paths),
		newSwitchVLANCmd(stdio, &o.paths),
		newSwitchHubCmd(stdio, &o.paths),
		newSwitchDisconnectCmd(stdio, &o.paths),
		newSwitchCaptureCmd(stdio, &o.paths),
		newSwitchKeeperCmd(stdio),
	)
	return cmd
}

func parseGroup(g string) (int, error) {
	if g == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(g); err == nil {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("--group %s: %w", g, err)
	}
	return strconv.Atoi(gr.Gid)
}

func runSwitch(ctx context.Context, o switchOptions, stdio IO) error {
	p := o.paths.resolve()
	mode, err := strconv.ParseUint(o.mode, 8, 32)
	if err != nil || mode > 0o777 {
		return fmt.Errorf("--mode %q: want an octal permission such as 0600 or 0660", o.mode)
	}
	gid, err := parseGroup(o.group)
	if err != nil {
		return err
	}
	lo := vswitch.ListenOptions{Mode: os.FileMode(mode), GID: gid, VLAN: o.vlan}
	for _, path := range []string{p.bess, p.unix, p.mgmt} {
		if path == "" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("switch %s: %w", p.name, err)
		}
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(stdio.Err, &slog.HandlerOptions{Level: level})
	if o.logJSON {
		h = slog.NewJSONHandler(stdio.Err, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)
	s := vswitch.New(vswitch.Config{Hub: o.hub, MaxPorts: o.maxPorts, MACAge: o.macAge, QueueLen: o.queue, Logger: log})
	defer s.Close()
	var serving []string
	if !o.noKeeper && (p.bess != "" || len(o.taps) > 0) {
		// The keeper holds BESS connections and TAP devices across a
		// restart of the switch.
		keeper := p.mgmt + ".keep"
		if p.bess != "" {
			keeper = p.bess + ".keep"
		}
		if err := ensureKeeper(ctx, keeper, o.keepIdle); err != nil {
			return err
		}
		if err := s.UseKeeper(keeper); err != nil {
			return err
		}
	}
	if p.bess != "" {
		if err := s.ListenBESS(p.bess, lo); err != nil {
			return err
		}
		serving = append(serving, "bess "+p.bess)
	}
	if p.unix != "" {
		if err := s.ListenDaemon(p.unix, lo); err != nil {
			return err
		}
		serving = append(serving, "daemon "+p.unix)
	}
	for _, tap := range o.taps {
		if _, err := s.AttachTAP(tap, vswitch.PortOptions{VLAN: o.vlan}); err != nil {
			return err
		}
		serving = append(serving, "tap "+tap)
	}
	s.ForgetKept()
	mlo := lo
	mlo.Mode = os.FileMode(mode) &^ 0o007
	if err := s.ListenManagement(p.mgmt, mlo); err != nil {
		return err
	}
	mode0 := "switch"
	if o.hub {
		mode0 = "hub"
	}
	if o.classic {
		fmt.Fprintf(stdio.Out, "uml_switch attached to unix socket '%s'\n", p.unix)
		for _, tap := range o.taps {
			fmt.Fprintf(stdio.Out, "uml_switch attached to tap device '%s'\n", tap)
		}
	} else {
		fmt.Fprintf(stdio.Out, "umlkit %s running: %s; management %s (Ctrl-C stops it)\n", mode0, strings.Join(serving, ", "), p.mgmt)
	}
	<-ctx.Done()
	log.Info("stopping", "reason", context.Cause(ctx))
	return s.Close()
}

func mgmtClient(p *switchPaths) *vswitch.Client {
	return &vswitch.Client{Path: p.resolve().mgmt}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newSwitchPortsCmd(stdio IO, p *switchPaths) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports",
		Short: "List a running switch's ports and their counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := mgmtClient(p).Ports()
			if err != nil {
				return err
			}
			if asJSON {
				if ps == nil {
					ps = []vswitch.PortInfo{}
				}
				return writeJSON(stdio.Out, ps)
			}
			tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PORT\tKIND\tPEER\tVLAN\tTRUNK\tRX FRAMES\tRX BYTES\tRX DROPS\tTX FRAMES\tTX BYTES\tTX DROPS")
			for _, x := range ps {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", x.ID, x.Kind, x.Peer, x.VLAN, joinInts(x.Trunk),
					x.RxFrames, x.RxBytes, x.RxDrops, x.TxFrames, x.TxBytes, x.TxDrops)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func joinInts(l []int) string {
	if len(l) == 0 {
		return "-"
	}
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func newSwitchMACsCmd(stdio IO, p *switchPaths) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "macs",
		Short: "List the addresses a running switch has learned",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ms, err := mgmtClient(p).MACs()
			if err != nil {
				return err
			}
			if asJSON {
				if ms == nil {
					ms = []vswitch.MACEntry{}
				}
				return writeJSON(stdio.Out, ms)
			}
			tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "MAC\tVLAN\tPORT\tAGE")
			for _, m := range ms {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", m.MAC, m.VLAN, m.Port, m.Age.Round(time.Second))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newSwitchStatsCmd(stdio IO, p *switchPaths) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show a running switch's totals",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := mgmtClient(p).Stats()
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(stdio.Out, st)
			}
			mode := "switch"
			if st.Hub {
				mode = "hub"
			}
			fmt.Fprintf(stdio.Out, "pid       %d\nmode      %s\nports     %d\nmacs      %d of %d (%d not learned: table full)\n", st.PID, mode, st.Ports, st.MACs, st.MACTableSize, st.MACRefused)
			fmt.Fprintf(stdio.Out, "received  %d frames, %d bytes, %d dropped\nsent      %d frames, %d bytes, %d dropped\n",
				st.RxFrames, st.RxBytes, st.RxDrops, st.TxFrames, st.TxBytes, st.TxDrops)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newSwitchVLANCmd(stdio IO, p *switchPaths) *cobra.Command {
	var trunk []int
	cmd := &cobra.Command{
		Use:   "vlan PORT VLAN",
		Short: "Set a port's untagged VLAN, and with --trunk the VLANs it carries tagged",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := strconv.Atoi(args[0])
			if err != nil {
				return fmt.Errorf("port %q: want a number", args[0])
			}
			vlan, err := strconv.Atoi(args[1])
			if err != nil {
				return fmt.Errorf("vlan %q: want a number from 1 to 4094", args[1])
			}
			return mgmtClient(p).SetVLAN(port, vlan, trunk)
		},
	}
	cmd.Flags().IntSliceVar(&trunk, "trunk", nil, "VLANs carried tagged (comma-separated)")
	return cmd
}

func newSwitchHubCmd(stdio IO, p *switchPaths) *cobra.Command {
	return &cobra.Command{
		Use:       "hub on|off",
		Short:     "Turn hub mode on or off in a running switch",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"on", "off"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "on", "off":
				return mgmtClient(p).SetHub(args[0] == "on")
			}
			return fmt.Errorf("hub %q: want on or off", args[0])
		},
	}
}

func newSwitchDisconnectCmd(stdio IO, p *switchPaths) *cobra.Command {
	return &cobra.Command{
		Use:   "disconnect PORT",
		Short: "Disconnect a port of a running switch",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := strconv.Atoi(args[0])
			if err != nil {
				return fmt.Errorf("port %q: want a number", args[0])
			}
			return mgmtClient(p).Disconnect(port)
		},
	}
}

func newSwitchCaptureCmd(stdio IO, p *switchPaths) *cobra.Command {
	var port, snaplen int
	var file string
	cmd := &cobra.Command{
		Use:   "capture",
		Short: "Write a running switch's traffic as pcap, until interrupted",
		Long: `Write the frames entering a running switch (or one port, --port) as pcap
to FILE, or to stdout with -w -, for example:
  umlkit switch capture -w - | wireshark -k -i -
  umlkit switch capture --port 2 -w lab.pcap
Forwarding never waits for a capture: frames a slow reader cannot take are
dropped from the capture, not from the network.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var w io.Writer = stdio.Out
			if file != "-" {
				f, err := os.Create(file)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			err := mgmtClient(p).Capture(w, port, snaplen, cmd.Context().Done())
			if f, ok := w.(*os.File); ok && f != os.Stdout && err == nil {
				return f.Close()
			}
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().IntVar(&port, "port", 0, "capture only frames entering port `N` (default: all)")
	cmd.Flags().StringVarP(&file, "write", "w", "-", "pcap `FILE`, or - for stdout")
	cmd.Flags().IntVar(&snaplen, "snaplen", 0, "keep at most `BYTES` of each frame (default: all)")
	return cmd
}

func newSwitchKeeperCmd(stdio IO) *cobra.Command {
	var sock string
	var idle time.Duration
	cmd := &cobra.Command{
		Use:    "keeper",
		Short:  "Hold a switch's BESS connections across its restarts (started by the switch)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return vswitch.ServeKeeper(cmd.Context(), sock, idle, nil)
		},
	}
	cmd.Flags().StringVar(&sock, "sock", "", "keeper socket `PATH`")
	cmd.Flags().DurationVar(&idle, "idle", 10*time.Second, "exit after this long with nothing held and no switch")
	cmd.MarkFlagRequired("sock")
	return cmd
}

// ensureKeeper starts a keeper on path unless one answers there. The
// keeper runs in its own session so that it outlives this process.
func ensureKeeper(ctx context.Context, path string, idle time.Duration) error {
	if c, err := net.Dial("unixpacket", path); err == nil {
		c.Close()
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start keeper: %w", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("start keeper: %w", err)
	}
	defer devnull.Close()
	cmd := exec.Command(exe, "switch", "keeper", "--sock", path, "--idle", idle.String())
	cmd.Args[0] = "umlkit"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start keeper %s: %w", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("keeper %s exited at once: %v (start the switch with --no-keeper to do without)", path, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
