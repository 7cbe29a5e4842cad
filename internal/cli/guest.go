package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/agent"
	"github.com/umlkit/umlkit/internal/guest"
)

func guestInitTool() Tool {
	return Tool{
		Name:    "init",
		Summary: "the init of umlkit's images (only as process 1 inside an instance)",
		Run:     func(context.Context, []string, IO) int { return guest.Init() },
	}
}

func newGuestAgentCmd(stdio IO) *cobra.Command {
	var tty string
	cmd := &cobra.Command{
		Use:   "guest-agent --tty /dev/ttySN",
		Short: "Serve the exec agent inside an instance (for images umlkit did not build)",
		Long: `Inside an instance whose image umlkit did not build, serve the exec agent on a
serial line; the image's own init keeps running. Start the instance with
sslN=fd:... on the host side (umlkit does), then in the guest, for example
from the host through hostfs: /mnt/host/umlkit guest-agent --tty /dev/ttyS1 &`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return guest.ServeAgent(cmd.Context(), tty, agent.StartProcess)
		},
	}
	cmd.Flags().StringVar(&tty, "tty", "/dev/ttyS1", "the serial line `DEVICE`")
	return cmd
}
