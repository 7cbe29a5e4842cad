package cli

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/doctor"
)

func newDoctorCmd(stdio IO) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run umlkit, and say how to fix what is missing",
		Long: `Check the host: the UML kernel and its network transports, /dev/shm,
/dev/net/tun, e2fsprogs, busybox-static, debootstrap, uml-utilities, vde2
and the runtime directory. Each problem comes with the command that fixes
it. The exit status is 1 when something required is missing.`,
		GroupID: groupHost,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r := doctor.Run(cmd.Context(), doctor.Default())
			if asJSON {
				enc := json.NewEncoder(stdio.Out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(struct {
					*doctor.Report
					Healthy bool `json:"healthy"`
				}{r, r.Healthy()}); err != nil {
					return err
				}
			} else {
				writeReport(stdio, r)
			}
			if !r.Healthy() {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writeReport(stdio IO, r *doctor.Report) {
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range r.Checks {
		fmt.Fprintf(stdio.Out, "%-4s  %-*s  %s\n", strings.ToUpper(string(c.Status)), width, c.Name, c.Detail)
		if c.Status != doctor.OK && c.Fix != "" {
			fmt.Fprintf(stdio.Out, "      %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	if r.Healthy() {
		fmt.Fprintln(stdio.Out, "\nall required checks passed")
	} else {
		fmt.Fprintln(stdio.Out, "\nsomething required is missing: run the fix commands above (as root), or `make setup`")
	}
}
