package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/machine/preflight"
)

func newVMCheckCmd(stdio IO) *cobra.Command {
	var (
		asJSON bool
		dir    string
	)
	cmd := &cobra.Command{
		Use:   "check [flags] [KERNEL-ARGS...]",
		Short: "Check a kernel command line before boot, and say how to fix each problem",
		Long: `Check a kernel command line, written as for ./linux (ubd0=root_fs1.cow,root_fs
mem=64M umid=uml1 ...), against this host before anything boots: a missing
root disk, a disk locked by a running instance, a COW file whose backing
file changed or that is empty, a umid in use, a uml_dir the kernel cannot
make, too little memory, a bad argument, a socket path that is too long or
a switch socket with nothing listening. Each problem comes with its fix.
The exit status is 1 when a problem would stop or spoil the boot.`,
		Example: `  umlkit vm check ubd0=root_fs1.cow,root_fs mem=64M umid=uml1
  umlkit vm check --json ubd0=uml2.cow,root_fs vec0:transport=bess,dst=/run/umlkit/sw/lan`,
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := runVMCheck(cmd.Context(), args, preflight.Options{Dir: dir, UMLDirs: []string{hostdirs.Runtime()}}, asJSON, stdio.Out)
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	// Kernel arguments can start with '-' (--help is one): flags only
	// before the first of them.
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&dir, "dir", "", "the kernel's working directory, for relative paths (default: the current one)")
	return cmd
}

// vmCheckResult is what `vm check --json` prints.
type vmCheckResult struct {
	Args     []string             `json:"args"`
	Rendered []string             `json:"rendered"` // the arguments as umlkit would pass them
	OK       bool                 `json:"ok"`
	Problems []*preflight.Problem `json:"problems"`
}

// runVMCheck checks args and writes the report; it returns the exit status.
func runVMCheck(ctx context.Context, args []string, opts preflight.Options, asJSON bool, out io.Writer) (int, error) {
	c, r := preflight.CheckArgs(ctx, args, opts)
	code := 0
	if !r.OK() {
		code = 1
	}
	if asJSON {
		res := vmCheckResult{Args: args, Rendered: c.Strings(), OK: r.OK(), Problems: r.Problems}
		if res.Args == nil {
			res.Args = []string{}
		}
		if res.Problems == nil {
			res.Problems = []*preflight.Problem{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return code, enc.Encode(res)
	}
	fmt.Fprintf(out, "linux %s\n", strings.Join(c.Strings(), " "))
	for _, p := range r.Problems {
		fmt.Fprintf(out, "\n%-7s %s\n", strings.ToUpper(string(p.Severity)), p.Message)
		if p.Fix != "" {
			fmt.Fprintf(out, "        fix: %s\n", p.Fix)
		}
	}
	switch {
	case len(r.Problems) == 0:
		fmt.Fprintln(out, "\nno problems found")
	case r.OK():
		fmt.Fprintln(out, "\nonly warnings: the kernel will boot")
	default:
		fmt.Fprintln(out, "\nthe kernel would fail or misbehave: fix the errors above first")
	}
	return code, nil
}
