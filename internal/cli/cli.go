// Package cli is umlkit's command line: the cobra command tree, and the
// classic tools umlkit stands in for when it is invoked under their names.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"
)

// IO is where a command reads and writes.
type IO struct {
	In       io.Reader
	Out, Err io.Writer
}

// ExitError ends the program with Code, after the command already told
// the user why (or had nothing more to say).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Tool is a classic program umlkit answers to when argv[0] is its name.
type Tool struct {
	Name    string
	Summary string
	// Run takes the arguments after the program name and returns the
	// exit status the classic tool would.
	Run func(ctx context.Context, args []string, io IO) int
}

// Tools lists the programs umlkit can be invoked as. Install a link named
// after one (for example ln -s umlkit uml_mkcow) to get that tool.
func Tools() map[string]Tool {
	ts := []Tool{
		umlNetTool(),
		guestInitTool(),
		umlMconsoleTool(),
		umlMkcowTool(),
		umlMooTool(),
		umlSwitchTool(),
	}
	m := make(map[string]Tool, len(ts))
	for _, t := range ts {
		m[t.Name] = t
	}
	return m
}

// Main runs umlkit with argv (argv[0] included) and returns the exit status.
func Main(ctx context.Context, argv []string, stdio IO) int {
	if os.Geteuid() != os.Getuid() {
		// Installed setuid root as the kernel's uml_net helper, umlkit does
		// nothing else, whatever name it was started under: argv[0] is the
		// caller's to choose.
		return umlNetTool().Run(ctx, argv[min(1, len(argv)):], stdio)
	}
	return run(ctx, argv, stdio, Tools())
}

func run(ctx context.Context, argv []string, stdio IO, tools map[string]Tool) int {
	name := "umlkit"
	if len(argv) > 0 {
		name = filepath.Base(argv[0])
	}
	if t, ok := tools[name]; ok {
		return t.Run(ctx, argv[1:], stdio)
	}
	root := NewRoot(stdio)
	if len(argv) > 0 {
		root.SetArgs(argv[1:])
	} else {
		root.SetArgs(nil)
	}
	err := root.ExecuteContext(ctx)
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	default:
		fmt.Fprintf(stdio.Err, "umlkit: %v\n", err)
		return 1
	}
}

// Command groups in the help text.
const (
	groupInstances = "instances"
	groupDisks     = "disks"
	groupNetwork   = "network"
	groupLabs      = "labs"
	groupHost      = "host"
)

// NewRoot builds the command tree.
func NewRoot(stdio IO) *cobra.Command {
	root := &cobra.Command{
		Use:   "umlkit",
		Short: "Virtual network labs on User-Mode Linux",
		Long: `umlkit runs User-Mode Linux instances and the host side of a virtual
network lab: copy-on-write disks, a switch, images, and Netkit/Kathara labs.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdio.In)
	root.SetOut(stdio.Out)
	root.SetErr(stdio.Err)
	root.AddCommand(
		newVersionCmd(stdio),
		newDoctorCmd(stdio),
		newDemoCmd(stdio),
		newToolsCmd(stdio),
		newTapCmd(stdio),
		newNetCmd(stdio),
		newGuestAgentCmd(stdio),
		newVMCmd(stdio),
		newMconsoleCmd(stdio),
		newCowCmd(stdio),
		newSwitchCmd(stdio),
		newLabCmd(stdio),
		newImageCmd(stdio),
	)
	addGroups(root)
	return root
}

// addGroups adds the help groups that have commands, in a fixed order.
func addGroups(root *cobra.Command) {
	used := map[string]bool{groupHost: true}
	for _, c := range root.Commands() {
		used[c.GroupID] = true
	}
	for _, g := range []cobra.Group{
		{ID: groupInstances, Title: "Instances:"},
		{ID: groupDisks, Title: "Disks and images:"},
		{ID: groupNetwork, Title: "Networking:"},
		{ID: groupLabs, Title: "Labs:"},
		{ID: groupHost, Title: "Host:"},
	} {
		if used[g.ID] {
			root.AddGroup(&g)
		}
	}
	root.SetHelpCommandGroupID(groupHost)
	root.SetCompletionCommandGroupID(groupHost)
}

func newToolsCmd(stdio IO) *cobra.Command {
	return &cobra.Command{
		Use:     "tools",
		Short:   "List the classic tools umlkit stands in for",
		Long:    "umlkit behaves as a classic tool when run under its name: make a link, for example\n  ln -s $(command -v umlkit) /usr/local/bin/uml_mkcow",
		GroupID: groupHost,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ts := Tools()
			names := make([]string, 0, len(ts))
			for n := range ts {
				names = append(names, n)
			}
			sort.Strings(names)
			if len(names) == 0 {
				fmt.Fprintln(stdio.Out, "no classic tools yet")
			}
			for _, n := range names {
				fmt.Fprintf(stdio.Out, "%-14s %s\n", n, ts[n].Summary)
			}
			return nil
		},
	}
}
