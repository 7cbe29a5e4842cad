package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/lab"
)

// labFlags are the flags every lab command shares.
type labFlags struct {
	dir   string
	image string
}

func (f *labFlags) load(stdio IO, warn bool) (*lab.Lab, error) {
	l, err := lab.Load(f.dir)
	if err != nil {
		return nil, err
	}
	if warn {
		for _, w := range l.Warnings {
			fmt.Fprintf(stdio.Err, "warning: %s\n", w)
		}
	}
	return l, nil
}

func (f *labFlags) options(stdio IO) lab.Options {
	o := lab.Options{Progress: stdio.Err}
	if f.image != "" {
		img := f.image
		o.Image = func(ctx context.Context, name string) (string, error) {
			if _, err := os.Stat(img); err != nil {
				return "", fmt.Errorf("--image %s: %w", img, err)
			}
			return img, nil
		}
	}
	return o
}

// dirAndNodes splits [DIR] [NODE...]: the first argument is the lab
// directory when it is a directory with lab.conf, or a path with a '/'
// (a bare pc1 in a lab directory is the node, not its tree).
func (f *labFlags) dirAndNodes(args []string) []string {
	f.dir = "."
	if len(args) > 0 {
		a := args[0]
		_, conf := os.Stat(filepath.Join(a, "lab.conf"))
		if st, err := os.Stat(a); err == nil && st.IsDir() && (conf == nil || a == "." || a == ".." || strings.ContainsRune(a, '/')) {
			f.dir = args[0]
			return args[1:]
		}
	}
	return args
}

func newLabCmd(stdio IO) *cobra.Command {
	f := &labFlags{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run Netkit and Kathara labs: up, status, exec, test, capture, graph, down",
		Long: `Run a Netkit or Kathara lab directory on User-Mode Linux.

A lab is a directory with lab.conf (pc1[0]=A puts pc1's eth0 on collision
domain A; "A/02:00:00:00:00:01" gives its MAC; pc1[mem], [image], [sysctl],
[env], [ipv6], [num_terms]; LAB_* metadata), lab.dep (pc3: pc1 pc2 starts
pc3 after them), NODE.startup and NODE.shutdown scripts, NODE/ trees copied
over the node's /, shared/ mounted at /shared in every node, and _test/.
umlkit adds UMLKIT_HUBS="A B" in lab.conf for domains that are hubs.

Each domain gets a switch, each node a COW file in DIR/.umlkit over its
image; the lab directory is mounted in every node at /hostlab.
pc1[bridged]=true also gives pc1 a link to the host after its lab.conf
NICs: a TAP device (ul<lab id><index>), a /30 from 100.64.0.0/16 (host .1,
node .2, default route through the host) and a masquerade so that it
reaches the host's networks; it needs root (CAP_NET_ADMIN). lab down,
crash and clean remove the TAP and the rule, and turn IPv4 forwarding off
again if lab up turned it on and no other umlkit NAT rule needs it.
Commands take the lab directory as first argument (default: .).`,
		GroupID: groupLabs,
	}
	cmd.PersistentFlags().StringVar(&f.image, "image", "", "root filesystem `PATH` for every node (default: $"+lab.EnvImage+", else a minimal image built on first use)")
	cmd.AddCommand(
		newLabUpCmd(stdio, f),
		newLabStatusCmd(stdio, f, "status"),
		newLabStatusCmd(stdio, f, "list"),
		newLabExecCmd(stdio, f),
		newLabShellCmd(stdio, f),
		newLabConsoleCmd(stdio, f),
		newLabDownCmd(stdio, f, "down"),
		newLabDownCmd(stdio, f, "crash"),
		newLabCleanCmd(stdio, f),
		newLabTestCmd(stdio, f),
		newLabCaptureCmd(stdio, f),
		newLabGraphCmd(stdio, f),
	)
	return cmd
}

func newLabUpCmd(stdio IO, f *labFlags) *cobra.Command {
	var (
		timeout       time.Duration
		terms, noTerm bool
	)
	cmd := &cobra.Command{
		Use:   "up [DIR] [NODE...]",
		Short: "Start a lab (or some of its nodes); starts only what is not running",
		Long: `Start a lab (or some of its nodes); starts only what is not running.

Terminals: with $` + lab.EnvTerminal + ` set to a terminal emulator command
(such as "xterm -e"), lab up opens the terminals lab.conf asks for
(NODE[num_terms]=N) for each node it starts: the first attaches to the
node's console (lab console), the others are shells (lab shell). Without it,
lab up says which nodes asked and how to attach. --terminals opens
num_terms (default 1) for every node started, as Kathara does;
--no-terminals opens none.`,
		Example: `  umlkit lab up examples/two-hosts
  umlkit lab up examples/static-routing r1 r2
  UMLKIT_TERMINAL='xterm -T "$UMLKIT_NODE" -e' umlkit lab up --terminals examples/ospf`,
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes := f.dirAndNodes(args)
			l, err := f.load(stdio, true)
			if err != nil {
				return err
			}
			mode := lab.TerminalsAuto
			switch {
			case terms && noTerm:
				return errors.New("--terminals and --no-terminals: give one")
			case terms:
				mode = lab.TerminalsAll
			case noTerm:
				mode = lab.TerminalsNone
			}
			termCmd, err := lab.TerminalCommand(mode, os.Getenv, exec.LookPath)
			if err != nil {
				return err
			}
			o := f.options(stdio)
			o.Timeout = timeout
			res, err := lab.Up(cmd.Context(), l, nodes, o)
			failed := 0
			var started []string
			for _, r := range res {
				if r.Err != nil || r.Startup != nil && *r.Startup != 0 {
					failed++
					if r.Output != "" {
						fmt.Fprintf(stdio.Err, "--- %s: %s output:\n%s", r.Node, l.Node(r.Node).Startup, r.Output)
					}
				}
				if r.Started && r.Err == nil {
					started = append(started, r.Node)
				}
			}
			if err != nil {
				return err
			}
			plan := lab.PlanTerminals(l, started, mode, termCmd)
			if plan.Hint != "" {
				fmt.Fprintln(stdio.Err, plan.Hint)
			}
			if len(plan.Open) > 0 {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				fmt.Fprintf(stdio.Err, "opening %d terminal(s) with %s\n", len(plan.Open), plan.Command)
				if err := lab.OpenTerminals(l, plan, exe); err != nil {
					fmt.Fprintf(stdio.Err, "warning: %v\n", err)
				}
			}
			fmt.Fprintln(stdio.Out)
			lab.FormatStatus(stdio.Out, lab.Status(cmd.Context(), l, true))
			if failed > 0 {
				fmt.Fprintf(stdio.Err, "%d node(s) failed to start or their startup script failed; the rest of the lab is up\n", failed)
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 120*time.Second, "boot `TIMEOUT` of each node")
	cmd.Flags().BoolVar(&terms, "terminals", false, "open terminals for every node started: num_terms (default 1), with $"+lab.EnvTerminal)
	cmd.Flags().BoolVar(&noTerm, "no-terminals", false, "open no terminals, even those lab.conf asks for")
	return cmd
}

func newLabStatusCmd(stdio IO, f *labFlags, name string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   name + " [DIR]",
		Short: "Show a lab's nodes: state, domains, addresses, startup result",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.dirAndNodes(args)
			l, err := f.load(stdio, false)
			if err != nil {
				return err
			}
			sts := lab.Status(cmd.Context(), l, true)
			if asJSON {
				return writeJSON(stdio.Out, map[string]any{"lab": l.Dir, "id": l.ID(), "nodes": sts, "domains": l.Domains})
			}
			lab.FormatStatus(stdio.Out, sts)
			return nil
		},
	}
	if name == "list" {
		cmd.Short = "Same as lab status"
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// labNode resolves [DIR] NODE into the lab and the node's name.
func labNode(stdio IO, f *labFlags, args []string) (*lab.Lab, string, error) {
	rest := f.dirAndNodes(args)
	if len(rest) != 1 {
		return nil, "", errors.New("name one node of the lab ([DIR] NODE): umlkit lab status lists them")
	}
	l, err := f.load(stdio, false)
	if err != nil {
		return nil, "", err
	}
	if l.Node(rest[0]) == nil {
		return nil, "", fmt.Errorf("lab %s has no device %s: umlkit lab status %s lists its nodes", l.Dir, rest[0], l.Dir)
	}
	return l, rest[0], nil
}

func newLabExecCmd(stdio IO, f *labFlags) *cobra.Command {
	var tty bool
	cmd := &cobra.Command{
		Use:     "exec [DIR] NODE -- CMD [ARGS...]",
		Short:   "Run a command in a lab node; its exit status is umlkit's",
		Example: "  umlkit lab exec examples/two-hosts pc1 -- ping -c 1 10.0.0.2",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			at := cmd.ArgsLenAtDash()
			if at < 0 {
				return errors.New("put the command after --: umlkit lab exec [DIR] NODE -- CMD")
			}
			l, node, err := labNode(stdio, f, args[:at])
			if err != nil {
				return err
			}
			return runInGuest(cmd.Context(), stdio, l.Instance(node), args[at:], l.Node(node).Env, "", tty)
		},
	}
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run on a terminal")
	return cmd
}

func newLabShellCmd(stdio IO, f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "shell [DIR] NODE",
		Short: "A shell in a lab node",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, node, err := labNode(stdio, f, args)
			if err != nil {
				return err
			}
			return runInGuest(cmd.Context(), stdio, l.Instance(node), []string{"/bin/sh", "-l"}, l.Node(node).Env, "", isTerminal(stdio.In))
		},
	}
}

func newLabConsoleCmd(stdio IO, f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "console [DIR] NODE",
		Short: "Attach to a lab node's console (Ctrl-] detaches)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, node, err := labNode(stdio, f, args)
			if err != nil {
				return err
			}
			return attachConsole(cmd.Context(), stdio, l.Instance(node))
		},
	}
}

func newLabDownCmd(stdio IO, f *labFlags, name string) *cobra.Command {
	var wipe bool
	cmd := &cobra.Command{
		Use:   name + " [DIR] [NODE...]",
		Short: "Stop a lab: shutdown scripts, a clean halt, switches and sockets gone; COW files kept",
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes := f.dirAndNodes(args)
			l, err := f.load(stdio, false)
			if err != nil {
				return err
			}
			// Stopping must finish even when the user presses Ctrl-C again.
			ctx := context.WithoutCancel(cmd.Context())
			if name == "crash" {
				return lab.Crash(ctx, l, nodes, wipe, f.options(stdio))
			}
			return lab.Down(ctx, l, nodes, wipe, f.options(stdio))
		},
	}
	if name == "crash" {
		cmd.Short = "Kill a lab's nodes at once, like Netkit's lcrash (no shutdown scripts)"
	}
	cmd.Flags().BoolVar(&wipe, "wipe", false, "also remove the nodes' COW files")
	return cmd
}

func newLabCleanCmd(stdio IO, f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "clean [DIR]",
		Short: "Remove what running a stopped lab left (COW files, logs, _test/results), like lclean",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.dirAndNodes(args)
			l, err := f.load(stdio, false)
			if err != nil {
				return err
			}
			return lab.Clean(cmd.Context(), l)
		},
	}
}

func newLabTestCmd(stdio IO, f *labFlags) *cobra.Command {
	var record, asJSON bool
	cmd := &cobra.Command{
		Use:   "test [DIR] [NODE...]",
		Short: "Test a lab: ltest signatures (_test/signature) and checks (_test/checks); exit 1 on failure",
		Long: `Test a lab like Netkit's ltest: in each node, the builtin script (its
interfaces and routes) and _test/NODE.test run; their output goes to
_test/results/NODE.default and NODE.user and is compared with
_test/signature/ (recorded there on the first run, or with --record).
Then the checks in _test/checks run, one per line:
  ping NODE ADDRESS                   NODE reaches ADDRESS
  route NODE PREFIX                   NODE has a route to PREFIX (or default)
  exec NODE "CMD" [exit N | contains TEXT]
  ! CHECK                             expect the opposite
A lab that is not running is started for the test and stopped after it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes := f.dirAndNodes(args)
			l, err := f.load(stdio, !asJSON)
			if err != nil {
				return err
			}
			rep, err := lab.Test(cmd.Context(), l, lab.TestOptions{Options: f.options(stdio), Record: record, Nodes: nodes})
			if err != nil {
				return err
			}
			if asJSON {
				writeJSON(stdio.Out, rep)
			} else {
				lab.FormatReport(stdio.Out, rep)
			}
			if rep.Failed > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&record, "record", false, "record the results as the lab's signatures")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func newLabCaptureCmd(stdio IO, f *labFlags) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "capture [DIR] DOMAIN [-w FILE|-]",
		Short: "Write a collision domain's traffic as pcap, until interrupted",
		Example: `  umlkit lab capture examples/two-hosts A -w - | wireshark -k -i -
  umlkit lab capture examples/two-hosts A -w a.pcap`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rest := f.dirAndNodes(args)
			if len(rest) != 1 {
				return errors.New("name one collision domain: umlkit lab capture [DIR] DOMAIN")
			}
			l, err := f.load(stdio, false)
			if err != nil {
				return err
			}
			var w io.Writer = stdio.Out
			if file != "-" {
				out, err := os.Create(file)
				if err != nil {
					return err
				}
				defer out.Close()
				w = out
			}
			err = lab.Capture(l, rest[0], w, cmd.Context().Done())
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "write", "w", "-", "pcap `FILE`, or - for stdout")
	return cmd
}

func newLabGraphCmd(stdio IO, f *labFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "graph [DIR]",
		Short: "Draw a lab's nodes and domains (Graphviz dot, or an HTML page)",
		Example: `  umlkit lab graph examples/static-routing | dot -Tsvg > lab.svg
  umlkit lab graph examples/static-routing --format html > lab.html`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.dirAndNodes(args)
			l, err := f.load(stdio, false)
			if err != nil {
				return err
			}
			addrs := map[string]map[string]string{}
			for _, s := range lab.Status(cmd.Context(), l, true) {
				addrs[s.Node] = s.Addresses
			}
			switch format {
			case "dot":
				_, err = io.WriteString(stdio.Out, lab.Dot(l, addrs))
			case "html":
				_, err = io.WriteString(stdio.Out, lab.HTML(l, addrs))
			case "svg":
				_, err = io.WriteString(stdio.Out, lab.SVG(l, addrs))
			case "json":
				err = json.NewEncoder(stdio.Out).Encode(l)
			default:
				return fmt.Errorf("--format %s: use dot, svg, html or json", format)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "dot", "`FORMAT`: dot (Graphviz), svg (a picture, no Graphviz needed), html (the picture and tables) or json")
	return cmd
}
