package cli

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/demo"
)

func newDemoCmd(stdio IO) *cobra.Command {
	var opts demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Boot two instances that share one image through COW files, and show them",
		Long: `Walk through umlkit's founding scenario: build a minimal root filesystem,
boot two UML instances on it through per-instance copy-on-write files
(linux ubd0=root_fsN.cow,root_fs), print each one's uname -a and hostname
from its console, and power them off.`,
		GroupID: groupHost,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return demo.Run(cmd.Context(), opts, stdio.Out)
		},
	}
	cmd.Flags().StringVar(&opts.Dir, "dir", "", "keep the image and COW files in `DIR` (default: a temporary directory)")
	cmd.Flags().IntVar(&opts.Instances, "instances", 2, "how many instances share the image")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 60*time.Second, "limit for each boot and command")
	return cmd
}
