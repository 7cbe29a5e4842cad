package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/umlkit/umlkit/internal/hostnet"
)

func newTapCmd(stdio IO) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "tap",
		Short:   "Create, delete and list persistent TAP devices (like tunctl)",
		GroupID: groupNetwork,
	}
	var owner, group, ip string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a persistent TAP device an instance can attach to (ethN=tuntap,NAME)",
		Long: `Create a persistent TAP device. --owner and --group let that user or group
attach instances to it without privileges; --ip puts a host address on it and
brings it up. Needs CAP_NET_ADMIN (root).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := hostnet.TapOptions{Owner: -1, Group: -1}
			var err error
			if opts.Owner, err = lookupID(owner, true); err != nil {
				return err
			}
			if opts.Group, err = lookupID(group, false); err != nil {
				return err
			}
			if ip != "" {
				addr, n, err := net.ParseCIDR(ip)
				if err != nil {
					return fmt.Errorf("--ip %q: want an address with a prefix length, such as 10.0.0.254/24", ip)
				}
				n.IP = addr
				opts.Addr = n
			}
			t, err := hostnet.CreateTap(args[0], opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "created %s; attach an instance with: ethN=tuntap,%s\n", t.Name, t.Name)
			return nil
		},
	}
	create.Flags().StringVar(&owner, "owner", "", "`USER` (name or uid) allowed to attach")
	create.Flags().StringVar(&group, "group", "", "`GROUP` (name or gid) allowed to attach")
	create.Flags().StringVar(&ip, "ip", "", "host address on the TAP, as `CIDR` (10.0.0.254/24)")
	del := &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete TAP devices",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, n := range args {
				if err := hostnet.DeleteTap(n); err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "deleted %s\n", n)
			}
			return nil
		},
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the host's TAP devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			taps, err := hostnet.ListTaps()
			if err != nil {
				return err
			}
			if asJSON {
				if taps == nil {
					taps = []hostnet.Tap{}
				}
				return writeJSON(stdio.Out, taps)
			}
			w := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSTATE\tOWNER\tGROUP\tPERSISTENT\tADDRESSES")
			for _, t := range taps {
				state := "down"
				if t.Up {
					state = "up"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%v\t%s\n", t.Name, state, t.Owner, t.Group, t.Persistent, strings.Join(t.Addrs, " "))
			}
			return w.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(create, del, list)
	return cmd
}

// lookupID resolves a user or group name or number; "" means none (-1).
func lookupID(s string, isUser bool) (int, error) {
	if s == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	if isUser {
		u, err := user.Lookup(s)
		if err != nil {
			return 0, fmt.Errorf("--owner %q: no such user", s)
		}
		return strconv.Atoi(u.Uid)
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("--group %q: no such group", s)
	}
	return strconv.Atoi(g.Gid)
}

func newNetCmd(stdio IO) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "net",
		Short:   "Host routing for instances: forwarding and NAT",
		GroupID: groupNetwork,
	}
	var from, out string
	var remove, list, asJSON bool
	nat := &cobra.Command{
		Use:   "nat --from CIDR [--out IFACE] | --remove --from CIDR [--out IFACE] | --list",
		Short: "Let instances reach the host's networks through masquerading",
		Long: `Turn on IPv4 forwarding and masquerade traffic from the instances' network
(--from) leaving the host (through --out only, when given). The rules live in
their own nftables table, "ip umlkit"; --remove takes a rule away, and the
table with its last rule. Needs CAP_NET_ADMIN (root).`,
		Example: "  umlkit net nat --from 10.0.0.0/24 --out eth0\n  umlkit net nat --remove --from 10.0.0.0/24 --out eth0",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				rules, err := hostnet.ListNAT()
				if err != nil {
					return err
				}
				if asJSON {
					if rules == nil {
						rules = []hostnet.NATRule{}
					}
					return writeJSON(stdio.Out, rules)
				}
				for _, r := range rules {
					o := r.Out
					if o == "" {
						o = "any interface"
					}
					fmt.Fprintf(stdio.Out, "masquerade %s out %s\n", r.From, o)
				}
				return nil
			}
			if from == "" {
				return fmt.Errorf("nat: --from CIDR is required (the instances' network, such as 10.0.0.0/24)")
			}
			_, n, err := net.ParseCIDR(from)
			if err != nil {
				return fmt.Errorf("--from %q: want a network such as 10.0.0.0/24", from)
			}
			if remove {
				if err := hostnet.DisableNAT(n, out); err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "removed masquerade for %s\n", n)
				return nil
			}
			if err := hostnet.EnableNAT(n, out); err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "masquerading %s; remove with: umlkit net nat --remove --from %s%s\n", n, n, flagIf("--out", out))
			return nil
		},
	}
	nat.Flags().StringVar(&from, "from", "", "the instances' network, as `CIDR`")
	nat.Flags().StringVar(&out, "out", "", "masquerade only traffic leaving through `IFACE`")
	nat.Flags().BoolVar(&remove, "remove", false, "remove the rule instead of adding it")
	nat.Flags().BoolVar(&list, "list", false, "list umlkit's masquerade rules")
	nat.Flags().BoolVar(&asJSON, "json", false, "with --list, print JSON")
	cmd.AddCommand(nat)
	return cmd
}

func flagIf(name, v string) string {
	if v == "" {
		return ""
	}
	return " " + name + " " + v
}

func umlNetTool() Tool {
	return Tool{
		Name:    "uml_net",
		Summary: "the kernel's TAP helper for ethN=tuntap,,MAC,HOST_IP (install setuid root, group uml-net)",
		Run: func(_ context.Context, args []string, stdio IO) int {
			return hostnet.RunHelper(args, os.Stdout, stdio.Err)
		},
	}
}
