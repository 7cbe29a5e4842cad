package cli

import (
	"encoding/json"
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/kernel"
)

// version is set at build time: -ldflags "-X .../internal/cli.version=V".
var version = ""

// Version returns umlkit's version: the one set at build time, else the
// VCS revision the binary was built from, else "devel".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			if dirty {
				rev += "-dirty"
			}
			return rev
		}
	}
	return "devel"
}

type versionInfo struct {
	Umlkit     string `json:"umlkit"`
	Kernel     string `json:"kernel,omitempty"`
	KernelPath string `json:"kernel_path,omitempty"`
	KernelErr  string `json:"kernel_error,omitempty"`
}

func newVersionCmd(stdio IO) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print umlkit's version and the UML kernel's",
		GroupID: groupHost,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v := versionInfo{Umlkit: Version()}
			if k, err := kernel.Find(); err != nil {
				v.KernelErr = err.Error()
			} else if kv, err := k.Version(cmd.Context()); err != nil {
				v.KernelPath, v.KernelErr = k.Path, err.Error()
			} else {
				v.KernelPath, v.Kernel = k.Path, kv
			}
			if asJSON {
				enc := json.NewEncoder(stdio.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			fmt.Fprintf(stdio.Out, "umlkit %s\n", v.Umlkit)
			if v.KernelErr != "" {
				fmt.Fprintf(stdio.Out, "kernel: %s\n", v.KernelErr)
			} else {
				fmt.Fprintf(stdio.Out, "kernel %s (%s)\n", v.Kernel, v.KernelPath)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
